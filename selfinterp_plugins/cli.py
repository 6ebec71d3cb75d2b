"""The `selfinterp` command line (click, as `llm` does); plugins add subcommands.

User errors (`SelfInterpError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_options import (
    COUNT,
    LAYER,
    LEARNING_RATE,
    NONNEGATIVE,
    SAMPLES,
    SEED,
    TEXT,
    TOKENS,
    FiniteFloat,
    NonBlankPath,
    backend_options,
    check_backend_options,
    check_layer,
    check_site,
    load_backend,
    model_option,
)
from .errors import SelfInterpError
from .storage._locks import DirectoryLock
from .storage._paths import member


@click.group()
@click.version_option(package_name="selfinterp-plugins")
def cli():
    """Teach a frozen language model to read its own vectors aloud."""


KINDS = (("backends", "backends"), ("adapters", "adapter kinds"), ("vector_sources", "vector sources"),
         ("scorers", "scorers"), ("tasks", "tasks"), ("baselines", "baselines"),
         ("explainers", "shipped explainers"), ("explainer_formats", "explainer formats"))


def _plugins_report() -> dict:
    """What `selfinterp plugins --json` prints: plugins and their hooks, names per kind, failures
    (without tracebacks: one line per failure is what a user needs to act)."""
    from .plugins import list_plugins, plugin_errors, registry

    reg = registry()
    report = {"plugins": list_plugins()}
    report.update({key: sorted(getattr(reg, key)) for key, _title in KINDS})
    report["errors"] = [{k: v for k, v in e.items() if k != "traceback"} for e in plugin_errors()]
    return report


def _plugins_table(report: dict) -> str:
    """The same report for reading: one row per plugin with its hooks, one row per kind with the
    names registered, then one line per failure (plugin: error)."""
    from .plugins import is_builtin

    rows = [(p["name"] + (" (built-in)" if is_builtin(p["name"]) else ""), ", ".join(p["hooks"]) or "-")
            for p in report["plugins"]]
    width = max(len(name) for name, _hooks in rows)
    lines = ["Plugins and their hooks:"] + [f"  {name:<{width}}  {hooks}" for name, hooks in rows]
    width = max(len(title) for _key, title in KINDS)
    lines += ["", "Registered:"] + [f"  {title:<{width}}  {', '.join(report[key]) or '-'}" for key, title in KINDS]
    lines += ["", f"Failures ({len(report['errors'])}):"]
    lines += [f"  {e['plugin']}: {' '.join(e['error'].split())}" for e in report["errors"]] or ["  none"]
    return "\n".join(lines)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def plugins(as_json):
    """List loaded plugins, the hooks they implement, what they registered, and any that failed."""
    report = _plugins_report()
    click.echo(json.dumps(report, indent=2) if as_json else _plugins_table(report))


@cli.group()
def vectors():
    """Build vector-label datasets."""


@vectors.command("topics")
@model_option()
@backend_options
@click.option("--layer", "layers", type=LAYER, multiple=True, default=(10,), show_default=True, help="resid_post layer (repeatable)")
@click.option("--out", required=True, type=NonBlankPath(), help="output directory (one sub-directory per layer)")
@click.option("--limit", type=COUNT, default=None, help="only the first N topics (quick tries)")
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
def vectors_topics(model_name, backend, remote, dtype, device, layers, out, limit, batch_size):
    """Topic vectors of the shipped WordNet topic set (`Tell me about {title}.`, minus the mean)."""
    from .models import layer_count
    from .topics import load_topics, topic_vectors

    check_backend_options(backend, remote, dtype, device)
    for layer in layers:  # from the config, before the lock and the weights; again once loaded
        check_layer(layer, layer_count(model_name))
    with DirectoryLock(out):  # one writer: a second run into the same --out fails at once
        runner = load_backend(model_name, backend, remote, dtype, device)
        for layer in layers:
            check_layer(layer, runner.n_layers)
        topics = load_topics()[:limit] if limit else load_topics()
        for layer, data in topic_vectors(runner, topics, list(layers), batch_size).items():
            path = data.save(member(out, f"layer{layer}", what="layer folder"))
            click.echo(f"wrote {len(data)} vectors (resid_post.{layer}) to {path}")


@cli.command()
@click.argument("dataset", type=NonBlankPath())
@model_option()
@backend_options
@click.option("--adapter", type=TEXT, default="full_rank", show_default=True, help="adapter kind (see `selfinterp plugins`)")
@click.option("--template", default="echo", show_default=True, type=click.Choice(["chat", "tokenizer_chat", "echo", "patchscopes", "selfie"]),
              help="chat: the paper's prompt, no system turn; tokenizer_chat: built with the tokenizer's chat template")
@click.option("--site", type=TEXT, default="embed", show_default=True, help="embed, resid_pre.K or resid_post.K")
@click.option("--init", default=None, type=click.Choice(["paper", "ridge"]),
              help="ridge: a closed-form fit first; paper: the kind's own init. [default: ridge for a kind with a "
                   "ridge start (every built-in one but raw), paper for a kind without one, where ridge fails]")
@click.option("--epochs", type=COUNT, default=2, show_default=True)
@click.option("--batch-size", type=COUNT, default=32, show_default=True)
@click.option("--lr", type=LEARNING_RATE, default=None, help="default: 1e-2 for scalar/bias adapters, 1e-3 for matrix adapters")
@click.option("--limit", type=COUNT, default=None, help="train on the first N training rows only")
@click.option("--seed", type=SEED, default=42, show_default=True)
@click.option("--checkpoint-every", type=COUNT, default=25, show_default=True, help="steps between checkpoints (and at each epoch's end)")
@click.option("--bucket/--no-bucket", default=False, show_default=True, help="length-bucketed batches (docs/performance.md)")
@click.option("--out", required=True, type=NonBlankPath(), help="explainer directory; checkpoints go in OUT/checkpoint (resumes)")
def train(dataset, model_name, backend, remote, dtype, device, adapter, template, site, init, epochs, batch_size, lr, limit, seed,
          checkpoint_every, bucket, out):
    """Train an adapter on DATASET's train split; validation loss on its validation split."""
    from . import Explainer, TrainConfig, VectorLabelDataset
    from .models import layer_count

    check_backend_options(backend, remote, dtype, device)
    init = init or _default_init(adapter)
    check_site(site, layer_count(model_name))  # from the config; the loaded model refuses it too
    with DirectoryLock(out):  # the whole run: checkpoints, log and the final save (a second run fails at once)
        data = VectorLabelDataset.load(dataset)
        runner = load_backend(model_name, backend, remote, dtype, device)
        explainer = Explainer.create(runner, adapter=adapter, template=template, site=site, model_id=model_name)
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, init=init, seed=seed,
                             checkpoint_every=checkpoint_every, bucket_by_length=bucket)
        validation = data.split("validation") if any(r.get("split") == "validation" for r in data.records) else None
        history = explainer.train(data.split("train").head(limit), validation, config, output_dir=out)
        explainer.save_pretrained(out)
    click.echo(json.dumps({"validation_loss": history["validation_loss"], "steps": history["steps"], "saved": out}))


