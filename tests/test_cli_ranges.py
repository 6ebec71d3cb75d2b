"""Every numeric option of every `selfinterp` command has a range (issue 19: nothing lost, no
traceback for bad input). A value outside it is click's usage error: exit 2, the option named, no
traceback, and nothing written, because click checks it before the command runs.

`RANGES` lists each constrained option with the values it refuses; `test_every_numeric_option_is_listed`
walks the real command tree (core and plugin commands) so an option added without a range, or
without a row here, fails."""

from __future__ import annotations

import math

import click
import pytest

from selfinterp_plugins import plugins
from selfinterp_plugins.cli import _load_plugin_commands, cli
from selfinterp_plugins.cli_options import FiniteFloat

from plugin_fakes import run_cli

COUNT = ("0", "-1", "2147483648")   # integers in 1 .. 2**31 - 1
NONNEG = ("-1", "2147483648")       # integers in 0 .. 2**31 - 1
SEED = ("-1", "4294967296", "100000000000000000000")  # 0 .. 2**32 - 1 (past int64 was torch's overflow)
LAYER = ("-1", "65536")             # 0 .. 65,535
TOKENS = ("0", "8193")              # 1 .. 8,192 tokens of one generation or window
SAMPLES = ("0", "1001", "10000000000")  # 1 .. 1,000 samples (10**10 filled memory)
RANK = ("0", "65537")               # 1 .. 65,536
D_SAE = ("0", "1048577")            # 1 .. 2**20 latents
POSITIVE = ("0", "-1e-3", "nan", "inf")   # finite floats > 0
NONNEG_F = ("-0.5", "nan", "inf", "-inf")  # finite floats >= 0
FINITE = ("nan", "inf", "-inf")     # finite floats
SHARE = ("-0.1", "1.5", "nan")      # finite floats in [0, 1]
TOP_P = ("0", "1.01", "nan")        # finite floats in (0, 1]

# command -> the arguments it needs besides the bad option ({tmp} = an existing directory,
# {out} = a path the command would write)
REST = {
    "vectors topics": ["--out", "{out}"],
    "train": ["{tmp}", "--out", "{out}"],
    "explain": ["{tmp}", "--vectors", "{tmp}", "--output", "{out}"],
    "eval": ["{tmp}", "--vectors", "{tmp}"],
    "demo": [],
    "report": ["--out", "{out}"],
    "dit extract": ["--out", "{out}"],
    "dit make-diffs": ["--out", "{out}"],
    "dit train": ["{tmp}", "--out", "{out}"],
    "dit eval": ["{tmp}", "{tmp}", "--out", "{out}"],
    "dit import": ["{tmp}", "--out", "{out}"],
    "oracle ask": ["{tmp}", "--vectors", "{tmp}", "--question", "what?", "--output", "{out}"],
    "lora-explainer make-data": ["--task", "activation_patching", "--out", "{out}"],
    "lora-explainer train": ["--task", "feature_descriptions", "--data", "{tmp}", "--out", "{out}"],
    "lora-explainer eval": ["{tmp}", "--task", "feature_descriptions", "--data", "{tmp}", "--out", "{out}"],
    "sae train-sae": ["--out", "{out}"],
    "sae weak-labels": ["{tmp}", "--out", "{out}"],
    "sae import-neuronpedia": ["{tmp}", "--out", "{out}"],
    "sae label": ["{tmp}", "--sae", "{tmp}", "--output", "{out}"],
    "sae score": ["{tmp}", "--sae", "{tmp}", "--output", "{out}"],
    "sae demo": [],
}

