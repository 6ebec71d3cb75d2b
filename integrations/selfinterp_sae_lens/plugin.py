"""SAE-Lens plugin: SAE features as vectors (`sae` vector source), Neuronpedia explanations in and
out, `selfinterp sae …` commands, and the SAE-based scorers `generation` (Pepper et al. 2026) and
`detection` (delphi-style). Loading it imports nothing heavy."""

from selfinterp_plugins.hookspecs import hookimpl
from selfinterp_plugins.plugins import require

require("sae_lens", "sae-lens")


def generation_scorer(records, dataset=None, *, sae, backend, writer=None, n_samples: int = 10, output=None, **options):
    """Mean-max hit rate: conversations written to exhibit each label, does the latent fire?"""
    from .generation_scoring import generation_score

    return {"generation": generation_score(records, sae, backend, writer=writer, n_samples=n_samples, dataset=dataset,
                                           output=output, **options)}


def detection_scorer(records, dataset=None, *, sae, backend, windows, judge=None, **options):
    """Accuracy / F1 / AUC of a judge telling activating from non-activating corpus contexts."""
    from .detection_scoring import ContextPool, ModelJudge, detection_score
    from .latent_ids import feature_of
    from .sae_info import sae_info

    d_sae = sae_info(sae).d_sae
    rows = [dict(r, feature=feature_of(r, dataset, d_sae, n)) for n, r in enumerate(records, 1)]
    pool = ContextPool.build(backend, sae, windows, [r["feature"] for r in rows])
    return {"detection": detection_score(rows, pool, judge or ModelJudge(backend), backend.tokenizer, **options)}


def sae_source(**options):
    from .source import build_sae_dataset

    return build_sae_dataset(**options)


@hookimpl
def register_vector_sources(register):
    register("sae", sae_source)


@hookimpl
def register_scorers(register):
    register("generation", generation_scorer)
    register("detection", detection_scorer)


@hookimpl
def register_explainers(register):
    """The SAE-feature explainer shipped with this plugin (`smollm2-sae-features`)."""
    from .shipped import shipped_explainer_dirs

    for name, directory in shipped_explainer_dirs().items():
        register(name, directory)


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)
