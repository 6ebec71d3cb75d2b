"""The `selfinterp` command line: plugin listing, and user errors as one line with exit code 2.

Every error case here is raised before a model would load (the dataset is read first), so these
tests stay fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from selfinterp_plugins import VectorLabelDataset, plugins

from cli_models import replace_flag
from plugin_fakes import run_cli

pytestmark = pytest.mark.usefixtures("fresh_plugins")


run = run_cli  # main() in-process: (exit code, stdout, stderr)


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "selfinterp_plugins.cli", *argv], capture_output=True, text=True,
                          timeout=120)


def test_plugins_subprocess_prints_json():
    result = _cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "hf" in report["backends"]
    assert "scalar_affine" in report["adapters"] and "full_rank" in report["adapters"]
    assert {"recall_at_k", "exact_match"} <= set(report["scorers"])
    assert "topics" in report["vector_sources"]
    assert {p["name"] for p in report["plugins"]} >= {"hf_backend", "adapters", "scorers", "topics"}
    assert isinstance(report["errors"], list)


def test_user_error_subprocess_exits_2_without_traceback(tmp_path):
    result = _cli("explain", "/nonexistent", "--vectors", "/nonexistent", "--output", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:")
    assert "/nonexistent" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x.jsonl").exists()


def test_plugins_in_process(capsys):
    code, out, err = run(capsys, "plugins", "--json")
    assert code == 0
    report = json.loads(out)
    assert "hf" in report["backends"]
    assert all("traceback" not in e for e in report["errors"])


def test_plugins_lists_broken_plugin_without_traceback(capsys, monkeypatch):
    import importlib.metadata

    class Broken:
        name = "broken_plugin"

        def load(self):
            raise ImportError("needs nnsight")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [Broken()])
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    plugins.reset()
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["errors"] == [{"plugin": "broken_plugin", "error": "ImportError: needs nnsight"}]
    assert "hf" in report["backends"]
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert out.endswith("Failures (1):\n  broken_plugin: ImportError: needs nnsight\n")
    assert "Traceback" not in out


def test_plugins_json_keeps_its_keys(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    assert list(json.loads(out)) == ["plugins", "backends", "adapters", "vector_sources", "scorers", "tasks",
                                     "baselines", "explainers", "explainer_formats", "errors"]


def test_plugins_prints_a_table(capsys, monkeypatch):
    """Plugins with their hooks, then the names per kind, then the failures, one line each."""
    import importlib.metadata

    class Broken:
        name = "broken_plugin"

        def load(self):
            raise RuntimeError("first line\n  second line")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [Broken()])
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    plugins.reset()
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    blocks = out.rstrip("\n").split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["Plugins and their hooks:", "Registered:", "Failures (1):"]
    rows = {line.split()[0]: line for line in blocks[0].splitlines()[1:]}
    assert rows["hf_backend"].endswith("(built-in)  backend_for_model, register_backends")
    assert rows["adapters"].endswith("register_adapters")
    kinds = dict(line.strip().split("  ", 1) for line in blocks[1].splitlines()[1:])
    kinds = {title: names.strip().split(", ") for title, names in kinds.items()}
    assert list(kinds) == ["backends", "adapter kinds", "vector sources", "scorers", "tasks", "baselines",
                           "shipped explainers", "explainer formats"]
    assert kinds["explainer formats"] == ["selfie-adapters"]  # the core's; the PEFT plugin's activation-oracle is not loaded here
    assert kinds["shipped explainers"] == ["smollm2-topics", "smollm2-words-in-context"]  # the core's; the broken plugin added none
    assert "hf" in kinds["backends"] and "scalar_affine" in kinds["adapter kinds"]
    assert {"exact_match", "recall_at_k"} <= set(kinds["scorers"]) and kinds["tasks"] == ["-"]
    assert blocks[2].splitlines()[1:] == ["  broken_plugin: RuntimeError: first line second line"]


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "shipped", "--vectors", "/nonexistent", "--output", "x.jsonl"],  # the explainer is read first
        ["train", "/nonexistent", "--out", "out"],
        ["eval", "shipped", "--vectors", "/nonexistent"],
    ],
    ids=["explain", "train", "eval"],
)
def test_missing_dataset_is_a_one_line_error(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "No dataset directory" in err
    assert "Traceback" not in out + err


def test_corrupt_dataset_is_a_one_line_error(capsys, tmp_path):
    data = VectorLabelDataset(torch.zeros(2, 4), [{"label": "a", "split": "train"}, {"label": "b", "split": "train"}])
    path = data.save(tmp_path / "ds")
    (path / "vectors.safetensors").write_bytes(b"not safetensors")
    code, _, err = run(capsys, "explain", "shipped", "--vectors", str(path), "--output", str(tmp_path / "x.jsonl"))
    assert code == 2 and err.startswith("Error: ") and "not a valid safetensors" in err


def test_missing_split_is_a_one_line_error(capsys, tmp_path):
    data = VectorLabelDataset(torch.zeros(2, 4), [{"label": "a", "split": "train"}, {"label": "b", "split": "train"}])
    path = data.save(tmp_path / "ds")
    code, _, err = run(capsys, "explain", "shipped", "--vectors", str(path), "--split", "test", "--output",
                       str(tmp_path / "x.jsonl"))
    assert code == 2
    assert err.startswith("Error: ") and "split 'test'" in err


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "explain", "/nonexistent")  # --vectors and --output missing
    assert code == 2 and "Error" in err and "Traceback" not in err
    code, _, err = run(capsys, "no-such-command")
    assert code == 2 and "No such command" in err
    code, _, err = run(capsys, "train", "x", "--out", "y", "--template", "nonsense")
    assert code == 2 and "nonsense" in err


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "explain" in out and "plugins" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "0.1.0" in out


# ---- a resumed `selfinterp train` must be the same run (issue 19: the run manifest) ----------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model, a dataset, and the checkpointed `train` run both started from (3 steps)."""
    from cli_models import save_dataset, save_tiny_model

    root = tmp_path_factory.mktemp("manifest")
    model, data = save_tiny_model(root / "model"), save_dataset(root / "data")
    return root, model, data


