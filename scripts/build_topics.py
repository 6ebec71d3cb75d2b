"""Build the shipped topic set (`selfinterp_plugins/data/topics.jsonl`) from WordNet 3.0.

Standalone (stdlib only): reads the WordNet database files directly, e.g. from the Debian
package `wordnet-base` (`/usr/share/wordnet`). Licence: `selfinterp_plugins/data/LICENSE-WordNet.txt`.

Selection: noun synsets from concrete lexicographer files (artifacts, animals, foods, people,
plants, body parts, substances, natural objects, geographical areas, natural phenomena, sports
and games), titled by the synset's first lemma. Proper nouns (any capital letter), lemmas with
digits or unusual characters, single letters, and lemmas over 3 words or 30 characters are
skipped, and so is any synset that is not its title's usual noun sense (the most frequent one
in SemCor per index.noun, or if no sense is tagged, the one with most WordNet relations; if that
sense is titled by another lemma, the title's next sense of the same kind), so the title's
usual reading is the one described ("pig" the animal, never the block of metal).
Synsets are ranked by how common they are:

* the SemCor tag counts of the synset's senses (`cntlist.rev`),
* how often the title is mentioned in WordNet's own glosses (a corpus-frequency proxy that
  also covers words that are rare in SemCor, e.g. animal and plant names),
* the title's noun polysemy (common words have many senses),

with a preference for short, one-word titles. Titles are unique case-insensitively (the
best-ranked synset keeps the title); each category fills a fixed quota with its best-ranked
synsets (no category above ~30%), and the `--count` chosen topics are written in rank order,
so `load_topics()[:n]` gives the n most common topics.

The split is a hash of the id (sha256: 80% train / 10% validation / 10% test), so adding or
removing topics never moves other topics between splits. The output is deterministic: two
runs give byte-identical files.

    python scripts/build_topics.py [--wordnet-dir /usr/share/wordnet] [--out selfinterp_plugins/data/topics.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "selfinterp_plugins" / "data" / "topics.jsonl"

# WordNet's lexicographer files (lexnames), by number.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]

# Concrete categories and their share of the final set (quotas: each category contributes its
# best-ranked synsets, so none exceeds ~30% and animals, plants or foods are not crowded out by
# very frequent artifact and person nouns). Leftover places go to the best remaining synsets.
CATEGORY_SHARES = {
    "noun.artifact": 0.30,
    "noun.animal": 0.14,
    "noun.food": 0.10,
    "noun.person": 0.10,
    "noun.plant": 0.08,
    "noun.body": 0.07,
    "noun.substance": 0.07,
    "noun.object": 0.05,
    "noun.location": 0.03,
    "noun.phenomenon": 0.02,
    "noun.act": 0.02,
    "noun.event": 0.01,
}

# Mixed categories keep only synsets under these WordNet 3.0 synsets (hypernym closure), which
# drops abstract nouns such as "area", "side", "consequence", "use" or "case".
CATEGORY_ROOTS = {
    "noun.location": {"08574314"},  # geographical_area: city, desert, park, ...
    "noun.phenomenon": {"11408559"},  # natural_phenomenon: rain, lightning, tornado, ...
    "noun.event": {"11408559"},  # natural_phenomenon: earthquake, eclipse, ...
    "noun.act": {"00523513", "00455599"},  # sport, game: football, golf, chess, ...
    "noun.object": {"00019128", "09225146", "09287968", "09334396", "09335240"},
    # natural_object, body_of_water, geological_formation, land (two senses): river, moon, cliff, ...
}

LEMMA_RE = re.compile(r"^[a-z][a-z'-]*(?:_[a-z][a-z'-]*){0,2}$")
MAX_TITLE_CHARS = 30
MAX_DESCRIPTION_CHARS = 120
SPLITS = (("train", 80), ("validation", 10), ("test", 10))


def read_sense_counts(wordnet_dir: Path) -> dict[str, int]:
    """Sense key -> SemCor tag count (cntlist.rev: `sense_key sense_number tag_cnt`)."""
    counts: dict[str, int] = {}
    path = wordnet_dir / "cntlist.rev"
    if not path.exists():
        return counts
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            counts[parts[0].lower()] = int(parts[2])
    return counts


def read_index(wordnet_dir: Path) -> dict[str, tuple[list[str], int]]:
    """Lemma -> (its noun synset offsets, most frequent first; how many of them are tagged in
    SemCor). Only the tagged senses are in frequency order (index.noun)."""
    index: dict[str, tuple[list[str], int]] = {}
    for line in (wordnet_dir / "index.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue
        parts = line.split()
        synset_cnt = int(parts[2])
        index[parts[0]] = (parts[len(parts) - synset_cnt:], int(parts[len(parts) - synset_cnt - 1]))
    return index


def read_synsets(wordnet_dir: Path) -> list[dict]:
    """Every noun synset of data.noun: offset, lexname, lemmas with lex ids, gloss."""
    synsets = []
    for line in (wordnet_dir / "data.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        offset, lex_filenum, w_cnt = parts[0], int(parts[1]), int(parts[3], 16)
        words = [(parts[4 + 2 * i], int(parts[5 + 2 * i], 16)) for i in range(w_cnt)]
        i = 4 + 2 * w_cnt
        p_cnt = int(parts[i])
        hypernyms = [parts[i + 2 + 4 * k] for k in range(p_cnt) if parts[i + 1 + 4 * k] in ("@", "@i")]
        synsets.append({"offset": offset, "lexname": LEXNAMES[lex_filenum], "lex_filenum": lex_filenum,
                        "words": words, "hypernyms": hypernyms, "n_pointers": p_cnt, "gloss": gloss.strip()})
    return synsets


def main_sense(lemma: str, index: dict, synsets_by_offset: dict[str, dict]) -> str | None:
    """The lemma's usual noun sense: its most frequent one in SemCor, or, if none of its senses
    is tagged (then index.noun's order means nothing), the best-connected one in WordNet."""
    senses, tagged = index.get(lemma, ([], 0))
    if not senses:
        return None
    if tagged:
        return senses[0]
    return max(senses, key=lambda offset: (synsets_by_offset[offset]["n_pointers"], -senses.index(offset)))


def titled_sense(lemma: str, index: dict, synsets_by_offset: dict[str, dict]) -> str | None:
    """The synset that may use `lemma` as its title: the lemma's usual sense, or, if that synset
    is titled by another of its lemmas (the usual "volcano" is the vent, titled "vent"), the
    lemma's next sense titled by it from the same lexicographer file (the volcano mountain);
    never a sense of another kind ("pig" the block of metal, as the pig is titled "hog")."""
    usual = main_sense(lemma, index, synsets_by_offset)
    if usual is None:
        return None
    if synsets_by_offset[usual]["words"][0][0] == lemma:
        return usual
    for offset in index[lemma][0]:
        synset = synsets_by_offset[offset]
        if synset["words"][0][0] == lemma and synset["lexname"] == synsets_by_offset[usual]["lexname"]:
            return offset
    return None


def ancestors(offset: str, hypernyms: dict[str, list[str]]) -> set[str]:
    """The synset and all its (instance) hypernyms, transitively."""
    seen, todo = set(), [offset]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(hypernyms.get(current, []))
    return seen


def gloss_ngram_counts(wordnet_dir: Path) -> Counter:
    """How often each 1-3 word phrase occurs in the glosses of all WordNet synsets."""
    counts: Counter = Counter()
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        path = wordnet_dir / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line or line.startswith(" "):
                continue
            tokens = re.findall(r"[a-z][a-z'-]*", line.partition(" | ")[2].lower())
            for n in (1, 2, 3):
                for i in range(len(tokens) - n + 1):
                    counts[" ".join(tokens[i:i + n])] += 1
    return counts


def definition(gloss: str) -> str:
    """The definition part of a gloss (before the first ';' or example quote), at most ~120 chars."""
    text = re.split(r';|"', gloss, maxsplit=1)[0].strip().rstrip(",:").strip()
    text = re.sub(r"\s+", " ", text)
    if len(text) > MAX_DESCRIPTION_CHARS:
        cut = text[:MAX_DESCRIPTION_CHARS - 2].rsplit(" ", 1)[0].rstrip(",;:(-")
        text = cut.rstrip() + "..."
    return text


def split_of(topic_id: str) -> str:
    bucket = int(hashlib.sha256(topic_id.encode("utf-8")).hexdigest(), 16) % 100
    for name, share in SPLITS:
        if bucket < share:
            return name
        bucket -= share
    raise AssertionError("unreachable")


def score(synset: dict, lemma: str, sense_counts: dict, index: dict, gloss_counts: Counter) -> float:
    """How common and well known the synset is, read as its first lemma (higher is better)."""
    tag_count = sum(sense_counts.get(f"{w.lower()}%1:{synset['lex_filenum']:02d}:{lex_id:02d}::", 0)
                    for w, lex_id in synset["words"])
    senses = index.get(lemma, ([], 0))[0]
    title = lemma.replace("_", " ")
    mentions = gloss_counts.get(title, 0)
    n_words = title.count(" ") + 1
    return (2.0 * math.log1p(tag_count)
            + 1.0 * math.log1p(mentions)
            + 0.5 * math.log1p(len(senses))
            - 0.7 * (n_words - 1)
            - 0.03 * max(0, len(title) - 8))


def build(wordnet_dir: Path, count: int) -> list[dict]:
    sense_counts = read_sense_counts(wordnet_dir)
    index = read_index(wordnet_dir)
    gloss_counts = gloss_ngram_counts(wordnet_dir)
    synsets = read_synsets(wordnet_dir)
    hypernyms = {s["offset"]: s["hypernyms"] for s in synsets}
    by_offset = {s["offset"]: s for s in synsets}
    candidates = []
    for synset in synsets:
        if synset["lexname"] not in CATEGORY_SHARES:
            continue
        roots = CATEGORY_ROOTS.get(synset["lexname"])
        if roots and not roots & ancestors(synset["offset"], hypernyms):
            continue
        lemma = synset["words"][0][0]
        if not LEMMA_RE.match(lemma) or len(lemma) < 2 or len(lemma) > MAX_TITLE_CHARS:
            continue
        if titled_sense(lemma, index, by_offset) != synset["offset"]:
            continue  # not the title's usual reading ("pig" the metal block, not the animal)
        description = definition(synset["gloss"])
        if not description:
            continue
        candidates.append((-score(synset, lemma, sense_counts, index, gloss_counts), synset["offset"], {
            "id": f"wn-{synset['offset']}",
            "title": lemma.replace("_", " "),
            "description": description,
            "category": synset["lexname"],
        }))
    candidates.sort(key=lambda c: (c[0], c[1]))  # best first; the offset breaks ties

    # Unique titles, case-insensitively: the best-ranked synset keeps a title.
    unique, seen_titles = [], set()
    for cand in candidates:
        key = cand[2]["title"].lower()
        if key not in seen_titles:
            seen_titles.add(key)
            unique.append(cand)

    # Quotas per category (rounded down; what is left over goes to the best remaining synsets).
    quotas = {name: int(share * count) for name, share in CATEGORY_SHARES.items()}
    per_category: Counter = Counter()
    chosen = []
    for cand in unique:
        if per_category[cand[2]["category"]] < quotas[cand[2]["category"]]:
            per_category[cand[2]["category"]] += 1
            chosen.append(cand)
    chosen_ids = {c[1] for c in chosen}
    chosen += [c for c in unique if c[1] not in chosen_ids][:max(0, count - len(chosen))]
    chosen.sort(key=lambda c: (c[0], c[1]))

    topics = []
    for _, _, topic in chosen:
        topic["split"] = split_of(topic["id"])
        topics.append(topic)
    return topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                        help="WordNet 3.0 dict directory (data.noun, index.noun, cntlist.rev)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSONL file")
    parser.add_argument("--count", type=int, default=5500, help="number of topics to keep")
    args = parser.parse_args()

    topics = build(args.wordnet_dir, args.count)
    from selfinterp_plugins.storage import write_text_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "".join(json.dumps(topic, ensure_ascii=False) + "\n" for topic in topics))

    print(f"wrote {len(topics)} topics to {args.out} ({args.out.stat().st_size} bytes)")
    for name, count in sorted(Counter(t["split"] for t in topics).items(), key=lambda kv: -kv[1]):
        print(f"  split {name:<12} {count}")
    for name, count in sorted(Counter(t["category"] for t in topics).items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  category {name:<16} {count}")


if __name__ == "__main__":
    main()
