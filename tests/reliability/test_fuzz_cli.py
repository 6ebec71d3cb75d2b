"""The whole `selfinterp` command line driven with generated inputs (issue 25 §3): every command the
core and the installed plugins register, every option and argument, values drawn with hypothesis
from a strategy per click type (integer ranges at and past their bounds, floats with nan / inf /
huge ones, Choice members and others, paths that are missing, blank, a directory, junk bytes, a
symlink, a dangling symlink or an artifact of another kind, text that is blank, a lone surrogate,
a NUL or 5,000 characters), run in-process through `main` against a tiny model saved in a tmp dir.

The contract: exit 0 or 2 only (never 1, never an uncaught exception); on exit 2 one `Error:` line,
the last of stderr (click's `Usage:` and `Try ...` lines may come before it, as a progress bar
may), and no traceback anywhere. Each example starts from arguments that make the command cheap
and valid (`BASE`), then replaces one to three of its parameters with drawn values.

No real model runs: the bundled aliases (SmolLM2, Gemma) load the tiny model instead, so commands
without `--model` (`demo`, `dit demo`, `sae demo`) stay fast too. The counts of commands,
parameters and examples are in docs/reliability.md; `-s` prints them.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfinterp_plugins import Explainer
from selfinterp_plugins.cli import _load_plugin_commands, cli, main
from selfinterp_plugins.cli_options import FiniteFloat

from cli_models import save_dataset, save_tiny_model
from fuzzing import FUZZ

# CI's budget: each example that gets past click runs the command on the tiny model
EXAMPLES_PER_COMMAND = int(os.environ.get("SELFINTERP_CLI_FUZZ_EXAMPLES", "2"))
RAN = {"examples": 0, "exit 0": 0, "exit 2": 0, "drawn": set()}
#: one worker runs the whole file (`--dist loadgroup`): RAN is this process's, and the last test reads it
pytestmark = pytest.mark.xdist_group("cli-fuzz")


def _commands(group=cli, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


_load_plugin_commands()
COMMANDS = dict(_commands())

# values that make each command cheap and, where the artifact exists here, valid; {x} names an
# artifact of the `artifacts` fixture, {new} a fresh path for an output
TINY = {"model_name": "{model}"}
BASE = {
    "plugins": {},
    "vectors topics": {**TINY, "layers": "1", "out": "{new}", "limit": "2", "batch_size": "2"},
    "train": {**TINY, "dataset": "{data}", "epochs": "1", "batch_size": "8", "limit": "4", "out": "{new}"},
    "explain": {**TINY, "explainer_dir": "{explainer}", "dataset": "{data}", "split": "test", "max_new_tokens": "2",
                "output": "{new}"},
    "eval": {**TINY, "explainer_dir": "{explainer}", "dataset": "{data}", "limit": "2"},
    "demo": {"n_topics": "1", "show": "1", "explainer_dir": "{explainer}"},
    "report": {**TINY, "out_dir": "{new}", "no_explainer": True, "baselines": "scale_only", "validation_topics": "1",
               "test_topics": "1"},
    "dit make-diffs": {**TINY, "n_train": "1", "n_test": "0", "rank": "1", "questions": "1", "answer_tokens": "2",
                       "epochs": "1", "out": "{new}"},
    "dit train": {**TINY, "diffs_dir": "{diffs}", "rank": "1", "epochs": "1", "out": "{new}"},
    "dit eval": {**TINY, "dit_dir": "{dit}", "diffs_dir": "{diffs}", "split": "train", "limit": "1",
                 "llm_judge": "{model}", "out": "{new}"},
    "dit ask": {**TINY, "dirs": "{dit}"},
    "dit demo": {**TINY},
    "dit extract": {"adapter": "{diff}", "base_name": "{model}", "out": "{new}"},
    "dit import": {**TINY, "src": "{diffs}", "out": "{new}", "limit": "1"},
    "oracle ask": {**TINY, "oracle_dir": "{diff}", "dataset": "{data}", "layer": "1", "question": "what?",
                   "max_new_tokens": "2", "output": "{new}"},
    "lora-explainer make-data": {**TINY, "task": "input_ablation", "n_train": "1", "n_test": "0", "out": "{new}"},
    "lora-explainer train": {**TINY, "task": "feature_descriptions", "data": "{data}", "epochs": "0", "limit": "2",
                             "out": "{new}"},
    "lora-explainer eval": {**TINY, "explainer_dir": "{explainer}", "task": "feature_descriptions", "data": "{data}",
                            "limit": "1", "max_new_tokens": "2", "out": "{new}.json"},
    "sae train-sae": {**TINY, "site": "resid_post.1", "corpus": "{corpus}", "context": "8", "d_sae": "4", "k": "2",
                      "tokens": "16", "out": "{new}"},
    "sae weak-labels": {**TINY, "sae_dir": "{sae}", "corpus": "{corpus}", "context": "8", "windows": "2", "out": "{new}"},
    "sae label": {**TINY, "explainer_dir": "{explainer}", "sae_dir": "{sae}", "features": "0:2", "max_new_tokens": "2",
                  "output": "{new}"},
    "sae score": {**TINY, "labels": "{labels}", "sae_dir": "{sae}", "samples": "1", "max_new_tokens": "2",
                  "corpus": "{corpus}", "windows": "2"},
    "sae import-labels": {"labels": "{labels}", "sae_dir": "{sae}", "out": "{new}"},
    "sae import-neuronpedia": {"explanations": "{labels}", "sae_dir": "{sae}", "out": "{new}"},
    "sae demo": {**TINY, "n": "1"},
}

ARTIFACTS = ("model", "data", "explainer", "diffs", "diff", "dit", "sae", "labels", "corpus")
NAMES = ("", " ", "\t\n", "\ud800", "a\x00b", "x" * 5000, "../..", "-", "🙂", "nope", "shipped", "hf", "test", "0:2",
         "smollm2-135m-instruct", "no/such-model", "http://", "resid_post.99", "blocks.0.hook_resid_post", "{junk}",
         "{link}", "{dangling}", "{empty}", "{missing}", *(f"{{{a}}}" for a in ARTIFACTS))
PATHS = ("", " ", "a\x00b", "\ud800", "x" * 5000, "{missing}", "{empty}", "{junk}", "{link}", "{dangling}",
         "{wrong_json}", "{junk}/below", *(f"{{{a}}}" for a in ARTIFACTS))
OUTPUTS = ("{new}", "{new}", "{empty}", "{junk}", "{dangling}", "{junk}/below", "{data}", "", "a\x00b", "x" * 5000)
FLOATS = ("nan", "inf", "-inf", "1e309", "-1e309", "1e30", "-1e30", "1e-320", "0", "-0", "1", "0.5", "-1", "x", "",
          "1,5", "0x10")


def _ints(kind: click.IntRange) -> st.SearchStrategy[str]:
    """Small valid values (a valid maximum such as --epochs 2**31-1 would run for days), the bounds,
    one past each, past int64, and text that is not an integer."""
    low = kind.min if kind.min is not None else 0
    values = [low, low + 1, low - 1, 2**63, -(2**63) - 1, 10**30]
    if kind.max is not None:
        values += [kind.max + 1]
    return st.sampled_from([str(v) for v in values] + ["1e20", "1.5", "x", "", " 2", "٣", "nan"])


def strategy(command_path: str, param: click.Parameter) -> st.SearchStrategy:
    kind = param.type
    if getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None):
        return st.booleans()
    if getattr(param, "secondary_opts", None):
        return st.booleans()
    if isinstance(kind, click.IntRange) or kind is click.INT:
        return _ints(kind if isinstance(kind, click.IntRange) else click.IntRange())
    if isinstance(kind, FiniteFloat) or isinstance(kind, click.types.FloatParamType):
        return st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True).map(repr))
    if isinstance(kind, click.Choice):
        return st.sampled_from([*kind.choices, "", "ALL", "x"])
    if param.name in ("out", "output", "out_dir"):
        return st.sampled_from(OUTPUTS)
    if isinstance(kind, click.Path):
        return st.sampled_from(PATHS)
    if param.name == "backend":
        return st.sampled_from(["hf", "nnsight", "transformer_lens", "", "nope"])
    if param.name == "remote":  # no network: no ndif and no URL
        return st.sampled_from(["off", "local", "", "x", "OFF"])
    if param.name == "device":
        return st.sampled_from(["cpu", "CPU", "cuda", "cuda:7", "tpu", "", "cuda:x"])
    return st.sampled_from(NAMES)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One of each artifact the commands read, built on the tiny model (a few seconds)."""
    from selfinterp_plugins.models import load_model

    root = tmp_path_factory.mktemp("cli-fuzz")
    found = {"model": save_tiny_model(root / "model"), "data": save_dataset(root / "data")}
    model, tok = load_model(found["model"])
    Explainer.create(model, tok, adapter="scalar_affine", template="echo").save_pretrained(root / "explainer")
    found["explainer"] = str(root / "explainer")
    (root / "corpus.txt").write_text("The cat sat on the mat. The dog ran in the park by the river.\n" * 20)
    found["corpus"] = str(root / "corpus.txt")
    (root / "labels.jsonl").write_text('{"feature": 0, "label": "cats"}\n{"feature": 1, "label": "dogs"}\n')
    found["labels"] = str(root / "labels.jsonl")
    if _runs(["dit", "make-diffs", "--model", found["model"], "--n-train", "2", "--n-test", "1", "--rank", "1",
              "--questions", "1", "--answer-tokens", "2", "--epochs", "1", "--out", str(root / "diffs")]):
        found["diffs"] = str(root / "diffs")
        found["diff"] = str(next((root / "diffs" / "diffs").iterdir()))
        if _runs(["dit", "train", found["diffs"], "--model", found["model"], "--rank", "1", "--epochs", "1",
                  "--out", str(root / "dit")]):
            found["dit"] = str(root / "dit")
    try:
        from sae_fixtures import random_sae

        random_sae(d_in=64, d_sae=4, hook="blocks.1.hook_resid_post").save_model(root / "sae")
        found["sae"] = str(root / "sae")
    except ImportError:
        pass
    return root, {k: found.get(k, str(root / f"no-{k}")) for k in ARTIFACTS}