BASE_FLAGS = ("--adapter", "scalar_affine", "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--seed", "3")


def _first_run(capsys, trained_run, tmp_path):
    import shutil

    root, model, data = trained_run
    out = tmp_path / "run"
    if not (root / "run").exists():
        code, _, err = run(capsys, "train", data, "--model", model, *BASE_FLAGS, "--out", str(root / "run"))
        assert code in (0, None), err
    shutil.copytree(root / "run", out)
    return model, data, out


def _one_error_line(code, stdout, err) -> str:
    """Exit 2, no traceback, and one `Error:` line, the last of stderr (transformers' weight-loading
    progress bar may come before it). That line."""
    assert code == 2, (stdout, err)
    assert "Traceback" not in stdout + err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    return lines[-1]



@pytest.mark.parametrize(("option", "value", "setting", "old", "new"), [
    ("--lr", "0.02", "lr (--lr)", "0.01", "0.02"),
    ("--seed", "4", "seed (--seed)", "3", "4"),
    ("--adapter", "full_rank", "adapter.kind (--adapter)", '"scalar_affine"', '"full_rank"'),
    ("--epochs", "2", "epochs (--epochs)", "1", "2"),
    ("--batch-size", "3", "batch_size (--batch-size)", "4", "3"),
    ("--init", "paper", "init (--init)", '"ridge"', '"paper"'),
    ("--limit", "8", "training_rows (--limit or the dataset)", "12", "8"),
    ("--template", "chat", "template.name (--template)", '"echo"', '"chat"'),
    ("--site", "resid_post.1", "site.kind (--site)", '"embed"', '"resid_post"'),
    # the frozen weights' dtype changes every step, and the embedding fingerprint (rounded to
    # bfloat16 so that one checkpoint is one model) cannot tell: it resumed under the other dtype
    ("--dtype", "bfloat16", "model_dtype (--dtype)", '"float32"', '"bfloat16"'),
])
def test_resume_with_other_settings_is_one_line_naming_the_setting(capsys, trained_run, tmp_path, option, value,
                                                                   setting, old, new):
    """Each setting that defines the run, changed on a rerun into the same --out: before the
    manifest, --adapter was a RuntimeError traceback and the others resumed silently."""
    model, data, out = _first_run(capsys, trained_run, tmp_path)
    state = (out / "checkpoint" / "state.json").read_bytes()
    adapter = (out / "adapter.safetensors").read_bytes()
    code, stdout, err = run(capsys, "train", data, "--model", model, *replace_flag(BASE_FLAGS, option, value),
                            "--out", str(out))
    err = _one_error_line(code, stdout, err)
    assert setting in err and "delete" in err and str(out / "checkpoint") in err and "--out" in err
    assert f"was {old}, this run has {new}" in err, err
    assert (out / "checkpoint" / "state.json").read_bytes() == state  # nothing resumed, nothing rewritten
    assert (out / "adapter.safetensors").read_bytes() == adapter