RANGES = {
    "vectors topics": {"--layer": LAYER, "--limit": COUNT, "--batch-size": COUNT},
    "train": {"--epochs": COUNT, "--batch-size": COUNT, "--lr": POSITIVE, "--limit": COUNT, "--seed": SEED,
              "--checkpoint-every": COUNT},
    "explain": {"--scale": FINITE, "--temperature": NONNEG_F, "--top-p": TOP_P, "--samples": SAMPLES,
                "--max-new-tokens": TOKENS, "--batch-size": COUNT},
    "eval": {"--limit": COUNT, "--scale": FINITE},
    "demo": {"--n": COUNT, "--show": NONNEG},
    "report": {"--validation-topics": COUNT, "--test-topics": COUNT, "--layer": LAYER},
    "dit extract": {"--rank": RANK},
    "dit make-diffs": {"--n-train": NONNEG, "--n-test": NONNEG, "--rank": RANK, "--questions": COUNT,
                       "--answer-tokens": TOKENS, "--lr": POSITIVE, "--epochs": COUNT, "--questions-per-step": COUNT,
                       "--group": COUNT, "--seed": SEED},
    "dit train": {"--rank": RANK, "--alpha": POSITIVE, "--lr": POSITIVE, "--weight-decay": NONNEG_F,
                  "--epochs": COUNT, "--batch-size": COUNT, "--seed": SEED},
    "dit eval": {"--limit": COUNT},
    "dit import": {"--limit": COUNT},
    "oracle ask": {"--layer": LAYER, "--max-new-tokens": TOKENS, "--batch-size": COUNT},
    "lora-explainer make-data": {"--n-train": NONNEG, "--n-test": NONNEG, "--seed": SEED},
    # --epochs 0 is documented: the start alone (with --projection ridge, "the ridge start alone")
    "lora-explainer train": {"--rank": RANK, "--lr": POSITIVE, "--epochs": NONNEG, "--batch-size": COUNT,
                             "--limit": COUNT, "--seed": SEED},
    "lora-explainer eval": {"--limit": COUNT, "--max-new-tokens": TOKENS},
    "sae train-sae": {"--context": TOKENS, "--d-sae": D_SAE, "--k": D_SAE, "--tokens": COUNT, "--lr": POSITIVE,
                      "--seed": SEED},
    "sae weak-labels": {"--context": TOKENS, "--windows": COUNT, "--min-share": SHARE, "--seed": SEED},
    "sae import-neuronpedia": {"--seed": SEED},
    "sae label": {"--scale": FINITE, "--batch-size": COUNT, "--max-new-tokens": TOKENS},
    "sae score": {"--samples": SAMPLES, "--max-new-tokens": TOKENS, "--windows": COUNT},
    "sae demo": {"--n": COUNT},
}

CASES = [(command, option, value) for command, options in RANGES.items()
         for option, values in options.items() for value in values]


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def _commands(group: click.Group, path=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def _numeric_options() -> dict[str, dict[str, click.ParamType]]:
    _load_plugin_commands()
    found = {}
    for name, command in _commands(cli):
        for param in command.params:
            if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType, FiniteFloat)):
                found.setdefault(name, {})[param.opts[0]] = param.type
    return found


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("command", "option", "value"), CASES, ids=[f"{c}{o}={v}" for c, o, v in CASES])
def test_out_of_range_value_is_a_usage_error(capsys, tmp_path, command, option, value):
    out = tmp_path / "out"
    rest = [arg.format(tmp=tmp_path, out=out) for arg in REST[command]]
    before = _files(tmp_path)
    code, stdout, stderr = run_cli(capsys, *command.split(), f"{option}={value}", *rest)
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"Invalid value for '{option}'" in errors[0], stderr
    assert errors[0].count("\n") == 0 and value in errors[0], errors
    assert not out.exists() and _files(tmp_path) == before


def test_every_numeric_option_is_listed():
    """Each INT/FLOAT option of every command is ranged (IntRange with both bounds: an integer
    without a maximum reached torch as an overflow or filled memory; or FiniteFloat) and has a row
    in RANGES; each row names an option that exists."""
    found = _numeric_options()
    unranged = [(name, option) for name, options in found.items() for option, kind in options.items()
                if not isinstance(kind, (click.IntRange, FiniteFloat))
                or (isinstance(kind, click.IntRange) and (kind.min is None or kind.max is None))]
    assert unranged == []
    listed = {(c, o) for c, options in RANGES.items() for o in options}
    assert {(c, o) for c, options in found.items() for o in options} == listed


@pytest.mark.parametrize("value", ["0", "1e-5", "3", "1"])
def test_finite_float_accepts_in_range(value):
    assert FiniteFloat(min=0).convert(value, None, None) == float(value)


@pytest.mark.parametrize(("kind", "value"), [(FiniteFloat(), "nan"), (FiniteFloat(), "-inf"), (FiniteFloat(), "x"),
                                             (FiniteFloat(min=0, min_open=True), "0"),
                                             (FiniteFloat(max=1, max_open=True), "1"),
                                             (FiniteFloat(min=0, max=1), "1.0000001")])
def test_finite_float_refuses(kind, value):
    with pytest.raises(click.BadParameter):
        kind.convert(value, None, None)


def test_finite_float_keeps_a_float_default():
    assert FiniteFloat(min=0).convert(0.5, None, None) == 0.5 and not math.isnan(FiniteFloat().convert(-1.0, None, None))
