"""Plugins cannot break the host: a plugin that raises (at import, in a hook, in
`register_commands`) or that claims a name the host or an earlier plugin owns is reported against
that plugin and skipped; the built-ins, the other plugins and every command keep working.

Each test installs throwaway plugins, through faked entry points or directly on `plugins.pm`.
"""

from __future__ import annotations

import json
import sys
import types

import click
import pytest

from selfinterp_plugins import plugins
from selfinterp_plugins.adapters import Adapter, ScalarAffine
from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.cli import BUILTIN_COMMANDS
from selfinterp_plugins.cli import cli as selfinterp_cli  # plugin hooks call theirs `cli`
from selfinterp_plugins.errors import BackendError

from plugin_fakes import FakeEntryPoint, install_entry_points, module, run_cli

MARKS = [{}, {"tryfirst": True}, {"trylast": True}]
MARK_IDS = ["plain", "tryfirst", "trylast"]


@pytest.fixture(autouse=True)
def builtin_commands(hermetic_plugins):
    """The CLI back to its built-in commands after a test whose plugins added some."""
    yield
    selfinterp_cli.commands.clear()
    selfinterp_cli.commands.update(BUILTIN_COMMANDS)


def entry_point(name, **hooks):
    return FakeEntryPoint(name, lambda: module(name, **hooks))


def good_scorers(register):
    register("good", lambda *a, **k: {})


def errors_of(plugin):
    return [e["error"] for e in plugins.plugin_errors() if e["plugin"] == plugin]


# ---- an exception of any kind at import ----------------------------------------------------


class PluginBaseException(BaseException):
    pass


@pytest.mark.parametrize("exc", [SystemExit(3), SystemExit("bye"), GeneratorExit(), PluginBaseException("odd"),
                                 RuntimeError("plain")], ids=["exit-code", "exit-message", "generator-exit",
                                                              "base-exception", "exception"])
def test_any_exception_at_import_is_reported_and_skipped(monkeypatch, capsys, exc):
    def load():
        raise exc

    install_entry_points(monkeypatch, FakeEntryPoint("exits", load), entry_point("good", register_scorers=good_scorers))
    errors = plugins.plugin_errors()
    assert [e["plugin"] for e in errors] == ["exits"]
    assert errors[0]["error"].startswith(f"{type(exc).__name__}:") and "Traceback" in errors[0]["traceback"]
    assert "good" in plugins.registry().scorers and "hf" in plugins.registry().backends
    plugins.reset()
    code, out, _ = run_cli(capsys, "plugins", "--json")  # and the CLI process survives it
    assert code == 0
    assert [e["plugin"] for e in json.loads(out)["errors"]] == ["exits"]


def test_keyboard_interrupt_at_import_still_stops_the_host(monkeypatch):
    def load():
        raise KeyboardInterrupt

    install_entry_points(monkeypatch, FakeEntryPoint("interrupted", load))
    with pytest.raises(KeyboardInterrupt):
        plugins.registry()


# ---- backend_for_model that raises ---------------------------------------------------------


def _raise_in_lookup(model, options):
    raise RuntimeError("lookup is broken")


def test_backend_for_model_that_raises_is_reported_and_skipped(tiny_llama, monkeypatch, capsys):
    install_entry_points(monkeypatch, entry_point("crashy", backend_for_model=(_raise_in_lookup, {"tryfirst": True})))
    model, tok = tiny_llama
    assert isinstance(plugins.backend_for(model, tok), HFBackend)  # the next plugin (hf) answered
    assert isinstance(plugins.backend_for(model, tok), HFBackend)
    assert errors_of("crashy") == ["backend_for_model failed: RuntimeError: lookup is broken"]  # once, not per call
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and "crashy: backend_for_model failed: RuntimeError: lookup is broken" in out


def _factory(name):
    return lambda model, tokenizer=None, **options: (name, model)


def _answers(name):
    return lambda model, options: name


def _backend_plugin(plugin_name, answer, marks=None):
    """A plugin that registers backend `plugin_name` and answers `answer` (a value or a function)."""
    lookup = answer if callable(answer) else _answers(answer)
    return entry_point(plugin_name, register_backends=lambda register: register(plugin_name, _factory(plugin_name)),
                       backend_for_model=(lookup, marks or {}))


@pytest.mark.parametrize("marks", [({}, {}, {}), ({"tryfirst": True}, {}, {}), ({}, {"trylast": True}, {}),
                                   ({}, {}, {"tryfirst": True})], ids=["plain", "a-first", "b-last", "none-first"])
