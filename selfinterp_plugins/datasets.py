"""VectorLabelDataset: vectors with the labels an explainer should say for them.

On disk, a directory with three plain files that any tool can read:
`vectors.safetensors` (one tensor "vectors", N × d_model), `labels.jsonl` (one record per row:
id, label, split and anything else) and `dataset.json` (model, site, source, d_model, count, and
the names and SHA-256 of the other two: it commits them, see `storage`).
No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ArtifactError, LabelError, OptionError, VectorError
from .storage.validation import NonNegativeInt, PositiveInt, unencodable_text, validate

# public: what every vector source returns (hookspecs.register_vector_sources)
__all__ = ["VectorLabelDataset"]

VECTORS_FILE = "vectors.safetensors"
LABELS_FILE = "labels.jsonl"
META_FILE = "dataset.json"
FIX = "rebuild the dataset (VectorLabelDataset.save) or repair that file."


@dataclass
class DatasetMeta:
    """The fields of `dataset.json` the loader relies on; any other key (model, site, source, a
    plugin's own) is kept as written."""

    d_model: PositiveInt | None = None
    count: NonNegativeInt | None = None


@dataclass
class LabelRecord:
    """The fields of a `labels.jsonl` row the library reads; other keys are kept as written."""

    label: str
    id: str | int | None = None
    split: str | None = None


@dataclass
class VectorLabelDataset:
    """Rows of (vector, record); `record["label"]` is the text to say, `record["id"]` names the row."""

    vectors: torch.Tensor
    records: list[dict]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.vectors.dim() != 2:
            raise VectorError(f"Dataset vectors must be a 2-D tensor (N, d_model), got shape {tuple(self.vectors.shape)}.")
        if len(self.records) != self.vectors.shape[0]:
            raise ArtifactError(
                f"{self.vectors.shape[0]} vectors but {len(self.records)} label records; rebuild the dataset so they match."
            )
        for i, record in enumerate(self.records):
            if "label" not in record or not isinstance(record["label"], str) or not record["label"].strip():
                raise LabelError(f"Row {i} ({record.get('id', '?')}) has an empty or missing label; fix or drop that row.")
            if unencodable_text(record["label"]) is not None:  # it would fail in the tokenizer or at save
                raise LabelError(f"Row {i} ({record.get('id', '?')}) has a label holding a lone surrogate (such as "
                                 "'\\ud800', half of a pair), which no text encoding can write; fix that row's label.")
            record.setdefault("id", str(i))
        self.meta.setdefault("d_model", int(self.vectors.shape[1]))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        return [r["label"] for r in self.records]

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def select(self, indices) -> VectorLabelDataset:
        indices = list(indices)
        return VectorLabelDataset(self.vectors[indices].clone(), [dict(self.records[i]) for i in indices], dict(self.meta))

    def split(self, name: str) -> VectorLabelDataset:
        """Rows whose record has `split == name` (train / validation / test)."""
        chosen = [i for i, r in enumerate(self.records) if r.get("split") == name]
        if not chosen:
            counts = Counter(r.get("split") for r in self.records)
            held = ", ".join(f"{n} {k!r}" for k, n in sorted(counts.items(), key=str) if k is not None)
            missing = f"{counts[None]} with no 'split' field" if counts[None] else ""
            raise ArtifactError(f"The dataset has no rows in split {name!r} (its rows: {', '.join(filter(None, [held, missing]))}); "
                                "mark them with data = data.train_test_split(test_size=0.1) (rows become 'train' and "
                                "'validation'), or fix the 'split' field of labels.jsonl.")
        return self.select(chosen)

    def train_test_split(self, test_size=0.1, seed: int = 0, test_split: str = "validation") -> VectorLabelDataset:
        """A copy whose every record's `split` is 'train' or `test_split`, drawn at random by `seed`
        (the same seed, the same rows). Named and called as in HF datasets: `test_size` is a
        fraction in (0, 1) or a row count, and the held-out part has ceil(test_size × N) rows.
        Unlike there, one dataset comes back with its rows marked, because a saved dataset and
        `selfinterp train` read splits from that field: take the parts with `.split("train")` and
        `.split("validation")`. `test_split` is 'validation' by default, the split training
        reports its loss on and the CLI's `train` reads; any split the records had is replaced.
        Vectors, other fields and `meta` (where the vectors came from) are kept."""
        n = len(self)
        if n < 2:
            raise OptionError(f"A dataset needs at least 2 rows to be split, this one has {n}; add rows.")
        fix = (f"test_size= takes a fraction between 0 and 1 or a row count from 1 to {n - 1}, leaving rows on both "
               f"sides, got {test_size!r:.40}; e.g. test_size=0.1.")
        if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
            raise OptionError(fix)
        if isinstance(test_size, numbers.Integral):
            count = int(test_size)
        elif math.isfinite(test_size) and 0 < test_size < 1:
            count = math.ceil(test_size * n)
        else:
            raise OptionError(fix)
        if not 1 <= count <= n - 1:
            raise OptionError(fix)
        if not isinstance(test_split, str) or not test_split.strip() or test_split == "train":
            raise OptionError(f"test_split= names the held-out part ('validation' or 'test'), got {test_split!r:.40}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise OptionError(f"seed= takes a whole number, got {seed!r:.40}.")
        held_out = set(torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:count].tolist())
        records = [dict(record, split=test_split if i in held_out else "train") for i, record in enumerate(self.records)]
        return VectorLabelDataset(self.vectors.clone(), records, dict(self.meta))

    def head(self, n: int | None) -> VectorLabelDataset:
        return self if n is None or n >= len(self) else self.select(range(n))

    def save(self, directory: str | Path) -> Path:
        """Write the three files as one commit (`storage`): `dataset.json`, written last,
        names the vectors and labels files with their SHA-256, so a kill at any moment leaves the
        old dataset or the new one, never new vectors with old labels."""
        from .storage._commits import record_free, save_committed
        from .storage._files import save_safetensors, write_text_atomic

        directory = Path(directory)
        vectors = {"vectors": self.vectors.contiguous().float()}
        labels = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
        meta = record_free(self.meta)  # a meta loaded with an old record gets this save's
        meta.update(count=len(self), d_model=self.d_model)
        save_committed(directory, {"vectors": (VECTORS_FILE, lambda path: save_safetensors(vectors, path)),
                                   "labels": (LABELS_FILE, lambda path: write_text_atomic(path, labels))},
                       meta, META_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> VectorLabelDataset:
        from .storage._commits import committed_file, record_free
        from .storage._files import load_safetensors, read_json, read_jsonl

        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"No dataset directory at {directory}; build one with `selfinterp vectors topics`.")
        meta = read_json(directory / META_FILE) if (directory / META_FILE).exists() else {}
        vectors_path = committed_file(directory, meta, "vectors", VECTORS_FILE)
        tensors = load_safetensors(vectors_path)
        if "vectors" not in tensors:
            raise ArtifactError(f"{vectors_path} has no tensor named 'vectors'; rebuild the dataset.")
        vectors = tensors["vectors"]
        if not vectors.is_floating_point():
            raise ArtifactError(f"{vectors_path} holds {vectors.dtype} vectors, which explain() refuses; "
                                "save them as floating point (.float()).")
        labels_path = committed_file(directory, meta, "labels", LABELS_FILE)
        records = read_jsonl(labels_path)
        for n, record in enumerate(records, 1):
            validate(LabelRecord, record, f"{labels_path}:{n}", FIX, unknown="ignore", error=LabelError)
        meta = record_free(meta)  # the commit record is not part of `meta`
        checked = validate(DatasetMeta, meta, str(directory / META_FILE), FIX, unknown="ignore")
        if checked.d_model is not None and vectors.dim() == 2 and checked.d_model != vectors.shape[1]:
            raise ArtifactError(f"{directory / META_FILE} says d_model {checked.d_model}, but {vectors_path.name} holds "
                                f"vectors of width {vectors.shape[1]}; {FIX}")
        return cls(vectors.float(), records, meta)
