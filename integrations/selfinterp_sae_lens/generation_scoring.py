"""Generation scoring of SAE labels (Pepper et al. 2026; the reference's `reward_system.py`).

A label is good if text written to exhibit it makes the latent fire. For each label a writer model
(the subject model by default, any other via `ConversationWriter(backend)`; see conversations.py)
writes 10 VERY SHORT conversations; each is parsed as the reference parses it, re-tokenised with
the subject model's chat template and run forward; a sample hits if the latent is > 0 on any token
after the first. A label's score is its hit rate; a latent's score is the max over its labels (one
per scale); the reported number is the mean over latents ("mean-max hit rate").

Each sample's record (its label, prompt, text, parsed conversation, peak activation, hit, and
whether it echoed the writer's instruction) is appended to the output JSONL as its batch lands, so
a stopped run has lost at most one batch and a rerun writes only the samples still missing.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from selfinterp_plugins.errors import LabelError, RunMismatchError
from selfinterp_plugins.storage import JsonlWriter, check_output_run, model_dtype, read_jsonl, sha256_hex

from .conversations import (
    REFERENCE_TOP_K,
    WRITER_PROMPT,
    WRITER_SYSTEM,
    ConversationWriter,
    conversation_ids,
    echoes_instruction,
    parse_conversation,
    writer_prompt,
)
from .latent_ids import feature_of
from .latents import latent_acts, max_acts

__all__ = ["REFERENCE_TOP_K", "SCORING_FLAGS", "WRITER_PROMPT", "WRITER_SYSTEM", "ConversationWriter", "conversation_ids",
           "echoes_instruction", "feature_of", "generation_score", "hit_rates", "parse_conversation", "scoring_run",
           "summarise", "writer_prompt"]


def hit_rates(backend, sae, features: list[int], conversations: list[list[str]], batch_size: int = 16) -> list[float]:
    """For each (feature, its conversations): the fraction whose latent fires after the first token."""
    peaks = sample_peaks(backend, sae, [(f, text) for f, texts in zip(features, conversations) for text in texts],
                         batch_size)
    rates, at = [], 0
    for texts in conversations:
        hits = [peak > 0 for peak in peaks[at : at + len(texts)]]
        rates.append(sum(hits) / len(hits) if hits else 0.0)
        at += len(texts)
    return rates


def sample_peaks(backend, sae, samples: list[tuple[int, str]], batch_size: int = 16) -> list[float]:
    """Each (feature, text)'s largest activation of its latent after the first token of the parsed,
    re-tokenised conversation (> 0 is a hit). An empty text is a miss: the reference raises on it
    (no message to template) and loses its batch."""
    if not samples:
        return []
    tok = backend.tokenizer
    parsed = [(f, parse_conversation(text)) for f, text in samples]
    rows = [i for i, (_, messages) in enumerate(parsed) if messages]  # nothing written: no token can fire
    peaks = [0.0] * len(samples)
    if not rows:
        return peaks
    wanted = sorted({parsed[i][0] for i in rows})
    column = {f: j for j, f in enumerate(wanted)}
    found = max_acts(latent_acts(backend, sae, [conversation_ids(tok, parsed[i][1]) for i in rows], wanted, batch_size))
    for n, i in enumerate(rows):
        peaks[i] = float(found[n, column[parsed[i][0]]])
    return peaks


#: a scoring output's manifest keys -> the `sae score` option that sets each
SCORING_FLAGS = {"samples": "--samples", "max_new_tokens": "--max-new-tokens", "model_fingerprint": "--model",
                 "writer.model_fingerprint": "--writer-model"}


def scoring_run(sae, backend, writer, n_samples: int) -> dict:
    """What a sample's record depends on besides its label: the SAE (its weights), the subject
    model and its dtype, the conversations per label and their writer (model, sampling and batch
    size, which decides each batch's seed; a custom writer by its type). Recorded beside a scoring
    output, so a rerun with another SAE or other settings is refused instead of mixing two runs'
    samples under the same (id, scale, label, sample)."""
    from dataclasses import asdict

    sae_weights = sha256_hex(part for name, tensor in sorted(sae.state_dict().items()) for part in (name, tensor))
    if isinstance(writer, ConversationWriter):
        who = {"model_fingerprint": writer.backend.fingerprint(), "model_dtype": model_dtype(writer.backend),
               **asdict(writer.sampling), "batch_size": int(writer.batch_size)}
    else:
        who = {"callable": f"{type(writer).__module__}.{type(writer).__qualname__}"}
    return {"records": "per-sample", "sae_sha256": sae_weights, "model_fingerprint": backend.fingerprint(),
            "model_dtype": model_dtype(backend), "samples": int(n_samples), "writer": who}


def _read_done(path: Path) -> dict[tuple, dict]:
    done = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if "sample" not in row or "hit" not in row:
            raise RunMismatchError(f"{path} line {n} is not a per-sample record (an older per-label scoring output); "
                                   f"choose another output (or delete {path} and {path.name}.run.json).")
        done[(str(row["id"]), float(row["scale"]), row["label"], int(row["sample"]))] = row
    return done


def generation_score(records, sae, backend, writer=None, n_samples: int = 10, dataset=None, output=None,
                     chunk: int = 8, batch_size: int = 16, progress: bool = True, drop_echoes: bool = False) -> dict:
    """Mean-max hit rate of label records (id, scale, label) for an SAE's latents.

    A `ConversationWriter` (default: the subject model) writes `writer.batch_size` conversations per
    `generate` call, several labels' samples in one call; a custom `writer(labels, n_samples) -> list
    of lists of texts` is asked `chunk` labels at a time. A label shared by several latents (or
    scales) is written about once, and each latent checks its own firing on those conversations.
    With `output`, each sample's record is appended as its batch lands and a rerun writes only the
    missing ones; `<output>.run.json` records the run (`scoring_run`), and a rerun with another SAE,
    subject, writer or sample count is refused in one line.

    A sample that repeats the writer's instruction is scored, as the reference scores it (its
    record says `echo`, the result counts them); `drop_echoes=True` leaves such samples out of their
    label's hit rate instead (docs/fidelity.md).
    """
    from tqdm.auto import tqdm

    from .sae_info import sae_info

    d_sae = sae_info(sae).d_sae
    writer = writer or ConversationWriter(backend)
    keyed = [(str(r["id"]), float(r.get("scale", 1.0)), r["label"], feature_of(r, dataset, d_sae, n))
             for n, r in enumerate(records, 1)]
    if not keyed:
        raise LabelError("No label records to score; pass the records of `sae label` or of a Neuronpedia export.")
    by_label: dict[str, list[tuple]] = defaultdict(list)
    for key in dict.fromkeys(keyed):  # a record given twice is scored once
        by_label[key[2]].append(key)
    # every label's samples in a fixed order, batched the same way on every run, so a resumed run
    # draws the batches (and their seeds) an uninterrupted one would
    jobs = [(label, k) for label in by_label for k in range(n_samples)]
    ours = isinstance(writer, ConversationWriter)
    step = writer.batch_size if ours else max(1, chunk) * n_samples

    done: dict[tuple, dict] = {}
    out = None
    if output is not None:
        path = Path(output)
        out = JsonlWriter(path)  # locks the file and repairs a torn tail before it is read
        try:
            done = _read_done(path)
            check_output_run(path, scoring_run(sae, backend, writer, n_samples), bool(done), SCORING_FLAGS)
        except BaseException:
            out.close()
            raise

    def missing(job):
        label, k = job
        return [key for key in by_label[label] if (*key[:3], k) not in done]

    results = dict(done)
    bar = tqdm(total=len(jobs), initial=sum(not missing(j) for j in jobs), disable=not progress,
               desc="generation scoring", unit="conversation")
    try:
        for start in range(0, len(jobs), step):
            batch = jobs[start : start + step]
            wanted = [(job, missing(job)) for job in batch]
            if not any(keys for _, keys in wanted):
                continue
            if ours:
                texts = writer.write([label for label, _ in batch], offset=start, progress=progress)
            else:
                labels = list(dict.fromkeys(label for label, _ in batch))
                written = dict(zip(labels, writer(labels, n_samples)))
                texts = [written[label][k] for label, k in batch]
            samples = [(key, k, text) for ((_, k), keys), text in zip(wanted, texts) for key in keys]
            peaks = sample_peaks(backend, sae, [(key[3], text) for key, _, text in samples], batch_size)
            for (key, k, text), peak in zip(samples, peaks):
                rid, scale, label, feature = key
                row = {"id": rid, "scale": scale, "label": label, "feature": feature, "sample": k,
                       "prompt": writer_prompt(label) if ours else None, "text": text,
                       "conversation": parse_conversation(text), "activation": peak, "hit": peak > 0,
                       "echo": echoes_instruction(text)}
                results[(rid, scale, label, k)] = row
                if out:
                    out.write(row)
            bar.update(sum(bool(keys) for _, keys in wanted))
    finally:
        bar.close()
        if out:
            out.close()
    label_rows = []
    for key in dict.fromkeys(keyed):
        rows = [results[(*key[:3], k)] for k in range(n_samples)]
        counted = [r for r in rows if not (drop_echoes and r["echo"])]
        label_rows.append({"id": key[0], "scale": key[1], "label": key[2], "feature": key[3],
                           "hit_rate": sum(r["hit"] for r in counted) / len(counted) if counted else 0.0,
                           "hits": sum(r["hit"] for r in counted), "counted": len(counted),
                           "echoes": sum(r["echo"] for r in rows)})
    return summarise(label_rows)


def summarise(rows: list[dict]) -> dict:
    """Mean-max hit rate over latents, plus the mean hit rate per scale and the per-label rows."""
    per_feature: dict[int, float] = defaultdict(float)
    per_scale: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        per_feature[r["feature"]] = max(per_feature[r["feature"]], r["hit_rate"])
        per_scale[r["scale"]].append(r["hit_rate"])
    mean_max = sum(per_feature.values()) / len(per_feature) if per_feature else 0.0
    return {"mean_max_hit_rate": mean_max, "features": len(per_feature), "labels": len(rows),
            "echoed_samples": sum(r.get("echoes", 0) for r in rows),
            "per_scale": {s: sum(v) / len(v) for s, v in sorted(per_scale.items())},
            "per_feature": dict(sorted(per_feature.items())), "per_label": rows}