def test_backend_lookup_follows_pluggys_order_and_first_non_none_wins(monkeypatch, marks):
    """With no plugin raising, the answer is the one a single pluggy call gives."""
    install_entry_points(monkeypatch, _backend_plugin("a", "a", marks[0]), _backend_plugin("b", "b", marks[1]),
                         _backend_plugin("silent", None, marks[2]))
    model = object()
    plugins.registry()
    expected = plugins.pm.hook.backend_for_model(model=model, options={})
    assert plugins.backend_for(model) == (expected, model)
    assert plugins.plugin_errors() == []


def test_a_raising_plugin_does_not_hide_the_next_answer(monkeypatch):
    install_entry_points(monkeypatch, _backend_plugin("a", "a"), _backend_plugin("b", _raise_in_lookup))
    model = object()
    assert plugins.backend_for(model) == ("a", model)  # b is asked first (registered last), raises, a answers
    assert errors_of("b") == ["backend_for_model failed: RuntimeError: lookup is broken"]


def test_when_every_plugin_fails_the_backend_error_stays(monkeypatch):
    install_entry_points(monkeypatch, _backend_plugin("a", _raise_in_lookup), _backend_plugin("b", None))
    with pytest.raises(BackendError, match="No installed backend can run a object; pass a transformers causal LM"):
        plugins.backend_for(object())
    assert errors_of("a") == ["backend_for_model failed: RuntimeError: lookup is broken"]


# ---- names a built-in (or an earlier plugin) already uses ----------------------------------


class ClashingScalarAffine(Adapter):
    kind = "scalar_affine"


def _clashing_hooks(marks):
    """One hook per kind, each registering a name the built-ins use (`builtin_task`: see below)."""
    def hook(*values):
        return lambda register: register(*values), marks

    return {"register_adapters": hook(ClashingScalarAffine),
            "register_backends": hook("hf", _factory("impostor")),
            "register_vector_sources": hook("topics", lambda **o: None),
            "register_scorers": hook("exact_match", lambda *a, **k: {}),
            "register_tasks": hook("builtin_task", "impostor task"),
            "register_baselines": hook(types.SimpleNamespace(name="selfie"))}


@pytest.fixture
def builtin_task(monkeypatch):
    """The built-ins register no task; a fake extra built-in does, so tasks are covered too."""
    fake = module("fake_builtins.tasks", register_tasks=lambda register: register("builtin_task", "the built-in task"))
    monkeypatch.setitem(sys.modules, "fake_builtins.tasks", fake)
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("fake_builtins.tasks",))


@pytest.mark.parametrize("route", ["entry_point", "registered_first"])
@pytest.mark.parametrize("marks", MARKS, ids=MARK_IDS)
def test_a_plugin_never_takes_a_builtin_name(monkeypatch, builtin_task, marks, route):
    clasher = module("clasher", **_clashing_hooks(marks))
    if route == "entry_point":
        install_entry_points(monkeypatch, FakeEntryPoint("clasher", lambda: clasher))
    else:  # on the manager before the built-ins load: registered earlier than they are
        plugins.pm.register(clasher, name="clasher")
    reg = plugins.registry()
    assert reg.adapters["scalar_affine"] == ("adapters", ScalarAffine)
    assert reg.backends["hf"][0] == "hf_backend"
    assert reg.vector_sources["topics"][0] == "topics"
    assert reg.scorers["exact_match"][0] == "scorers"
    assert reg.tasks["builtin_task"] == ("tasks", "the built-in task")
    assert reg.baselines["selfie"][0] == "baselines"
    errors = plugins.plugin_errors()
    assert len(errors) == 6 and {e["plugin"] for e in errors} == {"clasher"}
    for name, owner in [("scalar_affine", "adapters"), ("hf", "hf_backend"), ("topics", "topics"),
                        ("exact_match", "scorers"), ("builtin_task", "tasks"), ("selfie", "baselines")]:
        assert any(f"{name!r} is already registered by {owner}" in e["error"] for e in errors), name


class Extra(ScalarAffine):
    kind = "extra_kind"


class OtherExtra(ScalarAffine):
    kind = "extra_kind"


@pytest.mark.parametrize("marks", [({}, {}), ({"trylast": True}, {"tryfirst": True}),
                                   ({"tryfirst": True}, {"trylast": True})], ids=["plain", "first-trylast",
                                                                                  "first-tryfirst"])
def test_between_two_plugins_the_first_registered_keeps_the_name(monkeypatch, marks):
    def hooks(cls, scorer, mark):
        return {"register_adapters": (lambda register: register(cls), mark),
                "register_scorers": (lambda register: register("shared", scorer), mark)}

    first_scorer, second_scorer = (lambda *a, **k: {"first": 1}), (lambda *a, **k: {"second": 1})
    install_entry_points(monkeypatch, entry_point("first", **hooks(Extra, first_scorer, marks[0])),
                         entry_point("second", **hooks(OtherExtra, second_scorer, marks[1])))
    assert plugins.get_adapter_classes()["extra_kind"] is Extra
    assert plugins.get_scorer("shared") is first_scorer
    assert errors_of("first") == []
    assert len(errors_of("second")) == 2
    assert all("already registered by first" in e for e in errors_of("second"))


