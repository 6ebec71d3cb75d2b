"""The examples run top to bottom, so they never rot."""

import json
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.real_model
def test_quickstart_runs_and_training_helps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("validation loss after ridge init"))
    at_init, after = float(line.split(":")[1].split()[0]), float(line.split(":")[2])
    assert after < at_init
    assert (tmp_path / "quickstart-explainer" / "adapter.safetensors").is_file()
    assert out.count(" -> ") == 8


@pytest.mark.real_model
def test_nnsight_example_labels_what_it_read(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnsight")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "nnsight_explain.py"), run_name="__main__")
    out = capsys.readouterr().out
    labels = dict(line.split(" -> ") for line in out.splitlines() if " -> " in line)
    assert len(labels) == 6
    # the shipped explainer names most of these common topics (4/6 seen when this test was written)
    assert sum(topic.strip().lower() in label.lower() for topic, label in labels.items()) >= 3
    assert "training loss, first and last step" in out


@pytest.mark.real_model
def test_ndif_example_runs_offline_through_the_remote_path(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nnsight")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SELFINTERP_REMOTE", raising=False)
    runpy.run_path(str(EXAMPLES / "ndif_remote.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "3 remote training steps" in out and "3 requests" in out
    assert out.count(" -> ") == 8
    assert len((tmp_path / "ndif_labels.jsonl").read_text().splitlines()) == 8


@pytest.mark.real_model
def test_dit_example_round_trips_a_fine_tune_through_peft(tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["dit_weight_diff.py"])
    runpy.run_path(str(EXAMPLES / "dit_weight_diff.py"), run_name="__main__")
    out = capsys.readouterr().out
    gap = float(next(line for line in out.splitlines() if line.startswith("PEFT-loaded")).rsplit(":", 1)[1])
    assert gap < 1e-4
    kept = next(line for line in out.splitlines() if line.startswith("SVD of the merged"))
    assert float(kept.split(" keeps ")[1].split("-")[0]) > 0.999  # a rank-1 diff is recovered whole at rank 1
    assert (tmp_path / "coffee-lora" / "adapter_model.safetensors").is_file()
    assert "with its trigger:" in out


@pytest.mark.real_model
def test_sae_lens_example_trains_labels_and_scores(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sae_lens")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["sae_lens_features.py"])
    runpy.run_path(str(EXAMPLES / "sae_lens_features.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "latents at blocks.6.hook_resid_post" in out
    labelled = int(out.split("weak labels for ")[1].split()[0])
    assert labelled >= 20  # a 60k-token SAE already has this many single-word latents
    assert out.count("-> adapter") == 4
    scores = next(line for line in out.splitlines() if line.startswith("generation scoring"))
    for part in scores.split(": ")[1].split(", "):
        assert 0.0 <= float(part.split()[-1]) <= 1.0
    assert (tmp_path / "example-sae" / "cfg.json").is_file()
    assert len((tmp_path / "example-sae-labels.jsonl").read_text().splitlines()) == 4
    assert len(json.loads((tmp_path / "example-sae-labels.json").read_text())) == 4
