"""Throwaway plugins for the plugin-manager tests: fake entry points, plugin modules built from
functions, and an in-process `selfinterp` run."""

from __future__ import annotations

import importlib.metadata
import types

from selfinterp_plugins import plugins
from selfinterp_plugins.cli import main
from selfinterp_plugins.hookspecs import hookimpl


class FakeEntryPoint:
    def __init__(self, name, load):
        self.name = name
        self._load = load
        self.loaded = 0

    def load(self):
        self.loaded += 1
        return self._load()


def install_entry_points(monkeypatch, *entry_points):
    """Make `importlib.metadata.entry_points` return exactly these for the `selfinterp` group (the
    real ones are hidden); other groups (pydantic asks for its own on first use) get the real ones."""
    real = importlib.metadata.entry_points

    def fake(group=None, **kwargs):
        if group != plugins.ENTRY_POINT_GROUP:
            return real(group=group, **kwargs)
        return list(entry_points)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def module(name, **functions):
    """A plugin module: every function becomes a hookimpl, except names starting with `_`.
    A (function, {"tryfirst": True}) pair is marked with those hookimpl options."""
    mod = types.ModuleType(name)
    for key, fn in functions.items():
        if key.startswith("_"):
            setattr(mod, key, fn)
            continue
        fn, options = fn if isinstance(fn, tuple) else (fn, {})
        setattr(mod, key, hookimpl(**options)(fn))
    return mod


def run_cli(capsys, *argv):
    """Run the `selfinterp` entry point in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err
