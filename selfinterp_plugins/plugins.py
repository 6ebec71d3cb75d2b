"""The plugin manager: loads built-in and third-party plugins, and holds what they register.

Built-in plugins (`default_plugins/`) and third-party ones go through the same hooks.
Third-party plugins come from the `selfinterp` entry-point group; `SELFINTERP_PLUGINS`
(comma-separated entry-point names, or empty for none) restricts which load. A plugin that
fails to import or to register is recorded in `plugin_errors()` and shown by
`selfinterp plugins`; it never stops the others from loading.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .errors import BackendError, UnknownNameError

ENTRY_POINT_GROUP = "selfinterp"
DEFAULT_PLUGINS = (
    "selfinterp_plugins.default_plugins.hf_backend",
    "selfinterp_plugins.default_plugins.adapters",
    "selfinterp_plugins.default_plugins.topics",
    "selfinterp_plugins.default_plugins.scorers",
    "selfinterp_plugins.default_plugins.baselines",
)


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name, plus who registered it."""

    backends: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)
    vector_sources: dict = field(default_factory=dict)
    scorers: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


pm = pluggy.PluginManager("selfinterp")
pm.add_hookspecs(hookspecs)
_loaded = False
_registry: Registry | None = None
_load_errors: list[dict] = []


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name.rsplit(".", 1)[1])
    allowed = os.environ.get("SELFINTERP_PLUGINS")
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed_names is not None and entry_point.name not in allowed_names:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        try:
            pm.register(entry_point.load(), name=entry_point.name)
        except Exception as err:  # a broken plugin must not break the host
            _load_errors.append({"plugin": entry_point.name, "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc()})


def require(module: str, extra: str) -> None:
    """For an integration plugin's first line: without its ecosystem installed, fail to load with
    the install command (reported by `selfinterp plugins`), without importing anything heavy.
    Integrations import their ecosystem only when a model of it is used."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed; pip install 'selfinterp-plugins[{extra}]'")


def is_builtin(name: str) -> bool:
    """Whether the loaded plugin called `name` is one of `DEFAULT_PLUGINS` (marked so by `selfinterp plugins`)."""
    return getattr(pm.get_plugin(name), "__name__", None) in DEFAULT_PLUGINS


def _collect(hook_name: str, registry: Registry, store: dict, key_of) -> None:
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(*args, _plugin=plugin_name):
            name, value = key_of(*args)
            if name in store:
                registry.errors.append({"plugin": _plugin, "error": f"{hook_name}: {name!r} is already registered by {store[name][0]}"})
                return
            store[name] = (_plugin, value)

        try:
            impl.function(register)
        except Exception as err:
            registry.errors.append({"plugin": plugin_name, "error": f"{hook_name} failed: {type(err).__name__}: {err}"})


def registry() -> Registry:
    """The registry, built once on first use (call `reset()` after changing plugins)."""
    global _registry
    if _registry is None:
        _load_plugins()
        reg = Registry()
        _collect("register_backends", reg, reg.backends, lambda name, factory: (name, factory))
        _collect("register_adapters", reg, reg.adapters, lambda cls: (cls.kind, cls))
        _collect("register_vector_sources", reg, reg.vector_sources, lambda name, fn: (name, fn))
        _collect("register_scorers", reg, reg.scorers, lambda name, fn: (name, fn))
        _collect("register_tasks", reg, reg.tasks, lambda name, task: (name, task))
        _collect("register_baselines", reg, reg.baselines, lambda baseline: (baseline.name, baseline))
        _registry = reg
    return _registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running session)."""
    global _loaded, _registry
    for name, _plugin in list(pm.list_name_plugin()):
        pm.unregister(name=name)
    _load_errors.clear()
    _loaded, _registry = False, None


def plugin_errors() -> list[dict]:
    registry()
    return list(_load_errors) + list(_registry.errors)


def list_plugins() -> list[dict]:
    """Loaded plugins with the hooks each implements (what `selfinterp plugins` prints)."""
    registry()
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "hooks": hooks})
    return out


def _lookup(store: dict, kind: str, name: str):
    if name not in store:
        raise UnknownNameError(f"Unknown {kind} {name!r}; installed: {', '.join(sorted(store)) or 'none'}.")
    return store[name][1]


def get_adapter_classes() -> dict:
    return {name: cls for name, (_p, cls) in registry().adapters.items()}


def get_scorer(name: str):
    return _lookup(registry().scorers, "scorer", name)


def get_task(name: str):
    """A registered training task (e.g. "diff_interpretation", "activation_patching")."""
    return _lookup(registry().tasks, "task", name)


def get_vector_source(name: str):
    return _lookup(registry().vector_sources, "vector source", name)


def get_backend_factory(name: str):
    return _lookup(registry().backends, "backend", name)


def backend_for(model, tokenizer=None, backend: str | None = None, **options):
    """The backend that runs `model`: the one named, or the first plugin that recognises it.

    An existing Backend object is returned as is, so callers can share one across explainers.
    """
    from .backends.base import Backend

    if isinstance(model, Backend):
        return model
    registry()
    name = backend or pm.hook.backend_for_model(model=model, options=options)
    if name is None:
        raise BackendError(
            f"No installed backend can run a {type(model).__name__}; pass a transformers causal LM, or install the "
            "plugin for your library (pip install 'selfinterp-plugins[nnsight]' or '[transformer-lens]')."
        )
    return get_backend_factory(name)(model, tokenizer=tokenizer, **options)
