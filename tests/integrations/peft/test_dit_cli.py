"""`selfinterp dit …` end to end on a tiny model saved to disk: make-diffs resumes (and remakes a diff
whose index row a crash tore off), train, eval (three methods), ask, extract."""

from __future__ import annotations

import json
import re

import pytest
import torch

from plugin_fakes import run_cli

pytest.importorskip("peft")

from selfinterp_plugins.models import tiny_model  # noqa: E402

from cli_models import ok  # noqa: E402


def run(argv, capsys) -> str:
    return ok(capsys, *argv)


def test_dit_commands(tmp_path, capsys):
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    m = ["--model", str(tmp_path / "tiny")]
    diffs = str(tmp_path / "diffs")
    make = ["dit", "make-diffs", *m, "--n-train", "3", "--n-test", "2", "--questions", "1", "--answer-tokens", "3",
            "--group", "2", "--out", diffs]
    stats = json.loads(run(make, capsys).strip().splitlines()[-1])
    assert stats["diffs"] == 5
    index = (tmp_path / "diffs" / "index.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in index] == ["train"] * 3 + ["test"] * 2
    assert run(make, capsys) == ""  # nothing left to make
    (tmp_path / "diffs" / "index.jsonl").write_text("\n".join(index[:-1]) + "\n" + index[-1][:10])  # torn last row
    assert json.loads(run(make, capsys).strip().splitlines()[-1])["diffs"] == 1

    dit = str(tmp_path / "dit")
    trained = json.loads(run(["dit", "train", diffs, *m, "--epochs", "1", "--batch-size", "2", "--out", dit], capsys))
    assert trained["diffs"] == 3 and trained["steps"] == 2
    metrics = json.loads(run(["dit", "eval", dit, diffs, *m, "--candidates", "diffs", "--llm-judge", str(tmp_path / "tiny"),
                              "--out", str(tmp_path / "ev")], capsys))
    assert set(metrics) == {"dit", "no_dit", "trigger"} and all(v["n"] == 2 for v in metrics.values())
    # the paper's 1-5 judge, run on the local model given, next to the embedding judge
    assert all(1 <= v["llm_judge_mean"] <= 5 and sum(v["llm_judge_counts"].values()) == 2 for v in metrics.values())
    answers = [json.loads(line) for line in (tmp_path / "ev" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all(("guess" in a) == (a["method"] != "dit") for a in answers)

    held_out = json.loads(index[-1])["id"]
    asked = json.loads(run(["dit", "ask", dit, f"{diffs}/diffs/{held_out}", *m], capsys))
    assert set(asked) == {"diff", "answer"}
    # the no-DIT baseline needs no DIT directory (it used to), and equals the baseline asked through one
    base_only = json.loads(run(["dit", "ask", "--no-dit", f"{diffs}/diffs/{held_out}", *m], capsys))
    through_dit = json.loads(run(["dit", "ask", "--no-dit", dit, f"{diffs}/diffs/{held_out}", *m], capsys))
    assert base_only == through_dit and base_only["diff"] == f"{diffs}/diffs/{held_out}"
    code, out, err = run_cli(capsys, "dit", "ask", f"{diffs}/diffs/{held_out}", *m)
    assert code == 2 and "pass --no-dit" in err and "Traceback" not in out + err
    extracted = json.loads(run(["dit", "extract", "--adapter", f"{diffs}/diffs/{held_out}", "--base", str(tmp_path / "tiny"),
                                "--out", str(tmp_path / "x")], capsys))
    assert extracted["modules"] == 14 and (tmp_path / "x" / "adapter_config.json").is_file()
    # the adapter's config names its base model; it is never loaded from there: --base must be given
    code, out, err = run_cli(capsys, "dit", "extract", "--adapter", f"{diffs}/diffs/{held_out}", "--out", str(tmp_path / "y"))
    assert code == 2 and "Give --base" in err and "Traceback" not in out + err and not (tmp_path / "y").exists()


def test_the_peft_plugin_registers_the_dit_task_and_commands(capsys):
    from selfinterp_plugins import plugins

    assert "diff_interpretation" in plugins.registry().tasks
    names = {p["name"]: p["hooks"] for p in plugins.list_plugins()}
    assert names["peft"] == ["register_commands", "register_explainer_formats", "register_tasks"]
    assert "make-diffs" in run(["dit", "--help"], capsys)


@pytest.mark.real_model
def test_the_shipped_dit_adapter_names_a_held_out_diff(capsys):
    """`selfinterp dit demo`: the shipped DIT adapter (SmolLM2, bfloat16) asked about the held-out
    diffs shipped with it; by name in the API and in `dit ask` as well."""
    from selfinterp_peft.shipped import shipped_dit_names, shipped_held_out

    assert "smollm2-hidden-topics" in shipped_dit_names()
    lines = run(["dit", "demo"], capsys).strip().splitlines()
    rows = lines[1:-1]
    assert len(rows) == 8 and any(line.endswith("<- named") for line in rows)
    assert lines[-1].startswith(f"named {sum(line.endswith('<- named') for line in rows)} of 8")
    first = json.loads((shipped_held_out() / "index.jsonl").read_text().splitlines()[0])["id"]
    asked = json.loads(run(["dit", "ask", "smollm2-hidden-topics", str(shipped_held_out() / "diffs" / first)], capsys))
    assert asked["answer"] == rows[0].split(None, 1)[1].removesuffix("<- named").strip()


# ---- one line, exit 2, never a traceback ----------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    """A tiny model saved to disk, an untrained DIT adapter for it, and a PEFT LoRA on it (rank 2 on
    q_proj and down_proj), as the files every hostile variant below starts from."""
    import peft

    from selfinterp_peft.dit import DITAdapter, DITConfig

    root = tmp_path_factory.mktemp("hostile")
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    DITAdapter.create(model, tok, DITConfig(rank=2, max_new_tokens=2)).save_pretrained(root / "dit")
    torch.manual_seed(3)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(root / "lora")
    return root


DOWN = "base_model.model.model.layers.0.mlp.down_proj"
A, B = f"{DOWN}.lora_A.weight", f"{DOWN}.lora_B.weight"  # (2, 128) and (64, 2)
ASK_HOSTILE = {  # each was a traceback (ZeroDivisionError, IndexError, einsum RuntimeError, overflow, NotImplementedError)
    "rank 0": ({A: torch.ones(0, 128), B: torch.ones(64, 0)}, {}, "has rank 0"),
    "0-d tensor": ({A: torch.tensor(1.0)}, {}, r"has shape \(\), not a matrix"),
    "inner sizes differ": ({B: torch.ones(64, 3)}, {}, "the two factors do not multiply"),
    "wider input than the model's": ({A: torch.ones(2, 99)}, {}, "is 64×99 but the model's module is 64×128"),
    "lora_alpha overflowing float32": ({}, {"lora_alpha": 1e300}, "overflow float32"),
    # finite in float32, but the model's logits are not: greedy decoding answered '' with exit 0
    "huge lora_alpha": ({}, {"lora_alpha": 1e38}, "the model's logits are NaN or infinite"),
    "float8 NaN weights": ({A: torch.full((2, 128), float("nan")).to(torch.float8_e4m3fn)}, {}, "holds 256 NaN"),
}


def hostile_lora(root, tmp_path, tensors=None, config=None, drop=()):
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "hostile"
    directory.mkdir()
    weights = {k: v for k, v in load_file(str(root / "lora" / "adapter_model.safetensors")).items() if k not in drop}
    save_file({**weights, **(tensors or {})}, str(directory / "adapter_model.safetensors"))
    raw = json.loads((root / "lora" / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**raw, **(config or {})}))
    return directory


def one_line(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    return lines[-1]


@pytest.mark.parametrize("case", sorted(ASK_HOSTILE))
def test_dit_ask_on_a_hostile_peft_dir_is_one_line(hostile_root, tmp_path, capsys, case):
    tensors, config, message = ASK_HOSTILE[case]
    directory = hostile_lora(hostile_root, tmp_path, tensors, config)
    line = one_line(capsys, "dit", "ask", str(hostile_root / "dit"), str(directory), "--model", str(hostile_root / "tiny"))
    assert line.startswith(f"Error: {directory}") and re.search(message, line), line


EXTRACT_HOSTILE = {
    "wrong shapes": ({A: torch.ones(2, 99)}, {}, (), r"lora_A.weight is \(2, 99\), but on the model given it is \(2, 128\)"),
    "unknown peft_type": ({}, {"peft_type": "FOO"}, (), "peft_type 'FOO' is none of the"),
    # PEFT allocated rank × width for every target module: 256 GB on SmolLM2 (an exception, after minutes of swap)
    "huge rank": ({}, {"r": 10 ** 8}, (), "rank 2 .*, but adapter_config.json gives model.layers.0.mlp.down_proj rank 100000000"),
    "NaN lora_alpha": ({}, {"lora_alpha": float("nan")}, (), "field lora_alpha should be a finite number"),
    "NaN weights": ({A: torch.full((2, 128), float("nan"))}, {}, (), "holds 256 NaN"),
    "no lora_B": ({}, {}, (B,), "but no .*lora_B.weight"),
    "a module the model lacks": ({A.replace("layers.0", "layers.7"): torch.ones(2, 128),
                                  B.replace("layers.0", "layers.7"): torch.ones(64, 2)}, {}, (),
                                 "the model given has no module 'model.layers.7.mlp.down_proj'"),
}


@pytest.mark.parametrize("case", sorted(EXTRACT_HOSTILE))
def test_dit_extract_with_a_base_refuses_what_the_path_without_one_refuses(hostile_root, tmp_path, capsys, case):
    """With --base these were accepted (NaN, no lora_B: PEFT's random initialisation, a dropped module) or a
    traceback (shapes, peft_type, rank); now the same checks run before PEFT sees the directory."""
    tensors, config, drop, message = EXTRACT_HOSTILE[case]
    directory = hostile_lora(hostile_root, tmp_path, tensors, config, drop)
    line = one_line(capsys, "dit", "extract", "--adapter", str(directory), "--base", str(hostile_root / "tiny"),
                    "--out", str(tmp_path / "out"))
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()


def test_dit_demo_and_ask_with_a_model_the_shipped_adapter_is_not_for_are_one_line(hostile_root, capsys):
    from selfinterp_peft.shipped import shipped_held_out

    diff = shipped_held_out() / "diffs" / "wn-01503061"
    for argv in (("dit", "demo"), ("dit", "ask", "smollm2-hidden-topics", str(diff))):
        line = one_line(capsys, *argv, "--model", str(hostile_root / "tiny"))
        assert re.match(r"Error: .*smollm2-hidden-topics: this DIT adapter was made on HuggingFaceTB/SmolLM2-135M-Instruct; "
                        rf"the model given \({hostile_root / 'tiny'}\) has other weights", line), line


@pytest.mark.real_model
def test_dit_ask_against_the_default_model_with_a_tiny_models_adapter_is_one_line(hostile_root, tmp_path, capsys):
    """A DIT adapter made for another model (here the tiny one), given to the default SmolLM2: a PEFT
    size-mismatch traceback. With its record: the model check; saved before records: the shapes."""
    import shutil

    line = one_line(capsys, "dit", "ask", str(hostile_root / "dit"), str(hostile_root / "lora"))
    assert re.match(rf"Error: {hostile_root / 'dit'}: this DIT adapter was made on .*; the model given "
                    r"\(HuggingFaceTB/SmolLM2-135M-Instruct\) has other weights", line), line
    legacy = tmp_path / "dit"
    shutil.copytree(hostile_root / "dit", legacy)
    config = json.loads((legacy / "dit_config.json").read_text())
    del config["model_id"], config["embedding_fingerprint"]
    (legacy / "dit_config.json").write_text(json.dumps(config))
    line = one_line(capsys, "dit", "ask", str(legacy), str(hostile_root / "lora"))
    assert re.match(rf"Error: {legacy}/adapter_model.safetensors: tensor .* is \(\d+, \d+\), but on the model given it is",
                    line), line


def _store(root, rows):
    """A diff store with these index rows and the lora as every diff."""
    import shutil

    for row in rows:
        if isinstance(row.get("id"), str) and "/" not in row["id"]:
            shutil.copytree(root / "lora", root / "store" / "diffs" / row["id"], dirs_exist_ok=True)
    (root / "store").mkdir(exist_ok=True)
    (root / "store" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "store"


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": "a", "topic": "cat", "trigger": 1, "split": "test"}], "has no train-split diffs"),  # exit 1 before
    ([{"id": 17, "topic": "cat", "trigger": 1, "split": "train"}], r"row 1: field id should be a valid string \(got 17\)"),
    ([{"id": "a", "topic": 5, "trigger": 1, "split": "train"}], r"row 1: field topic should be a valid string \(got 5\)"),
    ([{"id": "../a", "topic": "cat", "trigger": 1, "split": "train"}], r"row 1 names its diff id '../a': '../a' is a path"),
])
def test_dit_train_on_a_bad_diff_store_is_one_line(hostile_root, tmp_path, capsys, rows, message):
    import shutil

    shutil.copytree(hostile_root, tmp_path / "root", ignore=shutil.ignore_patterns("store"))
    store = _store(tmp_path / "root", rows)
    line = one_line(capsys, "dit", "train", str(store), "--model", str(hostile_root / "tiny"), "--out", str(tmp_path / "out"))
    assert re.search(message, line), line


@pytest.mark.parametrize(("rows", "flags", "message"), [
    ([{"id": "a", "topic": "cat", "trigger": 1, "split": "train"}], (), r"has no test-split diffs \(its splits: train\)"),
    ([{"id": "a", "topic": "cat", "trigger": 1, "split": "test"}, {"id": "b", "topic": "dog", "split": "test"}], (),
     "row 'b' has no trigger, which the trigger baseline needs"),
    ([{"id": "a", "topic": "cat", "trigger": "123", "split": "test"}], (), r"field trigger should be a valid integer"),
])
def test_dit_eval_on_a_bad_diff_store_is_one_line(hostile_root, tmp_path, capsys, rows, flags, message):
    import shutil

    shutil.copytree(hostile_root, tmp_path / "root", ignore=shutil.ignore_patterns("store"))
    store = _store(tmp_path / "root", rows)
    line = one_line(capsys, "dit", "eval", str(hostile_root / "dit"), str(store), "--model", str(hostile_root / "tiny"),
                    "--llm-judge", "none", "--out", str(tmp_path / "out"), *flags)
    assert re.search(message, line), line
