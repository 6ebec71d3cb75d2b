"""`ruff check` passes on the package, the integrations, the tests, the scripts, the benchmarks and
the examples (the rules are in pyproject.toml, [tool.ruff]). This is how CI lints: `make test`.
ruff comes with the `dev` extra, which `make test` installs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ["selfinterp_plugins", "integrations", "tests", "scripts", "benchmarks", "examples"]


def test_ruff_check_passes():
    assert importlib.util.find_spec("ruff") is not None, "ruff is not installed: pip install -e '.[dev]'"
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *TREES], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ruff check failed (fix it, or `ruff check --fix`):\n{result.stdout}{result.stderr}"
