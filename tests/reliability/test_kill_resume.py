"""Crash safety for real: `selfinterp train` and `selfinterp explain` run as subprocesses on a tiny
model, are SIGKILLed at random moments (several times each), and are then run to completion.
The resumed adapter must equal an uninterrupted run from the same seed, and the explain JSONL
must hold every record exactly once, equal to an uninterrupted run's.

KILLS_PER_RUN kills are actually delivered to a running process (a run that finished before its
kill would not count; the test then fails rather than pass vacuously).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from selfinterp_plugins import VectorLabelDataset
from selfinterp_plugins.storage._files import load_safetensors, read_jsonl

from kill_harness import CLI, KILLS_PER_RUN, lines, run, run_with_kills

pytestmark = pytest.mark.slow

WORDS = ["dog", "tree", "house", "river", "golden retriever", "Jupiter"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A saved tiny model and a synthetic dataset with train and test rows."""
    from selfinterp_plugins.models import tiny_model

    root = tmp_path_factory.mktemp("faults")
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    n = 160
    centres = torch.randn(len(WORDS), model.config.hidden_size, generator=g) * 3
    which = torch.arange(n) % len(WORDS)
    vectors = centres[which] + 0.3 * torch.randn(n, model.config.hidden_size, generator=g)
    records = [{"id": f"v{i}", "label": WORDS[int(w)], "split": "train" if i < 120 else "test"} for i, w in enumerate(which)]
    VectorLabelDataset(vectors, records, {"source": "synthetic"}).save(root / "data")
    return root


def _train_cmd(work: Path, out: Path) -> list[str]:
    return CLI + ["train", str(work / "data"), "--model", str(work / "model"), "--adapter", "scalar_affine",
                  "--template", "echo", "--init", "paper", "--epochs", "3", "--batch-size", "4", "--lr", "0.05",
                  "--checkpoint-every", "7", "--out", str(out)]


def _explain_cmd(work: Path, explainer: Path, output: Path) -> list[str]:
    return CLI + ["explain", str(explainer), "--vectors", str(work / "data"), "--model", str(work / "model"),
                  "--split", "test", "--batch-size", "4", "--max-new-tokens", "12", "--scale", "1.0", "--scale", "2.0",
                  # four scales: 40 batches, enough left after two kills that the third always lands
                  "--scale", "4.0", "--scale", "8.0", "--output", str(output)]


def test_killed_training_resumes_to_the_uninterrupted_adapter(work, tmp_path):
    run(_train_cmd(work, tmp_path / "reference"))
    killed = tmp_path / "killed"
    delivered = run_with_kills(_train_cmd(work, killed), lines(killed / "train_log.jsonl"), random.Random(1))
    assert delivered == KILLS_PER_RUN
    run(_train_cmd(work, killed))

    reference = load_safetensors(tmp_path / "reference" / "adapter.safetensors")
    resumed = load_safetensors(killed / "adapter.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(killed / "train_log.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == 90  # 120 rows / 4 x 3 epochs, each once


def test_killed_explain_run_has_every_record_exactly_once(work, tmp_path):
    explainer = tmp_path / "explainer"
    run(_train_cmd(work, explainer) + ["--epochs", "1"])
    run(_explain_cmd(work, explainer, tmp_path / "reference.jsonl"))
    output = tmp_path / "killed.jsonl"
    delivered = run_with_kills(_explain_cmd(work, explainer, output), lines(output), random.Random(2))
    assert delivered == KILLS_PER_RUN
    run(_explain_cmd(work, explainer, output))

    reference = read_jsonl(tmp_path / "reference.jsonl")
    resumed = read_jsonl(output)  # strict: no torn or duplicated line may remain
    keys = [(r["id"], r["scale"], r["sample"]) for r in resumed]
    assert len(keys) == len(set(keys)) == len(reference) == 4 * 40
    by_key = {(r["id"], r["scale"], r["sample"]): r for r in reference}
    assert all(r == by_key[k] for k, r in zip(keys, resumed))
