"""`selfinterp oracle ask`: ask a published Activation Oracle about activations from the command line.

One activation per prompt (the reference's token-by-token use); K activations per prompt are the
Python API's (`explainer.explain` with (N, K, d_model)). The oracle is a folder holding PEFT's two
files or a hub id; answers stream to a JSONL file and a rerun resumes where it stopped.
"""

from __future__ import annotations

import click

from selfinterp_plugins.cli_options import (
    COUNT,
    LAYER,
    TEXT,
    TOKENS,
    NonBlankPath,
    backend_options,
    check_backend_options,
    check_layer,
    load_backend,
    model_option,
)


def register(cli):
    @cli.group()
    def oracle():
        """Activation Oracles (Karvonen et al. 2025): a published oracle's answers about activations."""

    @oracle.command()
    @click.argument("oracle_dir", type=NonBlankPath())
    @click.option("--vectors", "dataset", required=True, type=NonBlankPath(),
                  help="a VectorLabelDataset directory: one activation per prompt")
    @click.option("--split", type=TEXT, default=None, help="only rows of this split")
    @click.option("--layer", type=LAYER, required=True,
                  help="the layer the vectors were read at (the prompt's 'Layer: L'; the reference reads at 50%% depth)")
    @click.option("--question", type=TEXT, required=True, help="what to ask about each activation")
    @model_option(help="the oracle's base model (alias, hub id or local path)")
    @backend_options
    @click.option("--max-new-tokens", type=TOKENS, default=50, show_default=True, help="greedy, as the reference's demo")
    @click.option("--batch-size", type=COUNT, default=64, show_default=True)
    @click.option("--output", required=True, type=NonBlankPath(), help="JSONL file; a rerun resumes where it stopped")
    def ask(oracle_dir, dataset, split, layer, question, model_name, backend, remote, dtype, device, max_new_tokens,
            batch_size, output):
        """Ask ORACLE_DIR (a folder or a hub id) QUESTION about every vector of a dataset."""
        from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset
        from selfinterp_plugins.models import layer_count

        from .oracles import read_oracle_files

        check_backend_options(backend, remote, dtype, device)
        check_layer(layer, layer_count(model_name))  # from the config, before the weights; again once loaded
        read_oracle_files(oracle_dir)  # a broken oracle is refused before the base model loads
        data = VectorLabelDataset.load(dataset)
        data = data.split(split) if split else data
        runner = load_backend(model_name, backend, remote, dtype, device)
        check_layer(layer, runner.n_layers)
        explainer = Explainer.from_pretrained(oracle_dir, model=runner, format="activation-oracle", layer=layer,
                                              question=question)
        records = explainer.explain(data.vectors, ids=data.ids, sampling=Sampling(max_new_tokens=max_new_tokens),
                                    batch_size=batch_size, output=output)
        click.echo(f"{len(records)} answers in {output}")
