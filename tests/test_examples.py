"""The examples run top to bottom, so they never rot."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.real_model
def test_quickstart_runs_and_training_helps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("validation loss after ridge init"))
    at_init, after = float(line.split(":")[1].split()[0]), float(line.split(":")[2])
    assert after < at_init
    assert (tmp_path / "quickstart-explainer" / "adapter.safetensors").is_file()
    assert out.count(" -> ") == 8
