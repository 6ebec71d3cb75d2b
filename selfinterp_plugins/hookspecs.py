"""The plugin contract. One docstring per hook: this file is the plugin author's manual.

Plugins are modules (or objects) with functions decorated by `selfinterp_plugins.hookimpl`
and registered through the `selfinterp` entry-point group:

    [project.entry-points.selfinterp]
    my_plugin = "my_package.plugin"

Registration is by callback, as in `llm`: the host calls `register_x(register)` and the
plugin calls `register(...)` once per thing it provides. A name registered twice is reported
by `selfinterp plugins`; the first registration wins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("selfinterp")
hookimpl = pluggy.HookimplMarker("selfinterp")


@hookspec
def register_backends(register):
    """Provide backends: call `register(name, factory)` where `factory(model, tokenizer=None,
    **options)` returns a `selfinterp_plugins.Backend` running that model object."""


@hookspec(firstresult=True)
def backend_for_model(model, options):
    """Return the name of a registered backend that can run `model` (any object: a transformers
    model, an nnsight LanguageModel, a HookedTransformer ...), or None if this plugin does not
    recognise it. `options` is the dict of backend options the user passed. The first plugin
    to answer wins; third-party plugins are asked before the built-in `hf` backend."""


@hookspec
def register_adapters(register):
    """Provide adapter kinds: call `register(adapter_class)` with a subclass of
    `selfinterp_plugins.Adapter` whose `kind` attribute names it (e.g. "scalar_affine")."""


@hookspec
def register_vector_sources(register):
    """Provide vector sources: call `register(name, builder)` where `builder(**options)` returns
    a `VectorLabelDataset` (topic vectors, SAE decoder rows, captured activations, weight diffs)."""


@hookspec
def register_scorers(register):
    """Provide scorers: call `register(name, scorer)` where `scorer(records, dataset, **options)`
    takes explain records and the dataset they came from and returns a dict of metrics."""


@hookspec
def register_baselines(register):
    """Provide untrained explainers to compare against: call `register(baseline)` with a
    `selfinterp_plugins.baselines.Baseline` (prompt, site, adapter kind, scale and layer grid);
    `selfinterp report` and the sensitivity sweep pick them up by `baseline.name`."""


@hookspec
def register_tasks(register):
    """Provide training tasks: call `register(name, task)` for task families beyond
    vector→label (diff interpretation, activation patching, input ablation)."""


@hookspec
def register_commands(cli):
    """Add subcommands to the `selfinterp` click group `cli` (use `@cli.command()` / `@cli.group()`)."""
