"""The main job: the shipped explainer beats untrained injection on held-out topics."""

import pytest

from selfinterp_plugins import shipped_explainer_dir
from selfinterp_plugins.demo import run_demo


def test_shipped_explainer_is_packaged():
    directory = shipped_explainer_dir()
    assert (directory / "adapter.safetensors").is_file()
    assert (directory / "explainer_config.json").is_file()


@pytest.mark.real_model
def test_demo_trained_beats_untrained(capsys):
    scores = run_demo(shipped_explainer_dir(), n_topics=60, show=5)
    out = capsys.readouterr().out
    assert "recall@1 over all" in out and "trained" in out
    assert scores["trained"]["recall@1"] > scores["untrained"]["recall@1"] + 0.1
