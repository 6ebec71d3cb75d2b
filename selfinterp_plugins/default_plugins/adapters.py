"""The adapter kinds of Pepper et al. 2026 (plus bias_only, and `raw` for untrained baselines),
registered as a plugin would."""

from ..adapters import BUILTIN_ADAPTERS, RawVector
from ..hookspecs import hookimpl


@hookimpl
def register_adapters(register):
    for cls in BUILTIN_ADAPTERS.values():
        register(cls.kind, cls)
    register(RawVector.kind, RawVector)
