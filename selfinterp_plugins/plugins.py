"""The plugin manager: loads built-in and third-party plugins, and holds what they register.

Built-in plugins (`default_plugins/`) and third-party ones go through the same hooks.
Third-party plugins come from the `selfinterp` entry-point group; `SELFINTERP_PLUGINS`
(comma-separated entry-point names, or empty for none) restricts which load.

A plugin's import and each of its hooks are called by the host one plugin at a time (never one
pluggy call over all plugins): whatever that code raises, except KeyboardInterrupt, is recorded
in `plugin_errors()` (shown by `selfinterp plugins`) and the plugin is skipped for that step; the
others, and the host, carry on. What a plugin registers (a backend factory, an adapter, a
command ...) runs later unguarded, like any library code the user chose to call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import BackendError, UnknownNameError

# public: the lookups of what plugins registered (a plugin's command runs a task it or another plugin
# registered: `get_task`), and `require`, an integration plugin's first line
__all__ = ["backend_for", "get_adapter_classes", "get_backend_factory", "get_scorer", "get_task", "get_vector_source",
           "list_plugins", "plugin_errors", "registry", "require", "reset"]

ENTRY_POINT_GROUP = "selfinterp"
DEFAULT_PLUGINS = (
    "selfinterp_plugins.default_plugins.hf_backend",
    "selfinterp_plugins.default_plugins.adapters",
    "selfinterp_plugins.default_plugins.topics",
    "selfinterp_plugins.default_plugins.scorers",
    "selfinterp_plugins.default_plugins.baselines",
    "selfinterp_plugins.default_plugins.formats",
)
FAILED = object()  # what `call_hook` returns when the plugin raised (None is a legitimate answer)


@dataclass
class Registry:
    """Everything the plugins registered, by kind and name, plus who registered it."""

    backends: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)
    vector_sources: dict = field(default_factory=dict)
    scorers: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    explainers: dict = field(default_factory=dict)
    explainer_formats: dict = field(default_factory=dict)


pm = pluggy.PluginManager("selfinterp")
pm.add_hookspecs(hookspecs)
_loaded = False
_registry: Registry | None = None
_errors: list[dict] = []


# ---- failures ------------------------------------------------------------------------------


def record_error(plugin: str, error: str, tb: str = "") -> None:
    """Remember that `plugin` failed, for `plugin_errors()` and `selfinterp plugins`. Recorded once:
    a hook that fails on every call (a backend lookup, the commands of each CLI run) is one failure."""
    if any(e["plugin"] == plugin and e["error"] == error for e in _errors):
        return
    _errors.append({"plugin": plugin, "error": error, "traceback": tb})


def _run_plugin_code(plugin: str, prefix: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, or FAILED after recording what it raised against `plugin`.

    BaseException, not Exception: a plugin calling `sys.exit()` at import or in a hook must not
    end the host. KeyboardInterrupt is the user's, so it still stops everything."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # a broken plugin must not break the host
        record_error(plugin, f"{prefix}{type(err).__name__}: {err}", traceback.format_exc())
        return FAILED


def _call_impl(impl, hook_kwargs: dict):
    """One hookimpl called as pluggy would: its declared arguments, picked from the hook's."""
    args = [hook_kwargs[name] for name in impl.argnames]
    kwargs = {name: hook_kwargs[name] for name in impl.kwargnames if name in hook_kwargs}
    return impl.function(*args, **kwargs)


def call_hook(hook_name: str, impl, **hook_kwargs):
    """Call one plugin's implementation of a hook; its result, or FAILED (recorded) if it raised."""
    return _run_plugin_code(impl.plugin_name, f"{hook_name} failed: ", _call_impl, impl, hook_kwargs)


# ---- the order plugins are called in -------------------------------------------------------


def _is_builtin(plugin) -> bool:
    return getattr(plugin, "__name__", None) in DEFAULT_PLUGINS


def is_builtin(name: str) -> bool:
    """Whether the loaded plugin called `name` is one of `DEFAULT_PLUGINS`."""
    return _is_builtin(pm.get_plugin(name))


def _plain_impls(hook_name: str) -> list:
    """The hook's implementations in pluggy's stored order, without hook wrappers: the host never
    makes a pluggy hook call, so there is nothing for a wrapper to wrap."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return [impl for impl in impls if not (impl.wrapper or impl.hookwrapper)]


def impls_in_registration_order(hook_name: str) -> list:
    """For hooks that claim names (register_*, register_commands): built-ins first, then the
    other plugins in the order they were registered, ignoring tryfirst/trylast, so a plugin can
    never take a name from a built-in, and between two plugins the first registered keeps it."""
    position = {name: i for i, (name, _plugin) in enumerate(pm.list_name_plugin())}
    return sorted(_plain_impls(hook_name), key=lambda impl: (not _is_builtin(impl.plugin), position[impl.plugin_name]))


def impls_in_call_order(hook_name: str) -> list:
    """The order a pluggy call would use (tryfirst first, then the last registered first,
    trylast last), for hooks where a plugin may legitimately choose to be asked first."""
    return list(reversed(_plain_impls(hook_name)))


# ---- loading -------------------------------------------------------------------------------


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
        _run_plugin_code(entry_point.name, "", _load_entry_point, entry_point)


def _load_entry_point(entry_point) -> None:
    pm.register(entry_point.load(), name=entry_point.name)


def require(module: str, extra: str) -> None:
    """For an integration plugin's first line: without its ecosystem installed, fail to load with
    the install command (reported by `selfinterp plugins`), without importing anything heavy.
    Integrations import their ecosystem only when a model of it is used."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed; pip install 'selfinterp-plugins[{extra}]'")