def _default_init(adapter: str) -> str:
    """`--init` when not given: ridge where the kind has a ridge start (it trains far better on small
    models, docs/results.md), else paper, since ridge would only fail (`Adapter.has_ridge_init`). An
    unknown kind gets ridge here and its UnknownNameError from `Explainer.create`."""
    from .plugins import get_adapter_classes

    kind = get_adapter_classes().get(adapter)
    return "paper" if kind is not None and not kind.has_ridge_init() else "ridge"


@cli.command()
@click.argument("explainer_dir", type=NonBlankPath())
@click.option("--vectors", "dataset", required=True, type=NonBlankPath(), help="a VectorLabelDataset directory")
@click.option("--split", type=TEXT, default=None, help="only rows of this split")
@model_option()
@backend_options
@click.option("--scale", "scales", type=FiniteFloat(), multiple=True, default=(1.0,), show_default=True)
@click.option("--temperature", type=FiniteFloat(min=0), default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=FiniteFloat(min=0, max=1, min_open=True), default=0.9, show_default=True)
@click.option("--samples", type=SAMPLES, default=1, show_default=True)
@click.option("--max-new-tokens", type=TOKENS, default=30, show_default=True)
@click.option("--batch-size", type=COUNT, default=64, show_default=True)
@click.option("--output", required=True, type=NonBlankPath(), help="JSONL file; a rerun resumes where it stopped")
def explain(explainer_dir, dataset, split, model_name, backend, remote, dtype, device, scales, temperature, top_p, samples, max_new_tokens,
            batch_size, output):
    """Label every vector of a dataset (EXPLAINER_DIR may be `shipped`)."""
    from . import Explainer, Sampling, VectorLabelDataset

    check_backend_options(backend, remote, dtype, device)
    location = Explainer.check_pretrained(explainer_dir)  # a bad explainer is refused before the model loads
    data = VectorLabelDataset.load(dataset)
    data = data.split(split) if split else data
    runner = load_backend(model_name, backend, remote, dtype, device)
    explainer = Explainer.from_pretrained(location, model=runner)
    sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    records = explainer.explain(data.vectors, ids=data.ids, scales=scales, sampling=sampling, batch_size=batch_size,
                                samples=samples, output=output)
    click.echo(f"{len(records)} labels in {output}")