def test_resume_with_another_dataset_is_refused(capsys, trained_run, tmp_path):
    model, _, out = _first_run(capsys, trained_run, tmp_path)
    data = VectorLabelDataset.load(trained_run[2])
    other = VectorLabelDataset(data.vectors + 1, data.records).save(tmp_path / "other")
    code, stdout, err = run(capsys, "train", str(other), "--model", model, *BASE_FLAGS, "--out", str(out))
    assert "training_data_sha256 (the dataset)" in _one_error_line(code, stdout, err)


def test_resume_with_the_same_settings_resumes(capsys, trained_run, tmp_path):
    model, data, out = _first_run(capsys, trained_run, tmp_path)
    code, stdout, err = run(capsys, "train", data, "--model", model, *BASE_FLAGS, "--checkpoint-every", "1",
                            "--out", str(out))
    assert code in (0, None), err
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 3  # the finished run, not a new one
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["run"]["lr"] == 0.01 and state["run"]["seed"] == 3


def test_a_checkpoint_without_a_manifest_resumes_as_before(capsys, trained_run, tmp_path):
    """Checkpoints written before the manifest (no `run` in state.json) are not refused."""
    model, data, out = _first_run(capsys, trained_run, tmp_path)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["run"]
    path.write_text(json.dumps(state))
    code, stdout, err = run(capsys, "train", data, "--model", model, *replace_flag(BASE_FLAGS, "--lr", "0.02"),
                            "--out", str(out))
    assert code in (0, None), err
    assert json.loads(stdout.strip().splitlines()[-1])["steps"] == 3


def test_a_manifest_without_the_dtype_resumes_as_before(capsys, trained_run, tmp_path):
    """A checkpoint whose manifest predates `model_dtype` is compared without it (not refused as
    'null, this run has float32'), and still refused on what it does record."""
    model, data, out = _first_run(capsys, trained_run, tmp_path)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["run"]["model_dtype"]
    path.write_text(json.dumps(state))
    code, stdout, err = run(capsys, "train", data, "--model", model, *BASE_FLAGS, "--out", str(out))
    assert code in (0, None), err
    code, stdout, err = run(capsys, "train", data, "--model", model, *replace_flag(BASE_FLAGS, "--seed", "4"),
                            "--out", str(out))
    assert "seed (--seed) was 3, this run has 4" in _one_error_line(code, stdout, err)


