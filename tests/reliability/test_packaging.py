"""Packaging, for real: the wheel builds, installs into a fresh virtualenv with only the core
dependencies, imports, and `selfinterp plugins` runs there and reports each ecosystem plugin as
absent (with the install line), never crashing; installing an extra alone (each into its own venv
layered on that one) makes its plugin appear and leaves the others reported as absent.
Also a throwaway third-party plugin, installed through a real entry point (a .dist-info on the
path), that fails to import, is reported and leaves the others working.

Slow (a virtualenv and pip installs from the package registry); run in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# one worker builds the core venv once and runs every test on it (under xdist, `make test`)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = {"peft": "peft", "nnsight": "nnsight", "transformer-lens": "transformer_lens", "sae-lens": "sae_lens"}  # extra -> plugin
PLUGINS = set(EXTRAS.values())
ENV = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
ENV.pop("SELFINTERP_PLUGINS", None)
ENV.pop("PYTHONPATH", None)  # a checkout on it (its egg-info from the wheel build) would pass for the installed wheel


def _run(*cmd, cwd=None) -> str:
    result = subprocess.run([str(c) for c in cmd], env=ENV, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _plugins(venv: Path) -> dict:
    return json.loads(_run(venv / "bin" / "selfinterp", "plugins", "--json"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # built from a copy: setuptools writes build/ beside the sources, and two builds of one tree at
    # once (another worker, another checkout's test run) fail on each other's build/bdist.../dist-info
    source = tmp_path_factory.mktemp("source") / "selfinterp-plugins"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info",
                                                                  "__pycache__", ".pytest_cache", ".ruff_cache"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source)
    (whl,) = out.glob("selfinterp_plugins-*.whl")
    return whl


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "core"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "-q", "torch==2.13.0")
    _run(venv / "bin" / "pip", "install", "-q", wheel)
    return venv


def test_wheel_carries_every_package_and_the_shipped_data(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for package in ("selfinterp_plugins", "selfinterp_nnsight", "selfinterp_transformer_lens", "selfinterp_sae_lens", "selfinterp_peft"):
        assert f"{package}/plugin.py" in names or f"{package}/__init__.py" in names, package
    assert "selfinterp_plugins/data/topics.jsonl" in names
    assert any(n.startswith("selfinterp_plugins/data/explainers/smollm2-topics/") for n in names)
    for shipped in ("selfinterp_peft/data/dit/smollm2-hidden-topics/dit_config.json",
                    "selfinterp_peft/data/dit/smollm2-hidden-topics/held_out/index.jsonl",
                    "selfinterp_sae_lens/data/saes/smollm2-resid6-topk/sae_weights.safetensors",
                    "selfinterp_sae_lens/data/explainers/smollm2-sae-features/explainer_config.json",
                    "selfinterp_sae_lens/data/explainers/smollm2-sae-features/held_out.jsonl"):
        assert shipped in names, shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[selfinterp]" in text and "selfinterp_peft.plugin" in text


def test_core_only_install_runs_and_reports_absent_plugins(core_venv):
    report = _plugins(core_venv)
    assert "hf" in report["backends"] and "scalar_affine" in report["adapters"]
    absent = {e["plugin"]: e["error"] for e in report["errors"]}
    for plugin in ("nnsight", "transformer_lens", "sae_lens", "peft"):
        assert plugin in absent, report
        assert "not installed" in absent[plugin] and "pip install" in absent[plugin], absent[plugin]
    for module in ("nnsight", "transformer_lens", "sae_lens", "peft"):
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is not None)"
        _run(core_venv / "bin" / "python", "-c", probe)  # really absent


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_each_extra_alone_makes_its_plugin_appear(core_venv, wheel, extra, tmp_path):
    """Each extra into its own venv layered on the core one: a `.pth` file puts the core venv's
    packages after its own, so pip finds torch and the wheel installed and adds only the extra's
    packages, into the layer (a version the extra needs that differs from the core's goes into the
    layer too: pip leaves alone what lies outside the environment it installs into), and nothing
    reaches the core venv. Copying the core venv (torch included) for each extra cost more than
    the installs."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    own, core = (_run(p, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
                 for p in (python, core_venv / "bin" / "python"))
    (Path(own) / "core_venv.pth").write_text(core + "\n")
    _run(python, "-m", "pip", "install", "-q", f"{wheel}[{extra}]")
    report = json.loads(_run(python, "-c", "from selfinterp_plugins.cli import main; main()", "plugins", "--json"))
    names = {p["name"] for p in report["plugins"]}
    errors = {e["plugin"]: e["error"] for e in report["errors"]}
    assert EXTRAS[extra] in names and EXTRAS[extra] not in errors, report
    for other in PLUGINS - names:  # every other plugin: absent with its install line, never broken
        assert "not installed" in errors[other] and "pip install" in errors[other], report
    if extra != "sae-lens":  # SAE-Lens depends on TransformerLens; the other extras pull no other plugin in
        assert names & PLUGINS == {EXTRAS[extra]}, report
    hooks = set(next(p["hooks"] for p in report["plugins"] if p["name"] == EXTRAS[extra]))
    expected = {"nnsight": {"register_backends", "backend_for_model"}, "transformer_lens": {"register_backends"},
                "sae_lens": {"register_vector_sources", "register_scorers"}, "peft": {"register_tasks"}}
    assert expected[EXTRAS[extra]] <= hooks, report


def test_broken_third_party_plugin_installed_through_an_entry_point(core_venv, tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin_pkg").mkdir(parents=True)
    (site / "broken_plugin_pkg" / "__init__.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    (site / "good_plugin_pkg").mkdir()
    (site / "good_plugin_pkg" / "__init__.py").write_text(
        "from selfinterp_plugins.hookspecs import hookimpl\n"
        "from selfinterp_plugins.adapters import ScalarAffine\n"
        "class Mine(ScalarAffine):\n    kind = 'mine'\n"
        "class Dup(ScalarAffine):\n    kind = 'scalar_affine'\n"
        "@hookimpl\ndef register_adapters(register):\n    register(Mine)\n    register(Dup)\n"
        "@hookimpl\ndef register_scorers(register):\n    raise ValueError('wrong on purpose')\n")
    for name, module in (("broken", "broken_plugin_pkg"), ("good", "good_plugin_pkg")):
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(f"[selfinterp]\n{name} = {module}\n")
    env_path = str(site)
    result = subprocess.run([core_venv / "bin" / "selfinterp", "plugins", "--json"], capture_output=True, text=True,
                            timeout=300, env=dict(ENV, PYTHONPATH=env_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    errors = {e["plugin"]: e["error"] for e in report["errors"]}
    assert "broken on purpose" in errors["broken"]
    assert "already registered" in errors["good"] or "wrong on purpose" in errors["good"]
    assert "mine" in report["adapters"] and "scalar_affine" in report["adapters"] and "hf" in report["backends"]
    messages = " ".join(e["error"] for e in report["errors"])
    assert "already registered" in messages and "wrong on purpose" in messages
