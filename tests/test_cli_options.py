"""Names and paths of every `selfinterp` command (issue 25 §3): "" or whitespace given to any
option or argument that takes a path or a name is click's usage error naming it (exit 2, nothing
run). `explain ""` read the current directory as the explainer (`Path("")` is "."), `--split ""`
labelled every split, `--output ""` failed only after the model loaded.

The walk over the real command tree (core and plugin commands) also fails for a string or path
parameter added without `TEXT` / `NonBlankPath`."""

from __future__ import annotations

import click
import pytest

from selfinterp_plugins import Explainer
from selfinterp_plugins.cli import _load_plugin_commands, cli
from selfinterp_plugins.cli_options import NonBlankPath, Text
from selfinterp_plugins.errors import ArtifactError

from cli_models import save_dataset, save_tiny_model
from plugin_fakes import run_cli

BLANKS = ("", " \t")


def _commands(group=None, path=()):
    group = group or cli
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _named_parameters():
    _load_plugin_commands()
    return [(path, command, param) for path, command in _commands() for param in command.params
            if isinstance(param.type, (click.Path, Text)) or param.type is click.STRING]


def _filler(param, directory) -> str:
    """A value click accepts for a required parameter other than the one under test."""
    if isinstance(param.type, click.Choice):
        return param.type.choices[0]
    if isinstance(param.type, click.IntRange):
        return str(param.type.min or 0)
    if isinstance(param.type, click.Path) and not param.type.dir_okay:
        (directory / "file").write_text("{}")
        return str(directory / "file")
    return str(directory)


def _argv(path, command, target, value, directory) -> list[str]:
    """`path` with every required parameter filled and `target` given `value`, first (click checks
    parameters in the order they are given)."""
    target_option, positional, options = [], [], []
    for param in command.params:
        if isinstance(param, click.Argument):
            positional.append(value if param is target else _filler(param, directory))
        elif param is target:
            target_option = [param.opts[0], value]
        elif param.required:
            options += [param.opts[0], _filler(param, directory)]
    return [*path, *target_option, *positional, *options]


def test_every_name_or_path_parameter_is_checked_for_blanks():
    unchecked = [f"{' '.join(path)} {param.name}" for path, _command, param in _named_parameters()
                 if not isinstance(param.type, (NonBlankPath, Text))]
    assert unchecked == []


# what each value is called in click's message; a NUL and a lone surrogate reached os.stat and
# click.Path's own encoding as ValueError / UnicodeEncodeError tracebacks (found by test_fuzz_cli)
UNUSABLE = {"": "empty", " \t": "empty", "a\x00b": "NUL", "\ud800": "lone surrogate"}


@pytest.mark.parametrize("value", sorted(UNUSABLE), ids=["empty", "whitespace", "nul", "surrogate"])
def test_a_blank_name_or_path_is_a_usage_error_naming_it(capsys, tmp_path, value):
    checked = 0
    for path, command, param in _named_parameters():
        code, out, err = run_cli(capsys, *_argv(path, command, param, value, tmp_path))
        shown = param.human_readable_name if isinstance(param, click.Argument) else param.opts[0]
        assert code == 2, (path, param.name, code, err)
        assert f"Invalid value for '{shown}" in err and UNUSABLE[value] in err, (path, param.name, err)
        assert "Traceback" not in out + err
        checked += 1
    assert checked > 100  # the core's and the plugins' commands were all walked


def test_a_file_name_past_255_bytes_is_a_usage_error(capsys, tmp_path):
    """`dit ask` on a 5,000-character name was OSError (File name too long) from is_dir() (found by
    test_fuzz_cli); every path parameter refuses such a name before the command runs."""
    code, _out, err = run_cli(capsys, "dit", "ask", "x" * 5000, "--no-dit")
    assert code == 2 and "longer than 255 bytes" in err.strip().splitlines()[-1], err
    assert NonBlankPath().convert(str(tmp_path / ("x" * 255)), None, None).endswith("x" * 255)