def _runs(argv) -> bool:
    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code in (0, None)
    return True


@pytest.fixture(autouse=True)
def _tiny_for_bundled_models(monkeypatch, artifacts):
    """The bundled models' names load the tiny model: no example may spend seconds on a real one."""
    import selfinterp_plugins.models as models
    from selfinterp_plugins.models import loading

    real_load = models.load_model
    bundled = {"smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct", "gemma-3-270m", "google/gemma-3-270m"}

    def load_model(name_or_path, *args, **kwargs):
        if isinstance(name_or_path, str) and name_or_path.strip().lower() in bundled:
            name_or_path = artifacts[1]["model"]
        return real_load(name_or_path, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setattr(loading, "load_model", load_model)


_counter = itertools.count()


def _hostile_files(root: Path) -> dict[str, str]:
    """A fresh folder of hostile paths per example (a command may write into what it is given)."""
    here = root / f"ex{next(_counter)}"
    here.mkdir()
    (here / "empty").mkdir()
    (here / "junk").write_bytes(bytes(range(256)) * 4)
    (here / "wrong.json").write_text('{"not": "this kind"}')
    (here / "link").symlink_to(here / "junk")
    (here / "dangling").symlink_to(here / "nowhere")
    return {"{junk}": str(here / "junk"), "{link}": str(here / "link"), "{dangling}": str(here / "dangling"),
            "{empty}": str(here / "empty"), "{missing}": str(here / "missing"), "{wrong_json}": str(here / "wrong.json"),
            "{new}": str(here / "new")}


def _fill(value, places: dict[str, str]):
    if not isinstance(value, str):
        return value
    for key, path in places.items():
        value = value.replace(key, path)
    return value


def argv_for(path: tuple[str, ...], command: click.Command, values: dict) -> list[str]:
    """The command line giving each parameter its value (a flag: present when True)."""
    positional, options = [], []
    for param in command.params:
        if param.name not in values:
            continue
        value = values[param.name]
        if isinstance(param, click.Argument):
            positional.append(value)
        elif getattr(param, "secondary_opts", None):
            options.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "is_flag", False):
            options += [param.opts[0]] if value else []
        else:
            options += [param.opts[0], value]
    return [*path, *options, "--", *positional] if positional else [*path, *options]


