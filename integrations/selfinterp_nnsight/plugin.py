"""nnsight plugin: a backend for nnsight's `LanguageModel` / `TransformersModel`, here or on NDIF.

Loading this plugin costs nothing: nnsight is looked up, not imported; a model object of it can
only exist once the user has imported it.
"""

from selfinterp_plugins.hookspecs import hookimpl
from selfinterp_plugins.plugins import require

require("nnsight", "nnsight")

OPTIONS = ("remote", "retry")


def _make(model, tokenizer=None, **options):
    from selfinterp_plugins.errors import BackendError

    from .backend import NNsightBackend

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise BackendError(f"The nnsight backend has no option(s) {sorted(unknown)}; it takes {', '.join(OPTIONS)}.")
    return NNsightBackend(model, tokenizer, **options)


@hookimpl
def register_backends(register):
    register("nnsight", _make)


@hookimpl
def backend_for_model(model, options):
    if not type(model).__module__.startswith("nnsight"):
        return None
    from nnsight.modeling.transformers import TransformersModel

    if isinstance(model, TransformersModel):
        return "nnsight"
    return None
