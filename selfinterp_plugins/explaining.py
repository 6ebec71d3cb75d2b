"""Explaining many vectors: batched label generation, streamed to JSONL, resumable.

Work is the list of (vector, scale, sample) jobs; each batch of jobs is one `generate` call.
With `output`, every finished batch is appended (flushed) to a JSONL file, and a rerun skips
the jobs already there, so a crash or Ctrl-C loses at most one batch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .adapters import check_vectors
from .backends.base import Sampling
from .errors import VectorError
from .results import ExplainResults
from .serialization import JsonlWriter, read_jsonl


def _job_key(record: dict) -> tuple:
    return (str(record["id"]), float(record["scale"]), int(record.get("sample", 0)))


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

    jobs = [(i, float(s), k) for i in range(len(ids)) for s in scales for k in range(samples)]
    done: dict[tuple, dict] = {}
    writer = None
    if output is not None:
        path = Path(output)
        if path.exists():
            for record in read_jsonl(path, tolerate_torn_tail=True):
                done[_job_key(record)] = record
        writer = JsonlWriter(path)
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