def check_contract(argv, code, out: str, err: str) -> None:
    shown = f"selfinterp {argv!r} -> exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert code in (0, None, 2), shown
    assert "Traceback" not in out + err, shown
    if code == 2:
        lines = err.strip().splitlines()
        assert [line for line in lines if line.startswith("Error")] == lines[-1:], shown
        if any(line.startswith("Usage:") for line in lines):
            assert lines[-4].startswith("Usage:") and lines[-3].startswith("Try ") and lines[-2] == "", shown


def _parameters(command):
    return [p for p in command.params if p.name != "help" and not getattr(p, "is_eager", False)]


@pytest.mark.parametrize("name", sorted(" ".join(p) for p in COMMANDS))
def test_any_input_to_any_command_is_a_result_or_one_line(capsys, artifacts, name):
    path = tuple(name.split())
    command = COMMANDS[path]
    params = _parameters(command)
    if not params:
        pytest.skip("no parameters")
    root, found = artifacts
    places = {f"{{{k}}}": v for k, v in found.items()}
    base = BASE.get(name)
    assert base is not None, f"add {name!r} to BASE: the arguments that make it cheap"

    @settings(FUZZ, max_examples=EXAMPLES_PER_COMMAND)
    @given(data=st.data())
    def run(data):
        chosen = data.draw(st.lists(st.sampled_from([p.name for p in params]), min_size=1, max_size=2, unique=True))
        values = dict(base)
        for param in params:
            if param.name in chosen:
                values[param.name] = data.draw(strategy(name, param), label=param.name)
                RAN["drawn"].add((name, param.name))
        where = {**_hostile_files(root), **places}
        argv = argv_for(path, command, {k: _fill(v, where) for k, v in values.items()})
        code = 0
        try:
            main(argv)
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        check_contract(argv, code, captured.out, captured.err)
        RAN["examples"] += 1
        RAN["exit 2" if code == 2 else "exit 0"] += 1

    run()


def test_the_fuzz_reached_every_command():
    """Runs last in this file: prints what was covered (`-s`); every command was driven. With
    EXAMPLES_PER_COMMAND examples a command of many parameters has some not drawn in CI's budget:
    raise it locally (SELFINTERP_CLI_FUZZ_EXAMPLES) to draw them all."""
    every = {(" ".join(path), p.name) for path, command in COMMANDS.items() for p in _parameters(command)}
    print(f"\nCLI fuzz: {len(COMMANDS)} commands, {len(RAN['drawn'])} of {len(every)} parameters drawn, "
          f"{RAN['examples']} examples ({RAN['exit 0']} exit 0, {RAN['exit 2']} exit 2)")
    if RAN["examples"] == 0:
        pytest.skip("the fuzz tests did not run in this session")
    assert {command for command, _param in RAN["drawn"]} == {" ".join(p) for p, c in COMMANDS.items() if _parameters(c)}