def test_explain_resumes_only_from_the_same_vectors(capsys, trained_run, tmp_path):
    """The tester's case: `explain --output OUT` again after the dataset was rebuilt with other
    vectors under the same ids kept every old label and exited 0; now exit 2 and one line, the
    output unchanged. `--scale 1 --scale 1` (every record written twice) is refused the same way."""
    model, data, run_dir = _first_run(capsys, trained_run, tmp_path)
    out = tmp_path / "labels.jsonl"
    flags = ("--model", model, "--max-new-tokens", "3", "--output", str(out))
    code, stdout, err = run(capsys, "explain", str(run_dir), "--vectors", data, *flags)
    assert code in (0, None), err
    before = out.read_bytes()
    assert len(before.splitlines()) == 20
    rebuilt = VectorLabelDataset.load(data)
    rebuilt = VectorLabelDataset(rebuilt.vectors * 2, rebuilt.records).save(tmp_path / "rebuilt")  # same ids
    code, stdout, err = run(capsys, "explain", str(run_dir), "--vectors", str(rebuilt), *flags)
    line = _one_error_line(code, stdout, err)
    assert "holds labels of other vectors or ids" in line and "choose another output" in line, line
    code, stdout, err = run(capsys, "explain", str(run_dir), "--vectors", data, "--split", "test", *flags)
    assert "holds labels of 20 vectors, this run gives 4" in _one_error_line(code, stdout, err)
    code, stdout, err = run(capsys, "explain", str(run_dir), "--vectors", data, "--dtype", "bfloat16", *flags)
    assert "rerun with --dtype float32" in _one_error_line(code, stdout, err)
    assert out.read_bytes() == before
    fresh = tmp_path / "twice.jsonl"
    code, stdout, err = run(capsys, "explain", str(run_dir), "--vectors", data, "--scale", "1", "--scale", "1.0",
                            *replace_flag(flags, "--output", str(fresh)))
    assert "Scale 1 is given more than once" in _one_error_line(code, stdout, err) and not fresh.exists()


def test_vectors_topics_then_train_records_the_vector_spec(capsys, tmp_path):
    """The CLI path users take: the explainer says what it reads (site, prompt form, centring) and
    keeps the mean to subtract, so prepare_vectors works on what `train` wrote."""
    from cli_models import ok, save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    ok(capsys, "vectors", "topics", "--model", model, "--layer", "1", "--limit", "12", "--out", str(tmp_path / "v"))
    ok(capsys, "train", str(tmp_path / "v" / "layer1"), "--model", model, "--epochs", "1", "--batch-size", "4", "--limit", "4",
       "--out", str(tmp_path / "ex"))
    config = json.loads((tmp_path / "ex" / "explainer_config.json").read_text())
    spec = config["vector_spec"]
    assert (spec["source"], spec["site"], spec["layer"], spec["prompt"], spec["prompt_format"], spec["centring"]) == \
        ("topic_vectors", "resid_post.1", 1, "Tell me about {title}.", "chat", "mean")
    data = json.loads((tmp_path / "v" / "layer1" / "dataset.json").read_text())
    assert config["metadata"][spec["mean_key"]] == pytest.approx(data["mean"])


@pytest.mark.parametrize(("change", "why"), [
    ({"metadata": {"topic_mean": "abc"}}, "metadata['topic_mean'] should be a list of numbers"),
    ({"metadata": {"topic_mean": [0.5] * 3}}, "metadata['topic_mean'] has 3 values, but the model's width is 64"),
    ({"vector_spec": {"source": "topic_vectors", "site": "resid_post.1", "prompt": "About {name}."}},
     "field vector_spec.prompt names the field {name}"),
])
@pytest.mark.parametrize("command", ["explain", "eval"])
def test_a_bad_explainer_is_refused_before_the_model_loads(capsys, tiny_llama, tmp_path, command, change, why):
    """`explain` and `eval` loaded the model (minutes for a real one) before reading the explainer,
    whose broken mean or prompt then failed later, or never. Now its model-free checks come first:
    with a model that does not exist the error is still the explainer's."""
    from selfinterp_plugins import Explainer

    path = Explainer.create(*tiny_llama, adapter="scalar_affine", template="echo").save_pretrained(tmp_path / "ex")
    config = json.loads((path / "explainer_config.json").read_text())
    config["vector_spec"] = {"source": "topic_vectors", "site": "resid_post.1", "centring": "mean",
                             "mean_key": "topic_mean"}
    config.update(change)
    (path / "explainer_config.json").write_text(json.dumps(config))
    data = VectorLabelDataset(torch.zeros(2, 64), [{"label": "a", "split": "test"}, {"label": "b", "split": "test"}])
    data.save(tmp_path / "ds")
    argv = [command, str(path), "--vectors", str(tmp_path / "ds"), "--model", str(tmp_path / "no-such-model")]
    code, out, err = run(capsys, *argv, *(["--output", str(tmp_path / "x.jsonl")] if command == "explain" else []))
    assert code == 2 and "Traceback" not in out + err
    assert err.startswith(f"Error: {path / 'explainer_config.json'}: ") and why in err and err.count("\n") == 1, err
