"""Explaining many vectors: batched label generation, streamed to JSONL, resumable.

Work is the list of (vector, scale, sample) jobs; each batch of jobs is one `generate` call.
With `output`, every finished batch is appended (flushed) to a JSONL file, and a rerun skips
the jobs already there, so a crash or Ctrl-C loses at most one batch. Beside the output,
`<output>.run.json` records what makes its labels what they are (the explainer's weights, template
and site; the sampling settings): a rerun with another explainer or other settings is refused in
one line instead of mixing two runs' labels in one file. Ids, scales and samples may grow (each
record is its own (id, scale, sample) job).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .adapters import check_vectors
from .backends.base import Sampling
from .errors import ArtifactError, OptionError, RunMismatchError, VectorError
from .results import ExplainResults
from .serialization import JsonlWriter, read_json, read_jsonl, write_json

#: the explain options behind each sampling field, for the one-line refusal
SAMPLING_FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "max_new_tokens": "--max-new-tokens"}


def _job_key(record: dict, path, n: int) -> tuple:
    try:
        return (str(record["id"]), float(record["scale"]), int(record.get("sample", 0)))
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}:{n} is not an explain record (id, scale, sample, label): this file holds another "
                            "kind of output; choose another output file.") from None


def explainer_digest(explainer) -> str:
    """SHA-256 of what decides an explainer's labels here: its adapter (kind and weights), template,
    site and prompt ids."""
    digest = hashlib.sha256()
    identity = {"kind": explainer.adapter.config.kind, "template": explainer.template.to_dict(),
                "site": explainer.site.to_dict(), "prompt_ids": explainer.prompt_ids.tolist()}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for name, tensor in sorted(explainer.adapter.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_output_run(path: Path, run: dict, has_records: bool = True) -> None:
    """Refuse to resume `path` when its recorded run differs from `run`; record `run` when there is
    none yet (an output written before manifests resumes as before) or when the output holds no
    record (a deleted output's leftover manifest describes nothing)."""
    manifest = path.with_name(path.name + ".run.json")
    if manifest.exists() and has_records:
        saved = read_json(manifest)
        if saved.get("explainer") != run["explainer"]:
            raise RunMismatchError(f"{path} holds labels of another explainer (its weights, template or site differ); "
                                   f"resume it with that explainer, or choose another output (or delete {path} and "
                                   f"{manifest.name}).")
        for key, value in run["sampling"].items():
            old = (saved.get("sampling") or {}).get(key)
            if old != value:
                flag = f" ({SAMPLING_FLAGS[key]} {old})" if key in SAMPLING_FLAGS else ""
                raise RunMismatchError(f"{path} was written with sampling {key}={old!r}, this run asks {value!r}; rerun "
                                       f"with {key}={old!r}{flag}, or choose another output (or delete {path} and "
                                       f"{manifest.name}).")
        return
    write_json(run, manifest)


def check_run_options(scales, samples: int, batch_size: int) -> None:
    """Refuse what would otherwise run and do nothing, or write what a resume cannot match: a NaN
    scale never equals itself, so every resume would label its vectors again."""
    scales = list(scales)
    if not scales:
        raise OptionError("Give at least one scale (e.g. scales=(1.0,)).")
    for scale in scales:
        try:
            finite = not isinstance(scale, (bool, str)) and math.isfinite(float(scale))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise OptionError(f"Scales must be finite numbers, got {scale!r}; pass e.g. --scale 1.0.")
    for name, value in (("samples", samples), ("batch size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise OptionError(f"The {name} must be a whole number of at least 1, got {value!r}.")


def explain(explainer, vectors, ids, scales, sampling: Sampling, batch_size: int, samples: int, output, progress: bool):
    from tqdm.auto import tqdm

    vectors = torch.as_tensor(vectors)
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2:
        raise VectorError(f"Explain takes vectors of shape (d_model,) or (N, d_model), got {tuple(vectors.shape)}; "
                          "reshape them to one row per vector.")
    check_vectors(vectors, explainer.backend.d_model)
    ids = [str(i) for i in (ids if ids is not None else range(len(vectors)))]
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise VectorError("`ids` must give one distinct id per vector; pass ids=None to number them 0..N-1.")
    if samples > 1 and sampling.greedy:
        raise VectorError("samples > 1 with greedy decoding repeats one label; set a temperature (e.g. 0.7).")

    check_run_options(scales, samples, batch_size)

    jobs = [(i, float(s), k) for i in range(len(ids)) for s in scales for k in range(samples)]
    done: dict[tuple, dict] = {}
    writer = None
    if output is not None:
        path = Path(output)
        writer = JsonlWriter(path)  # locks the file and repairs a torn tail before it is read
        try:
            for n, record in enumerate(read_jsonl(path), 1):
                done[_job_key(record, path, n)] = record
            check_output_run(path, {"explainer": explainer_digest(explainer), "sampling": asdict(sampling)}, bool(done))
        except BaseException:
            writer.close()
            raise
    todo = [job for job in jobs if (ids[job[0]], job[1], job[2]) not in done]

    results: dict[tuple, dict] = dict(done)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), disable=not progress, desc="explain", unit="label")
    try:
        for start in range(0, len(jobs), batch_size):
            # batches (and their seeds) follow the full job list, so a resumed sampled run draws
            # exactly what an uninterrupted one would; a partly done batch is generated again whole
            batch = jobs[start : start + batch_size]
            missing = [(ids[row], s, k) not in done for row, s, k in batch]
            if not any(missing):
                continue
            rows = torch.tensor([job[0] for job in batch])
            scale = torch.tensor([job[1] for job in batch])
            batch_sampling = replace(sampling, seed=sampling.seed + start)
            labels = explainer.generate_labels(vectors[rows], scale, batch_sampling)
            for (row, s, k), (label, text), new in zip(batch, labels, missing):
                if not new:
                    continue
                record = {"id": ids[row], "scale": s, "sample": k, "label": label, "text": text}
                results[(ids[row], s, k)] = record
                if writer:
                    writer.write(record)
            bar.update(sum(missing))
    finally:
        bar.close()
        if writer:
            writer.close()
    return ExplainResults(results[(ids[i], s, k)] for i, s, k in jobs)
