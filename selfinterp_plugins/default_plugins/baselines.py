"""The untrained baselines of ANCHORS.md §2, registered as a plugin would."""

from ..hookspecs import hookimpl


@hookimpl
def register_baselines(register):
    from ..baselines import BUILTIN_BASELINES

    for baseline in BUILTIN_BASELINES.values():
        register(baseline)
