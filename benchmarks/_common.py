"""What every benchmark shares: the machine's description, a median timer, and the real setup
(SmolLM2-135M-Instruct, the shipped topic explainer, held-out topic vectors)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

SHIPPED = Path(__file__).resolve().parents[1] / "selfinterp_plugins" / "data" / "explainers" / "smollm2-topics"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}; {os.cpu_count()} cores visible, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"python {platform.python_version()}")


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeat` runs after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shipped_setup(n_vectors: int, split: str = "test"):
    """(model, tokenizer, explainer, dataset) on SmolLM2 with `n_vectors` held-out topic vectors."""
    from selfinterp_plugins import Explainer
    from selfinterp_plugins.backends import HFBackend
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.topics import load_topics, topic_vectors

    model, tokenizer = load_model("smollm2-135m-instruct")
    explainer = Explainer.from_pretrained(SHIPPED, model=HFBackend(model, tokenizer))
    layer = explainer.metadata["layer"]
    topics = [t for t in load_topics() if t["split"] == split][:n_vectors]
    means = {layer: torch.tensor(explainer.metadata["topic_mean"])}
    data = topic_vectors(explainer.backend, topics, [layer], progress=False, means=means)[layer]
    return model, tokenizer, explainer, data
