"""`selfinterp lora-explainer make-data | train | eval` end to end on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from selfinterp_plugins.models import tiny_model  # noqa: E402

from cli_models import ok  # noqa: E402


def run(argv, capsys) -> str:
    return ok(capsys, *argv)


@pytest.mark.parametrize("task", ["activation_patching", "input_ablation"])
def test_lora_explainer_commands(tmp_path, capsys, task):
    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    m = ["--model", str(tmp_path / "tiny")]
    data = tmp_path / "data"
    out = run(["lora-explainer", "make-data", "--task", task, *m, "--n-train", "6", "--n-test", "4", "--layers", "0:3:1",
               "--out", str(data)], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["rows"] for line in lines] == [6, 4]
    first = (data / "train.jsonl").read_text()
    run(["lora-explainer", "make-data", "--task", task, *m, "--out", str(data)], capsys)  # resumed: nothing redone
    assert (data / "train.jsonl").read_text() == first

    out = run(["lora-explainer", "train", "--task", task, "--data", str(data), *m, "--rank", "4", "--epochs", "2",
               "--batch-size", "4", "--lr", "1e-3", "--out", str(tmp_path / "lx")], capsys)
    assert json.loads(out)["steps"] == 4 and (tmp_path / "lx" / "checkpoint" / "state.json").exists()
    out = run(["lora-explainer", "eval", str(tmp_path / "lx"), "--task", task, "--data", str(data), *m,
               "--max-new-tokens", "8", "--out", str(tmp_path / "eval.json")], capsys)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["lora_explainer"]["n"] == 4 and set(result) >= {"always_unchanged", "majority_answer"}
    assert len((tmp_path / "eval.json.answers.jsonl").read_text().splitlines()) == 4
    if task == "activation_patching":
        assert set(result["lora_explainer_by_layer"]) <= {"0", "1", "2"}
        run(["lora-explainer", "eval", str(tmp_path / "lx"), "--task", task, "--data", str(data), *m, "--max-new-tokens", "8",
             "--control", "shuffled-vectors", "--out", str(tmp_path / "control.json")], capsys)
        assert json.loads((tmp_path / "control.json").read_text())["control"] == "shuffled-vectors"
