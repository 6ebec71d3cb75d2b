"""`selfinterp lora-explainer make-data | train | eval` end to end on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from selfinterp_plugins.models import tiny_model  # noqa: E402

from cli_models import ok, run_cli  # noqa: E402


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
    run(["lora-explainer", "make-data", "--task", task, *m, "--n-train", "6", "--n-test", "4", "--layers", "0:3:1",
         "--out", str(data)], capsys)  # resumed: nothing redone
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
        # rows continuing with EOS are dropped from training and evaluation, as the reference drops them
        eos_data = tmp_path / "eos-data"
        eos_data.mkdir()
        for split in ("train", "test"):
            rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
            rows[1]["ablated_continuation"] = [tok.eos_token]
            (eos_data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        code, out, err = run_cli(capsys, "lora-explainer", "train", "--task", task, "--data", str(eos_data), *m, "--rank", "4",
                                 "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "lx-eos"))
        assert code in (0, None) and "train: dropped 1 of 6 rows" in err and json.loads(out)["examples"] == 5
        code, out, err = run_cli(capsys, "lora-explainer", "eval", str(tmp_path / "lx-eos"), "--task", task, "--data",
                                 str(eos_data), *m, "--max-new-tokens", "4", "--out", str(tmp_path / "eos.json"))
        assert code in (0, None) and "test: dropped 1 of 4 rows" in err
        assert json.loads((tmp_path / "eos.json").read_text())["lora_explainer"]["n"] == 3


def test_make_data_never_appends_to_a_leftover_and_resumes_only_the_same_settings(tmp_path, capsys):
    """A killed make-data left `train.partial`; the rerun appended a whole split to it, so
    train.jsonl held the leftover rows twice (the printed count still right). The leftover is now
    discarded and each split written whole, equal byte for byte to an uninterrupted run's; and a
    split file is kept only for the settings it was made with (a rerun with other --n-train kept
    the old rows and said "skipped"), other settings being one line naming the option."""
    from cli_models import refused

    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    flags = ["lora-explainer", "make-data", "--task", "activation_patching", "--model", str(tmp_path / "tiny"),
             "--n-train", "5", "--n-test", "2", "--layers", "0:3:1"]
    run([*flags, "--out", str(tmp_path / "clean")], capsys)
    want = (tmp_path / "clean" / "train.jsonl").read_text()
    assert len(want.splitlines()) == 5

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "train.partial").write_text("".join(want.splitlines(keepends=True)[:3]))  # the leftover of a kill
    out = run([*flags, "--out", str(killed)], capsys)
    assert [json.loads(line)["rows"] for line in out.splitlines()] == [5, 2]
    assert (killed / "train.jsonl").read_text() == want and not (killed / "train.partial").exists()

    line = refused(capsys, *[("6" if f == "5" else f) for f in flags], "--out", str(killed))
    assert "n_train=5, this run asks 6; rerun with n_train=5 (--n-train 5)" in line, line
    line = refused(capsys, *flags[:-1], "0:4:1", "--out", str(killed))
    assert "layers=[0, 1, 2], this run asks [0, 1, 2, 3]" in line and "--layers" in line, line
    assert (killed / "train.jsonl").read_text() == want


@pytest.mark.parametrize(("layers", "why"), [
    ("0:30", "'0:30' is not start:stop:step (three whole numbers, e.g. 0:30:3; every layer from 0 to 29 is 0:30:1)."),
    ("a:b:c", "'a:b:c' is not start:stop:step"),
    ("0:2:0", "'0:2:0' has step 0; the step is at least 1 (0:30:1 is every layer)."),
    ("-1:2:1", "'-1:2:1' is not start:stop:step"),
    ("3:3:1", "'3:3:1' holds no layer (start must be below stop, e.g. 0:30:3)."),
    ("0:99999999999999999999:1", "'0:99999999999999999999:1' stops past layer 65,536"),
    ("", "'' is not start:stop:step"),
])
def test_make_data_refuses_malformed_layers_before_the_model_loads(tmp_path, capsys, layers, why):
    """`--layers 0:30` was a ValueError traceback (three names unpacked from two parts), `a:b:c`
    another, and `0:2:0` range()'s ValueError after the model had loaded. Now click's usage error,
    before the command runs: the model named here does not exist, and nothing is written."""
    from cli_models import refused

    line = refused(capsys, "lora-explainer", "make-data", "--task", "activation_patching", "--model",
                   str(tmp_path / "no-model"), "--layers", layers, "--out", str(tmp_path / "out"))
    assert line.startswith(f"Error: Invalid value for '--layers': {why}"), line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    path = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_layers_past_the_model_are_refused_from_its_config_without_loading_it(tmp_path, capsys, monkeypatch, four_layers):
    """The default 0:30:3 on a 4-layer model loaded it, then failed at the first patch past layer 3
    (BackendError after the work of every earlier batch). The config says 4 layers: refused before
    any weight is read."""
    import selfinterp_plugins.models as models

    from cli_models import refused

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_loading)
    line = refused(capsys, "lora-explainer", "make-data", "--task", "activation_patching", "--model", four_layers,
                   "--out", str(tmp_path / "out"))
    assert line == ("Error: --layers 0:30:3 reads layer 27, past the model's last (3: it has 4); give a stop of at "
                    "most 4, e.g. --layers 0:4:3.")
    assert not list(tmp_path.rglob("*.jsonl"))  # nothing written


def test_layers_past_the_model_are_refused_once_loaded_when_its_config_is_not_at_hand(tmp_path, capsys, monkeypatch,
                                                                                      four_layers):
    import selfinterp_plugins.models as models

    from cli_models import refused

    monkeypatch.setattr(models, "layer_count", lambda name: None)  # a hub id outside the local cache
    line = refused(capsys, "lora-explainer", "make-data", "--task", "activation_patching", "--model", four_layers,
                   "--layers", "2:6:2", "--out", str(tmp_path / "out"))
    assert line == ("Error: --layers 2:6:2 reads layer 4, past the model's last (3: it has 4); give a stop of at most "
                    "4, e.g. --layers 2:4:2.")
    assert not list(tmp_path.rglob("*.jsonl"))  # nothing written
