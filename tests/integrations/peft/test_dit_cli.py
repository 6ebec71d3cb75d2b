"""`selfinterp dit …` end to end on a tiny model saved to disk: make-diffs resumes (and remakes a diff
whose index row a crash tore off), train, eval (three methods), ask, extract."""

from __future__ import annotations

import json

import pytest

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
    assert names["peft"] == ["register_commands", "register_tasks"]
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
