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