def _name_problem(name) -> str | None:
    """Why `name` cannot be registered, or None. A name is looked up as the word a user types, and
    every listing sorts the names: one that is not a non-empty string (3, None, a tuple) could never
    be asked for, and sorting it with the others broke `selfinterp plugins` and every lookup."""
    if not isinstance(name, str):
        return f"the name {name!r:.60} is of type {type(name).__name__}, not a string"
    if not name.strip():
        return f"the name {name!r} is empty"
    return None


def _collect(hook_name: str, store: dict, key_of) -> None:
    """Call each plugin's `hook_name(register)`; what it registers goes in `store` as (plugin, value).
    A name already in `store` stays with its first owner and the later plugin is reported. A
    registration that cannot be used (a name that is not a string, arguments `key_of` cannot read)
    is reported against the plugin and skipped; its other registrations still count."""
    for impl in impls_in_registration_order(hook_name):

        def register(*args, _plugin=impl.plugin_name):
            try:
                name, value = key_of(*args)
            except Exception as err:  # noqa: BLE001 - the plugin passed what this kind cannot hold
                what = repr(args[0])[:60] if args else "nothing"
                record_error(_plugin, f"{hook_name}: cannot register {what} ({type(err).__name__}: "
                                      f"{' '.join(str(err).split())}); not registered")
                return
            problem = _name_problem(name)
            if problem:
                record_error(_plugin, f"{hook_name}: {problem}; not registered (names are non-empty strings)")
                return
            if name in store:
                record_error(_plugin, f"{hook_name}: {name!r} is already registered by {store[name][0]}; kept that one")
                return
            store[name] = (_plugin, value)

        call_hook(hook_name, impl, register=register)


def _explainer_entry(name, directory):
    """(name, directory) of a shipped explainer; a name `explainer_location` could never resolve
    (a path, `.`, `..`, or the core's alias `shipped`) is refused like any unusable name."""
    if isinstance(name, str) and (any(sep in name for sep in "/\\") or name in (".", "..", "shipped")):
        raise ValueError(f"the explainer name {name!r} is a path or the reserved 'shipped', which never resolves to it")
    return name, Path(directory)


def _named_by(attribute: str):
    """The key of an adapter class (`kind`) or a baseline (`name`), which name themselves: taken as
    `register(name, obj)`, the form of every other kind, or `register(obj)`, the form of earlier
    versions (kept). A name that differs from the object's own is refused: the object's is the one
    saved files and reports use, so the two would name one thing twice."""

    def key(*args):
        if len(args) == 1:
            return getattr(args[0], attribute), args[0]
        name, obj = args
        own = getattr(obj, attribute)
        if name != own:
            raise ValueError(f"the name {name!r} differs from its {attribute} {own!r}; register it as {own!r}")
        return name, obj

    return key


def registry() -> Registry:
    """The registry, built once on first use (call `reset()` after changing plugins)."""
    global _registry
    if _registry is None:
        _load_plugins()
        reg = Registry()
        _collect("register_backends", reg.backends, lambda name, factory: (name, factory))
        _collect("register_adapters", reg.adapters, _named_by("kind"))
        _collect("register_vector_sources", reg.vector_sources, lambda name, fn: (name, fn))
        _collect("register_scorers", reg.scorers, lambda name, fn: (name, fn))
        _collect("register_tasks", reg.tasks, lambda name, task: (name, task))
        _collect("register_baselines", reg.baselines, _named_by("name"))
        _collect("register_explainers", reg.explainers, _explainer_entry)
        _collect("register_explainer_formats", reg.explainer_formats,
                 lambda name, recognise, load: (name, (recognise, load)))
        _registry = reg
    return _registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running session)."""
    global _loaded, _registry
    for name, _plugin in list(pm.list_name_plugin()):
        pm.unregister(name=name)
    _errors.clear()
    _loaded, _registry = False, None


def plugin_errors() -> list[dict]:
    """Every plugin failure so far: {"plugin", "error", "traceback"}, in the order they happened."""
    registry()
    return list(_errors)


def list_plugins() -> list[dict]:
    """Loaded plugins with the hooks each implements (what `selfinterp plugins` prints)."""
    registry()
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "hooks": hooks})
    return out


# ---- lookups -------------------------------------------------------------------------------


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


def _backend_name_for(model, options: dict):
    """The first non-None answer to `backend_for_model`, asking plugins one by one in pluggy's
    order (third-party before the trylast `hf`); one that raises is recorded and skipped, so a
    plugin's bug cannot hide the backends the others offer."""
    for impl in impls_in_call_order("backend_for_model"):
        name = call_hook("backend_for_model", impl, model=model, options=options)
        if name is not FAILED and name is not None:
            return name
    return None


def backend_for(model, tokenizer=None, backend: str | None = None, **options):
    """The backend that runs `model`: the one named, or the first plugin that recognises it.

    An existing Backend object is returned as is, so callers can share one across explainers.
    """
    from .backends.base import Backend

    if isinstance(model, Backend):
        return model
    registry()
    name = backend or _backend_name_for(model, options)
    if name is None:
        raise BackendError(
            f"No installed backend can run a {type(model).__name__}; pass a transformers causal LM, or install the "
            "plugin for your library (pip install 'selfinterp-plugins[nnsight]' or '[transformer-lens]')."
        )
    return get_backend_factory(name)(model, tokenizer=tokenizer, **options)
