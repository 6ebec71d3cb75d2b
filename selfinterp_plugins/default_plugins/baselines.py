"""The untrained baselines (SelfIE, Patchscopes, self-explaining SAE features, Activation Oracles, scale_only), registered as a plugin would."""

from ..hookspecs import hookimpl


@hookimpl
def register_baselines(register):
    from ..evaluation.baselines import BUILTIN_BASELINES

    for baseline in BUILTIN_BASELINES.values():
        register(baseline.name, baseline)