@cli.command("eval")
@click.argument("explainer_dir", type=NonBlankPath())
@click.option("--vectors", "dataset", required=True, type=NonBlankPath())
@click.option("--split", type=TEXT, default="test", show_default=True)
@model_option()
@backend_options
@click.option("--limit", type=COUNT, default=None)
@click.option("--scale", "scales", type=FiniteFloat(), multiple=True, default=(1.0,), show_default=True)
@click.option("--scorer", "scorers", type=TEXT, multiple=True,
              help="a registered scorer, a plugin's included (repeatable; `selfinterp plugins` lists them); "
                   "metrics of scorers other than the default two go under \"scores\" "
                   "[default: recall_at_k, exact_match]")
def evaluate(explainer_dir, dataset, split, model_name, backend, remote, dtype, device, limit, scales, scorers):
    """Recall@1/5 (retrieval over every title in the dataset) and exact match on a split, or the
    scorers named with --scorer."""
    from . import Explainer, VectorLabelDataset
    from .evaluation import DEFAULT_SCORERS, evaluate_explainer
    from .evaluation.topics_eval import check_scorers

    check_backend_options(backend, remote, dtype, device)
    scorers = check_scorers(scorers or DEFAULT_SCORERS)  # an unknown scorer is refused before the model loads
    location = Explainer.check_pretrained(explainer_dir)  # a bad explainer is refused before the model loads
    data = VectorLabelDataset.load(dataset)
    runner = load_backend(model_name, backend, remote, dtype, device)
    explainer = Explainer.from_pretrained(location, model=runner)
    result = evaluate_explainer(explainer, data.split(split).head(limit), sorted(set(data.labels)), scales, progress=True,
                                scorers=scorers)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


@cli.command()
@click.option("--n", "n_topics", type=COUNT, default=200, show_default=True, help="held-out test topics to score")
@click.option("--show", type=NONNEGATIVE, default=15, show_default=True, help="examples to print")
@click.option("--explainer", "explainer_dir", type=TEXT, default="shipped", show_default=True)
def demo(n_topics, show, explainer_dir):
    """The main job: held-out topics on SmolLM2, untrained vs trained labels, recall@1 for both."""
    from . import Explainer
    from .defaults import SMOLLM2_ALIAS
    from .demo import run_demo

    location = Explainer.check_pretrained(explainer_dir)  # a bad explainer is refused before the model loads
    click.echo("Loading SmolLM2-135M-Instruct (offline; the first run converts the GGUF once, ~30 s) ...")
    run_demo(location, n_topics, show, echo=click.echo, backend=load_backend(SMOLLM2_ALIAS))


