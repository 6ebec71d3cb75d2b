"""benchmarks/gpu.py (the Llama-3.1-8B-shaped GPU benchmark) runs as documented on a CPU, on its tiny
shape, and prints every field its docs/performance.md section reads: the ratios to the floors of
benchmarks/training_step.py and benchmarks/explain.py, and peak memory (none off CUDA)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.mark.slow  # about 20 s on 2 shared cores: a Python start, the Llama 3.1 tokenizer, two timings
def test_the_gpu_benchmark_runs_on_a_tiny_shape_on_cpu_and_prints_its_fields():
    args = ["--device", "cpu", "--tiny", "--batch", "4", "--n", "3", "--explain-batch", "2", "--max-new-tokens", "4",
            "--repeat", "1"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), *args], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"^device: cpu; torch.float32; shape tiny: d_model 64, 2 layers, vocab 128256, ", out, re.M), out
    train = re.search(rf"^training step: batch 4, ours {NUMBER} ms, floor {NUMBER} ms -> ours / floor = {NUMBER}x "
                      r"\(goal <= 1.10x\); peak memory ours n/a \(not CUDA\), floor n/a \(not CUDA\)$", out, re.M)
    assert train, out
    ours, floor, ratio = map(float, train.groups())
    assert abs(ratio - ours / floor) <= 0.01 + 0.1 / floor  # the printed ratio is of the printed times
    explain = re.search(rf"^explain: 3 vectors, batch 2, (\d+) new tokens, ours {NUMBER} s, floor {NUMBER} s -> "
                        rf"ours / floor = {NUMBER}x \(goal <= 1.10x\); peak memory ours n/a \(not CUDA\), "
                        r"floor n/a \(not CUDA\)$", out, re.M)
    assert explain, out
    tokens, ours, floor, ratio = (float(g) for g in explain.groups())
    assert tokens == 3 * 4  # a random model writes no closing string: every label runs its 4 tokens
    assert abs(ratio - ours / floor) <= 0.01 + 0.001 / floor
