"""TransformerLens plugin: a backend for `HookedTransformer` and `TransformerBridge`.

Loading this plugin costs nothing: transformer_lens (a 15 s import) is looked up, not imported;
a model object of it can only exist once the user has imported it.
"""

from selfinterp_plugins.hookspecs import hookimpl
from selfinterp_plugins.plugins import require

require("transformer_lens", "transformer-lens")


def _make(model, tokenizer=None, **options):
    from selfinterp_plugins.errors import BackendError

    from .backend import TransformerLensBackend

    if options:
        raise BackendError(f"The transformer_lens backend takes no options, got {sorted(options)}.")
    return TransformerLensBackend(model, tokenizer)


@hookimpl
def register_backends(register):
    register("transformer_lens", _make)


@hookimpl
def backend_for_model(model, options):
    module = type(model).__module__
    if module.startswith("transformer_lens") and type(model).__name__ in ("HookedTransformer", "TransformerBridge"):
        return "transformer_lens"
    return None