@pytest.mark.parametrize("command", [["train", "."], ["dit", "make-diffs"], ["dit", "train", "."],
                                     ["lora-explainer", "train", "--task", "input_ablation", "--data", "."],
                                     ["sae", "train-sae"]])
def test_a_learning_rate_past_10_is_a_usage_error(capsys, tmp_path, monkeypatch, command):
    """`sae train-sae --lr 1.5e41` was torch's RuntimeError (float overflow) inside SAE-Lens's
    trainer (found by test_fuzz_cli); every --lr is at most 10, refused before anything runs."""
    monkeypatch.setattr("selfinterp_plugins.models.load_model", _no_weights)
    code, _out, err = run_cli(capsys, *command, "--lr", "1.5e41", "--out", str(tmp_path / "out"))
    assert code == 2 and "Invalid value for '--lr'" in err and "<= 10" in err, err
    assert not (tmp_path / "out").exists()


def test_a_shell_argument_of_non_utf8_bytes_is_still_a_path():
    """Python hands a non-UTF-8 byte of argv over as \\udcXX, which encodes back: such a file name
    is a real one and must be taken."""
    assert NonBlankPath().convert("caf\udce9", None, None) == "caf\udce9"
    assert Text().convert("caf\udce9", None, None) == "caf\udce9"


@pytest.fixture()
def saved_explainer(tiny_llama, tmp_path):
    model, tok = tiny_llama
    Explainer.create(model, tok, adapter="scalar_affine", template="echo").save_pretrained(tmp_path / "explainer")
    return tmp_path / "explainer"


@pytest.mark.parametrize("name", BLANKS, ids=["empty", "whitespace"])
def test_a_blank_explainer_name_is_refused_even_inside_an_explainer(saved_explainer, monkeypatch, name):
    """From Python too: in a directory that is itself an explainer, `check_pretrained("")` loaded it."""
    monkeypatch.chdir(saved_explainer)
    with pytest.raises(ArtifactError, match="name or directory is empty"):
        Explainer.check_pretrained(name)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))  # 2 layers: 0 and 1


def _no_weights(*_args, **_kwargs):
    raise AssertionError("the model loaded before the layer was checked")


# each command given a layer (or a site's layer) the 2-layer model lacks; {m} model, {d} dataset,
# {o} an output path, {c} a report config
PAST_LAST_LAYER = {
    "vectors topics --layer": ["vectors", "topics", "--model", "{m}", "--layer", "1", "--layer", "2", "--limit", "2",
                               "--out", "{o}"],
    "report --layer": ["report", "--model", "{m}", "--layer", "2", "--no-explainer", "--out", "{o}"],
    "report sweep_layers": ["report", "--model", "{m}", "--config", "{c}", "--no-explainer", "--out", "{o}"],
    "oracle ask --layer": ["oracle", "ask", "{d}", "--vectors", "{d}", "--layer", "2", "--question", "what?", "--model",
                           "{m}", "--output", "{o}"],
    "train --site": ["train", "{d}", "--model", "{m}", "--site", "resid_post.2", "--out", "{o}"],
    "sae train-sae --site": ["sae", "train-sae", "--model", "{m}", "--site", "resid_pre.7", "--out", "{o}"],
}


@pytest.mark.parametrize("case", sorted(PAST_LAST_LAYER))
def test_a_layer_past_the_models_last_is_refused_before_it_loads(capsys, tmp_path, monkeypatch, saved_model, case):
    if case.startswith(("oracle", "sae")):
        pytest.importorskip("peft" if case.startswith("oracle") else "sae_lens")
    monkeypatch.setattr("selfinterp_plugins.models.load_model", _no_weights)
    (tmp_path / "report.json").write_text('{"sweep_layers": [0, 5]}')
    values = {"{m}": saved_model, "{d}": save_dataset(tmp_path / "data"), "{o}": str(tmp_path / "out"),
              "{c}": str(tmp_path / "report.json")}
    code, out, err = run_cli(capsys, *[values.get(a, a) for a in PAST_LAST_LAYER[case]])
    assert code == 2, (code, out, err)
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "past the model's last" in err and "(1: it has 2)" in err, err
    assert not (tmp_path / "out").exists()