# ---- register_commands that raises ---------------------------------------------------------


def _hello_command(cli):
    @cli.command()
    def hello():
        """A plugin's command."""
        click.echo("hello from a plugin")


@pytest.mark.parametrize("exc", [RuntimeError("commands are broken"), SystemExit(1)], ids=["exception", "exit"])
def test_register_commands_that_raises_is_reported_and_the_cli_still_works(monkeypatch, capsys, tmp_path, exc):
    def broken_commands(cli):
        @cli.command()
        def half():
            """Added before the plugin raised: undone with the rest of it."""

        raise exc

    install_entry_points(monkeypatch, entry_point("broken", register_commands=broken_commands),
                         entry_point("good", register_commands=_hello_command))
    code, out, _ = run_cli(capsys, "hello")
    assert (code, out) == (0, "hello from a plugin\n")
    assert errors_of("broken") == [f"register_commands failed: {type(exc).__name__}: {exc}"]
    assert "half" not in selfinterp_cli.commands and set(BUILTIN_COMMANDS) <= set(selfinterp_cli.commands)
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0 and [e["plugin"] for e in json.loads(out)["errors"]] == ["broken"]
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0 and f"  broken: register_commands failed: {type(exc).__name__}: {exc}\n" in out
    code, _, err = run_cli(capsys, "explain", "/nonexistent", "--vectors", "/nonexistent", "--output",
                           str(tmp_path / "x.jsonl"))
    assert code == 2 and "No explainer directory at /nonexistent" in err  # the built-in explain ran (it checks the explainer first)


# ---- commands named like a built-in (or an earlier plugin's) -------------------------------


def _clashing_commands(cli):
    @cli.command("explain")
    def fake_explain():
        click.echo("the plugin's explain")

    @cli.group("plugins")
    def fake_plugins():
        """A group under a built-in's name."""

    del cli.commands["train"]

    @cli.command()
    def fine():
        click.echo("fine")


@pytest.mark.parametrize("marks", MARKS, ids=MARK_IDS)
def test_a_plugin_command_never_replaces_a_builtin(monkeypatch, capsys, tmp_path, marks):
    install_entry_points(monkeypatch, entry_point("clash", register_commands=(_clashing_commands, marks)))
    code, out, _ = run_cli(capsys, "fine")
    assert (code, out) == (0, "fine\n")  # its other command is kept
    for name in ("explain", "plugins", "train"):
        assert selfinterp_cli.commands[name] is BUILTIN_COMMANDS[name]
    errors = errors_of("clash")
    assert len(errors) == 3
    for name in ("explain", "plugins", "train"):
        assert f"command {name!r} belongs to selfinterp (built-in)" in " ".join(errors)
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0 and len(json.loads(out)["errors"]) == 3
    code, _, err = run_cli(capsys, "explain", "/nonexistent", "--vectors", "/nonexistent", "--output",
                           str(tmp_path / "x.jsonl"))
    assert code == 2 and "No explainer directory at /nonexistent" in err  # the built-in explain ran (it checks the explainer first)


def test_between_two_plugins_the_first_keeps_a_command(monkeypatch, capsys):
    def other_hello(cli):
        @cli.command("hello")
        def hello():
            click.echo("the second plugin's hello")

    install_entry_points(monkeypatch, entry_point("first", register_commands=_hello_command),
                         entry_point("second", register_commands=(other_hello, {"tryfirst": True})))
    code, out, _ = run_cli(capsys, "hello")
    assert (code, out) == (0, "hello from a plugin\n")
    assert errors_of("second") == ["register_commands: command 'hello' belongs to first; kept that one"]


def test_running_the_cli_again_reports_nothing_new(monkeypatch, capsys):
    """Each run registers the plugins' commands afresh; a plugin's own command from the previous
    run is not a clash, and a plugin no longer loaded leaves no command behind."""
    install_entry_points(monkeypatch, entry_point("good", register_commands=_hello_command))
    assert run_cli(capsys, "hello")[:2] == (0, "hello from a plugin\n")
    assert run_cli(capsys, "hello")[:2] == (0, "hello from a plugin\n")
    assert plugins.plugin_errors() == []
    install_entry_points(monkeypatch)
    plugins.reset()
    code, _, err = run_cli(capsys, "hello")
    assert code == 2 and "No such command" in err
