"""What the `--backend` CLI tests share: a tiny model saved to a directory (the CLI takes a model
by name, so every backend loads the same `--model <dir>`), a small dataset for it, and runs of
train / explain / eval that return what each printed and wrote."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selfinterp_plugins import VectorLabelDataset
from selfinterp_plugins.models import tiny_model
from selfinterp_plugins.storage._files import load_safetensors, read_jsonl

from plugin_fakes import run_cli

WORDS = ["cat", "dog", "river", "sun", "moon", "tree", "road", "sky", "house", "bird", "fish", "rain"]


def save_tiny_model(directory: Path) -> str:
    """A tiny llama with the SmolLM2 tokenizer, saved as a transformers checkpoint."""
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def save_dataset(directory: Path, d_model: int = 64) -> str:
    """12 train, 4 validation and 4 test rows of random vectors with one-word labels."""
    generator = torch.Generator().manual_seed(0)
    splits = ["train"] * 12 + ["validation"] * 4 + ["test"] * 4
    records = [{"id": str(i), "label": WORDS[i % len(WORDS)], "split": s} for i, s in enumerate(splits)]
    VectorLabelDataset(torch.randn(len(records), d_model, generator=generator) * 3, records).save(directory)
    return str(directory)


def ok(capsys, *argv) -> str:
    """Run `selfinterp argv` in-process; it must succeed. Its stdout."""
    code, out, err = run_cli(capsys, *argv)
    assert code in (0, None), err
    return out


def one_line_error(capsys, *argv) -> str:
    """Run `selfinterp argv`; it must exit 2 with one `Error:` line and no traceback. That line."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err.strip()


def refused(capsys, *argv) -> str:
    """Run `selfinterp argv`; it must exit 2 with no traceback and one `Error:` line, the last of
    stderr (loading a model may print a progress bar before it). That line."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    return lines[-1]


def train(capsys, model: str, data: str, out: Path, *flags) -> tuple[dict, dict]:
    """`selfinterp train` (3 steps of 4 rows): its JSON line and the saved adapter's tensors."""
    printed = ok(capsys, "train", data, "--model", model, "--epochs", "1", "--batch-size", "4", "--out", str(out), *flags)
    return json.loads(printed.strip().splitlines()[-1]), load_safetensors(out / "adapter.safetensors")


def explain(capsys, explainer: Path, model: str, data: str, output: Path, *flags) -> list[str]:
    """`selfinterp explain` on every row: the raw text generated for each."""
    ok(capsys, "explain", str(explainer), "--vectors", data, "--model", model, "--max-new-tokens", "6",
       "--output", str(output), *flags)
    return [r["text"] for r in read_jsonl(output)]


def evaluate(capsys, explainer: Path, model: str, data: str, *flags) -> dict:
    """`selfinterp eval` on the test split: its JSON."""
    return json.loads(ok(capsys, "eval", str(explainer), "--vectors", data, "--model", model, *flags))


def replace_flag(flags, option, value):
    """`flags` with `option` set to `value` (added when absent; a flag without a value when None)."""
    flags = list(flags)
    if option in flags:
        flags[flags.index(option) + 1] = value
    else:
        flags += [option] if value is None else [option, value]
    return flags


def assert_refused_by_setting(line: str, ckpt, setting: str, old, new) -> None:
    """A resume refused by its run manifest: one line naming the setting (and its values) and the fix."""
    assert line.startswith(f"Error: {ckpt} is the checkpoint of a run with other settings: {setting} was "), line
    if old is not None:
        assert f"{setting} was {old}, this run has {new};" in line
    assert f"delete {ckpt} or choose another --out" in line
