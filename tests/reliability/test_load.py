"""Load: 10,000 vectors explained in one run on a tiny model, streamed to JSONL. Every record
is written exactly once and the Python memory the run allocates grows only by the records it
returns (about 0.5 KB each), not by anything proportional to the work done per batch."""

from __future__ import annotations

import tracemalloc

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.storage._files import read_jsonl

pytestmark = pytest.mark.slow


def _explain_peak(explainer, n: int, path) -> tuple[int, list]:
    vectors = torch.randn(n, explainer.backend.d_model, generator=torch.Generator().manual_seed(n))
    tracemalloc.start()
    records = explainer.explain(vectors, sampling=Sampling(max_new_tokens=3), batch_size=500, output=path, progress=False)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, records


def test_ten_thousand_vectors_stream_with_bounded_memory(tiny_llama, tmp_path):
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    small_peak, _ = _explain_peak(explainer, 1000, tmp_path / "small.jsonl")
    peak, records = _explain_peak(explainer, 10_000, tmp_path / "large.jsonl")
    written = read_jsonl(tmp_path / "large.jsonl")
    assert len(records) == len(written) == 10_000
    assert sorted(int(r["id"]) for r in written) == list(range(10_000))
    per_vector = (peak - small_peak) / 9000
    print(f"python-level peak: 1,000 vectors {small_peak / 2**20:.1f} MiB, 10,000 vectors {peak / 2**20:.1f} MiB "
          f"({per_vector:.0f} bytes per extra vector)")
    assert per_vector < 2048
