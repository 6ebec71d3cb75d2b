"""The example third-party backend (examples/selfinterp-toy-backend) passes the conformance suite,
imported from its source directory when it is not installed; installed, `selfinterp plugins --json`
lists it and `Explainer.create` picks it for its model. CI installs it with
`pip install --no-deps --no-build-isolation -e examples/selfinterp-toy-backend`; without that, a
wheel built into a temporary directory and put on the path of a subprocess stands in."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from selfinterp_plugins.testing import BackendConformance

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "selfinterp-toy-backend"

try:
    from selfinterp_toy_backend import ToyBackend, ToyModel
except ImportError:  # not installed: the example's source directory
    sys.path.insert(0, str(EXAMPLE))
    from selfinterp_toy_backend import ToyBackend, ToyModel


class TestToyBackend(BackendConformance):
    archs = ("gpt2",)

    def make_backend(self, model, tokenizer):
        return ToyBackend(ToyModel.from_gpt2(model, tokenizer))


LISTS_AND_PICKS = """
import json
from click.testing import CliRunner
from selfinterp_plugins import Explainer
from selfinterp_plugins.cli import cli
from selfinterp_plugins.models import tiny_model
from selfinterp_toy_backend import ToyModel

listed = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)  # what `selfinterp plugins --json` prints
explainer = Explainer.create(ToyModel.from_gpt2(*tiny_model("gpt2")), template="echo")
print(json.dumps({"backends": listed["backends"], "errors": listed["errors"], "picked": explainer.backend.name}))
"""


def _installed() -> bool:
    try:
        importlib.metadata.distribution("selfinterp-toy-backend")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run(code_or_args, extra_path: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SELFINTERP_PLUGINS"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, *code_or_args], env=env, check=True, capture_output=True, text=True).stdout


def _check(report: dict):
    assert "toy" in report["backends"], report
    assert not [e for e in report["errors"] if "toy" in json.dumps(e)], report["errors"]
    assert report["picked"] == "toy", report


@pytest.mark.skipif(not _installed(), reason="selfinterp-toy-backend is not installed (CI installs it)")
def test_installed_plugin_is_listed_and_picked():
    _check(json.loads(_run(["-c", LISTS_AND_PICKS]).splitlines()[-1]))


def test_its_wheel_registers_the_entry_point(tmp_path):
    """Built as pip would install it, the package's entry point makes `selfinterp plugins --json`
    list the backend and `Explainer.create` pick it (without touching this environment)."""
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: building leaves build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("selfinterp_toy_backend-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    _check(json.loads(_run(["-c", LISTS_AND_PICKS], str(site)).splitlines()[-1]))
