"""Real crashes for the resume tests: run a CLI command as a subprocess and SIGKILL it at a random
moment after it has made progress, several times. Only kills delivered to a running process are
counted, so a test can insist that its kills really interrupted something."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KILLS_PER_RUN = 3
CLI = [sys.executable, "-c", "from selfinterp_plugins.cli import main; main()"]


def env(plugins: str = "") -> dict:
    """The subprocesses' environment: offline, one thread, only the named entry-point plugins."""
    return dict(os.environ, SELFINTERP_PLUGINS=plugins, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def lines(path: Path) -> Callable[[], int]:
    """Progress = complete lines written to `path` (JSONL outputs, training logs)."""
    return lambda: path.read_bytes().count(b"\n") if path.exists() else 0


def run_with_kills(cmd: list[str], progress: Callable[[], int], rng: random.Random, plugins: str = "") -> int:
    """Start `cmd`, wait until `progress()` grows, SIGKILL it a random 0-0.3 s later; KILLS_PER_RUN
    times. Returns how many kills landed on a running process."""
    delivered = 0
    for _ in range(KILLS_PER_RUN):
        before = progress()
        proc = subprocess.Popen(cmd, env=env(plugins), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while progress() <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            delivered += 1
        proc.wait()
        proc.stderr.close()
    return delivered


def run(cmd: list[str], plugins: str = "") -> None:
    result = subprocess.run(cmd, env=env(plugins), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
