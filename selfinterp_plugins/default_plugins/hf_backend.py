"""The `hf` backend as a plugin: it claims any transformers causal LM (asked last)."""

from ..hookspecs import hookimpl


def _make(model, tokenizer=None, **options):
    from ..backends.hf import HFBackend
    from ..errors import BackendError

    if tokenizer is None:
        raise BackendError("The hf backend needs the model's tokenizer; pass tokenizer=... next to model=....")
    unknown = set(options) - {"checkpointing"}
    if unknown:
        raise BackendError(f"The hf backend has no option(s) {sorted(unknown)}; it takes checkpointing=True|False.")
    return HFBackend(model, tokenizer, **options)


@hookimpl
def register_backends(register):
    register("hf", _make)


@hookimpl(trylast=True)
def backend_for_model(model, options):
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    if isinstance(model, PreTrainedModel) and hasattr(model, "get_output_embeddings"):
        return "hf"
    return None
