"""Explaining many vectors: batched label generation, streamed to JSONL, resumable.

Work is the list of (vector, scale, sample) jobs; each batch of jobs is one `generate` call.
With `output`, every finished batch is appended (flushed) to a JSONL file, and a rerun skips
the jobs already there, so a crash or Ctrl-C loses at most one batch. Beside the output,
`<output>.run.json` records what makes its labels what they are (the explainer's weights, template
and site; the model and its dtype; what was read: a digest of the vectors and their ids, the scales
and samples; the sampling settings): a rerun with another explainer, other vectors or other
settings is refused in one line (`storage._manifests.check_output_run`) instead of mixing two runs'
labels in one file, or keeping labels of vectors that have since changed under the same ids.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace
from pathlib import Path

import torch

from .backends.base import Sampling
from .errors import ArtifactError, OptionError, VectorError
from .results import ExplainResults
from .storage._files import JsonlWriter, read_jsonl
from .storage._manifests import check_output_run, explain_run


def _job_key(record: dict, path, n: int) -> tuple:
    try:
        return (str(record["id"]), float(record["scale"]), int(record.get("sample", 0)))
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{path}:{n} is not an explain record (id, scale, sample, label): this file holds another "
                            "kind of output; choose another output file.") from None


def check_run_options(scales, samples: int, batch_size: int) -> None:
    """Refuse what would otherwise run and do nothing, or write what a resume cannot match: a NaN
    scale never equals itself, so every resume would label its vectors again."""
    if isinstance(scales, (str, bytes, numbers.Number)) or (isinstance(scales, torch.Tensor) and scales.dim() == 0):
        raise OptionError(f"scales= takes a sequence of numbers, got the single {scales!r:.40}; pass a tuple, e.g. "
                          "scales=(1.0,).")
    try:
        scales = list(scales)
    except TypeError:
        raise OptionError(f"scales= takes a sequence of numbers, got {type(scales).__name__}; pass e.g. "
                          "scales=(1.0,).") from None
    if not scales:
        raise OptionError("Give at least one scale (e.g. scales=(1.0,)).")
    for scale in scales:
        try:
            finite = not isinstance(scale, (bool, str)) and math.isfinite(float(scale))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise OptionError(f"Scales must be finite numbers, got {scale!r}; pass e.g. --scale 1.0.")
    repeated = [float(s) for n, s in enumerate(scales) if float(s) in map(float, scales[:n])]
    if repeated:  # each (vector, scale, sample) is one record: a repeated scale wrote every record twice
        raise OptionError(f"Scale {repeated[0]:g} is given more than once; give each scale once "
                          f"(--scale {repeated[0]:g}).")
    for name, value in (("samples", samples), ("batch size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise OptionError(f"The {name} must be a whole number of at least 1, got {value!r}.")


def dataset_ids(dataset, ids) -> list[str]:
    """The ids of a dataset's records, as explain records hold them (text). `ids` given as well must
    be those: explaining a dataset under other ids would give records its scorers cannot match."""
    own = [str(i) for i in dataset.ids]
    if ids is None:
        return own
    given = [str(i) for i in ids]
    if given != own:
        row = next((n for n, (a, b) in enumerate(zip(given, own)) if a != b), min(len(given), len(own)))
        first = f"row {row}: {given[row]!r} vs the dataset's {own[row]!r}" if row < min(len(given), len(own)) else \
            f"{len(given)} ids for {len(own)} rows"
        raise VectorError(f"ids= differ from the dataset's own ids ({first}); omit ids= to label each row with its "
                          "dataset id.")
    return own


def explain(explainer, vectors, ids, scales, sampling: Sampling, batch_size: int, samples: int, output, progress: bool):
    from tqdm.auto import tqdm

    from .datasets import VectorLabelDataset

    if isinstance(vectors, VectorLabelDataset):  # its records' ids, so its scorers find each record's label
        vectors, ids = vectors.vectors, dataset_ids(vectors, ids)
    vectors = explainer.vector_rows(vectors)  # (N, d_model), or (N, K, d_model) for a prompt of K slots
    ids = [str(i) for i in (ids if ids is not None else range(len(vectors)))]
    if len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise VectorError("`ids` must give one distinct id per vector; pass ids=None to number them 0..N-1.")
    if samples > 1 and sampling.greedy:
        raise VectorError("samples > 1 with greedy decoding repeats one label; set a temperature (e.g. 0.7).")

    check_run_options(scales, samples, batch_size)
    scales = list(scales)  # read twice below: not a generator

    jobs = [(i, float(s), k) for i in range(len(ids)) for s in scales for k in range(samples)]
    done: dict[tuple, dict] = {}
    writer = None
    if output is not None:
        path = Path(output)
        writer = JsonlWriter(path)  # locks the file and repairs a torn tail before it is read
        try:
            for n, record in enumerate(read_jsonl(path), 1):
                done[_job_key(record, path, n)] = record
            check_output_run(path, explain_run(explainer, sampling, vectors, ids, scales, samples), bool(done))
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
