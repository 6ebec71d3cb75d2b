"""PEFT bridge plugin: weight diffs (`weight_diff.WeightDiff`: from PEFT LoRA adapters or full
fine-tunes, applied to a base model, saved as PEFT adapters), synthetic hidden-topic diffs trained
many at once, Diff Interpretation Tuning (`dit.DITAdapter`), with `selfinterp dit …` commands and
the DIT task; and the Activation Oracles' published LoRAs as explainers (`oracles`, the
"activation-oracle" explainer format). The explainer of Li et al. is a plugin of its own
(`selfinterp_introspective`). Loading it imports nothing heavy."""

from selfinterp_plugins.hookspecs import hookimpl
from selfinterp_plugins.plugins import require

require("peft", "peft")


@hookimpl
def register_commands(cli):
    from .cli import register
    from .oracle_cli import register as register_oracle

    register(cli)
    register_oracle(cli)


def diff_interpretation(model, tokenizer, config=None):
    """The DIT task: a fresh DIT adapter on `model` (see dit.DITAdapter)."""
    from .dit import DITAdapter

    return DITAdapter.create(model, tokenizer, config)


@hookimpl
def register_tasks(register):
    register("diff_interpretation", diff_interpretation)


@hookimpl
def register_explainer_formats(register):
    def recognise(source, options):
        from .oracles import is_oracle

        return is_oracle(source)

    def load(source, model, **options):
        from .oracles import load_oracle

        return load_oracle(source, model, **options)

    register("activation-oracle", recognise, load)
