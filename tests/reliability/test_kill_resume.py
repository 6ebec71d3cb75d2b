"""Crash safety for real: `selfinterp train` and `selfinterp explain` run as subprocesses on a tiny
model, are SIGKILLed at random moments (several times each), and are then run to completion.
The resumed adapter must equal an uninterrupted run from the same seed, and the explain JSONL
must hold every record exactly once, equal to an uninterrupted run's.

KILLS_PER_RUN kills are actually delivered to a running process (a run that finished before its
kill would not count; the test then fails rather than pass vacuously).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfinterp_plugins import VectorLabelDataset
from selfinterp_plugins.serialization import load_safetensors, read_jsonl

pytestmark = pytest.mark.slow

KILLS_PER_RUN = 3
ENV = dict(os.environ, SELFINTERP_PLUGINS="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
CLI = [sys.executable, "-c", "from selfinterp_plugins.cli import main; main()"]
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


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run_with_kills(cmd: list[str], progress_file: Path, rng: random.Random) -> int:
    """Start `cmd`, wait for it to make progress, SIGKILL it at a random moment; KILLS_PER_RUN times."""
    delivered = 0
    for _ in range(KILLS_PER_RUN):
        before = _lines(progress_file)
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _lines(progress_file) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            delivered += 1
        proc.wait()
        proc.stderr.close()
    return delivered


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_killed_training_resumes_to_the_uninterrupted_adapter(work, tmp_path):
    _run(_train_cmd(work, tmp_path / "reference"))
    killed = tmp_path / "killed"
    delivered = _run_with_kills(_train_cmd(work, killed), killed / "train_log.jsonl", random.Random(1))
    assert delivered == KILLS_PER_RUN
    _run(_train_cmd(work, killed))

    reference = load_safetensors(tmp_path / "reference" / "adapter.safetensors")
    resumed = load_safetensors(killed / "adapter.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(killed / "train_log.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == 90  # 120 rows / 4 x 3 epochs, each once


def test_killed_explain_run_has_every_record_exactly_once(work, tmp_path):
    explainer = tmp_path / "explainer"
    _run(_train_cmd(work, explainer) + ["--epochs", "1"])
    _run(_explain_cmd(work, explainer, tmp_path / "reference.jsonl"))
    output = tmp_path / "killed.jsonl"
    delivered = _run_with_kills(_explain_cmd(work, explainer, output), output, random.Random(2))
    assert delivered == KILLS_PER_RUN
    _run(_explain_cmd(work, explainer, output))

    reference = read_jsonl(tmp_path / "reference.jsonl")
    resumed = read_jsonl(output)  # strict: no torn or duplicated line may remain
    keys = [(r["id"], r["scale"], r["sample"]) for r in resumed]
    assert len(keys) == len(set(keys)) == len(reference) == 4 * 40
    by_key = {(r["id"], r["scale"], r["sample"]): r for r in reference}
    assert all(r == by_key[k] for k, r in zip(keys, resumed))
