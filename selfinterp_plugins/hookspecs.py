"""The plugin contract. One docstring per hook: this file is the plugin author's manual.

Plugins are modules (or objects) with functions decorated by `selfinterp_plugins.hookimpl`
and registered through the `selfinterp` entry-point group:

    [project.entry-points.selfinterp]
    my_plugin = "my_package.plugin"

Registration is by callback, as in `llm`: the host calls `register_x(register)` and the
plugin calls `register(name, thing)` once per thing it provides (one form for every kind; an
adapter class and a baseline name themselves, so `register(adapter_class)` / `register(baseline)`,
the form of earlier versions, still works, and a name that differs from the object's own `kind` /
`name` is refused and reported). The host calls the `register_*` hooks
(and `register_commands`) of the built-in plugins first, then of the others in the order the
plugins were registered; tryfirst and trylast do not change this. So a name keeps its first
owner: registering it again is refused and reported against the later plugin by
`selfinterp plugins`.

Every hook is called for one plugin at a time: an exception raised in it (anything except
KeyboardInterrupt) is reported against that plugin and skips it for that hook; what a `register_*`
hook registered before raising is kept (`register_commands`: see there). Hook wrappers are not
called.
"""

import pluggy

# public: the marker every plugin's hooks are decorated with (also `selfinterp_plugins.hookimpl`)
__all__ = ["hookimpl"]

hookspec = pluggy.HookspecMarker("selfinterp")
hookimpl = pluggy.HookimplMarker("selfinterp")


@hookspec
def register_backends(register):
    """Provide backends: call `register(name, factory)` where `factory(model, tokenizer=None,
    **options)` returns a `selfinterp_plugins.Backend` running that model object.

    A factory handed a model object it cannot run raises `selfinterp_plugins.UnsupportedModelError`
    saying what it takes (a `BackendError`: the CLI prints it as one line and exits 2). It must check
    at once, not leave it to the first attribute it reads: `selfinterp train ... --backend NAME` hands
    every backend the transformers model and tokenizer `load_model` loads, and `backend=NAME` in
    Python hands it whatever the caller has."""


@hookspec(firstresult=True)
def backend_for_model(model, options):
    """Return the name of a registered backend that can run `model` (any object: a transformers
    model, an nnsight TransformersModel, a HookedTransformer ...), or None if this plugin does not
    recognise it. `options` is the dict of backend options the user passed. Plugins are asked in
    pluggy's order (tryfirst first, then the last registered first, the built-in `hf` last) and
    the first answer that is not None wins; a plugin that raises is reported and the next one asked."""


@hookspec
def register_adapters(register):
    """Provide adapter kinds: call `register(kind, adapter_class)` with a subclass of
    `selfinterp_plugins.Adapter` whose `kind` attribute is that name (e.g. "scalar_affine"), whose
    `math(params, x, scale)` staticmethod is its whole computation (every backend calls it, nnsight
    inside its remote request), with an optional `config_class` (a subclass of `AdapterConfig`
    holding the kind's options) and an optional `ridge_init`. docs/plugins.md has an example."""


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
    """Provide untrained explainers to compare against: call `register(name, baseline)` with a
    `selfinterp_plugins.evaluation.baselines.Baseline` (prompt, site, adapter kind, scale and layer grid);
    `selfinterp report` and the sensitivity sweep pick them up by `baseline.name`, which `name` must equal."""


@hookspec
def register_tasks(register):
    """Provide training tasks: call `register(name, task)` for task families beyond
    vector→label (diff interpretation, activation patching, input ablation)."""


@hookspec
def register_explainers(register):
    """Provide trained explainers shipped with the plugin, by name: call `register(name, directory)`
    with a directory `Explainer.from_pretrained` loads (e.g. one inside the plugin's package data,
    found with `importlib.resources`). The name then works wherever an explainer is named:
    `Explainer.from_pretrained(name)` and every command; a directory that exists under the same
    name wins, as a local folder wins over a hub id in transformers."""


@hookspec
def register_explainer_formats(register):
    """Provide loaders for explainers published in another library's format (an Activation
    Oracle's PEFT LoRA directory): call `register(name, recognise, load)`. `recognise(source,
    options) -> bool` says, from its files and the keyword options given to `from_pretrained`
    (a dict) only, whether `source` (a path or a hub id that is not an explainer folder) is one;
    `load(source, model, tokenizer=None, check_model=True, backend_options=None, **options) ->
    Explainer` builds it. `Explainer.from_pretrained` asks every format for such a
    source (`format=name` picks one), passing on the keyword options it does not know itself."""


@hookspec
def register_commands(cli):
    """Add subcommands to the `selfinterp` click group `cli` (use `@cli.command()` / `@cli.group()`).

    A command named like a built-in one (`explain`, `train`, `plugins` ...) or like one an earlier
    plugin added is refused (the first one stays) and reported; if this hook raises, none of the
    commands it added are kept."""
