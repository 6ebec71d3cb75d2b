"""Plugins cannot break the host: a plugin that raises (at import, in a hook, in
`register_commands`) or that claims a name the host or an earlier plugin owns is reported against
that plugin and skipped; the built-ins, the other plugins and every command keep working.

Each test installs throwaway plugins, through faked entry points or directly on `plugins.pm`.
"""

from __future__ import annotations

import json

import pytest
from plugin_fakes import FakeEntryPoint, install_entry_points, module, run_cli

from selfinterp_plugins import plugins
from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.errors import BackendError


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """No installed third-party plugins unless a test fakes some."""
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    install_entry_points(monkeypatch)
    plugins.reset()
    yield
    plugins.reset()


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