@cli.command()
@click.option("--out", "out_dir", required=True, type=NonBlankPath(file_okay=False), help="directory for report.html, results.json, plots")
@click.option("--config", "config_path", type=NonBlankPath(exists=True, dir_okay=False), help="JSON file of report options")
@model_option(default=None)
@click.option("--explainer", "explainers", type=TEXT, multiple=True, help="trained explainer directory, or 'shipped' (repeatable)")
@click.option("--no-explainer", is_flag=True, help="compare untrained baselines and the knowledge control only")
@click.option("--baseline", "baselines", type=TEXT, multiple=True, help="baseline name (repeatable) [default: all five]")
@click.option("--validation-topics", type=COUNT, default=None, help="topics the sweeps run on [default: 48]")
@click.option("--test-topics", type=COUNT, default=None, help="held-out topics scored [default: 200]")
@click.option("--layer", type=LAYER, default=None, help="layer the topic vectors are read after")
@click.option("--plotly-js", type=click.Choice(["directory", "inline", "cdn"]), default=None,
              help="plotly's JavaScript: one plotly.min.js beside the pages (offline), inline in each page, or from "
                   "its CDN [default: directory]")
def report(out_dir, config_path, model_name, explainers, no_explainer, baselines, validation_topics, test_topics, layer,
           plotly_js):
    """Trained explainers vs untrained baselines vs the knowledge control: one HTML report + JSON.
    Resumable: rerun with the same options and finished sweeps are reused."""
    from .evaluation.report import ReportConfig, run_report
    from .storage._files import read_json

    options = read_json(Path(config_path)) if config_path else {}
    given = {"model": model_name, "explainers": list(explainers) or None, "baselines": list(baselines) or None,
             "validation_topics": validation_topics, "test_topics": test_topics, "layer": layer,
             "plotly_js": plotly_js}
    options.update({k: v for k, v in given.items() if v is not None})
    if no_explainer:
        options["explainers"] = []
    config = ReportConfig.from_dict(options, source=str(config_path or "report options"))
    _check_report_layers(config)
    results = run_report(config, out_dir, backend=load_backend(config.model))
    for row in results["headline"]:
        click.echo(f"{row['method']:>24}: recall@1 {row['recall@1']:.3f}  recall@5 {row['recall@5']:.3f}")
    click.echo(f"report: {Path(out_dir) / 'report.html'}")


def _check_report_layers(config) -> None:
    """The report's layers against the model's config, before any weights load (the loaded
    model refused them too, but only after loading it)."""
    from .models import layer_count

    n_layers = layer_count(config.model)
    check_layer(config.layer, n_layers)
    for layer in config.sweep_layers or ():
        check_layer(layer, n_layers, option="sweep_layers")


BUILTIN_COMMANDS = dict(cli.commands)  # the commands defined above, before any plugin's


def _load_plugin_commands() -> None:
    """Add each plugin's commands, one plugin at a time, starting from the built-in commands alone
    (commands of plugins since unloaded go). A plugin whose `register_commands` raises adds
    nothing; one that replaces or removes a command the host or an earlier plugin owns has that
    undone. Both are reported, so one bad plugin never takes the CLI, `plugins` included, down."""
    from .plugins import FAILED, call_hook, impls_in_registration_order, record_error, registry

    registry()
    cli.commands.clear()
    cli.commands.update(BUILTIN_COMMANDS)
    owners = dict.fromkeys(BUILTIN_COMMANDS, "selfinterp (built-in)")
    for impl in impls_in_registration_order("register_commands"):
        before = dict(cli.commands)
        if call_hook("register_commands", impl, cli=cli) is FAILED:
            cli.commands.clear()
            cli.commands.update(before)
            continue
        for name, command in before.items():
            if cli.commands.get(name) is not command:
                cli.commands[name] = command
                record_error(impl.plugin_name, f"register_commands: command {name!r} belongs to {owners[name]}; "
                                               "kept that one")
        for name in cli.commands.keys() - before.keys():
            owners[name] = impl.plugin_name


def main(argv=None):
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        _load_plugin_commands()
        cli.main(args=argv, standalone_mode=False)
    except SelfInterpError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
