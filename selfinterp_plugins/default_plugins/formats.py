"""Explainers published in another format that the core reads itself: Pepper et al.'s
selfie-adapters files (`pepper_format`), registered as any plugin's format is."""

from ..hookspecs import hookimpl


def load_selfie_explainer(source, model, tokenizer=None, check_model: bool = True, backend_options: dict | None = None,
                          filename: str | None = None, template=None, mean_vectors=None, layer: int | None = None):
    """The `selfie-adapters` format's loader (`Explainer.from_pretrained` of a selfie-adapters file):
    the reference's adapter with the reference's prompt for the model's family (`template=`
    overrides), the embedding site, and for a topic adapter `mean_vectors=` (`layer=` picks its
    `layer_{L}`) as the vectors' centring. Here, not in `pepper_format`, which `Explainer` imports."""
    from ..explainer import Explainer
    from ..pepper_format import load_parts

    parts, prompt_ids = load_parts(source, model, tokenizer, filename, template, mean_vectors, layer, check_model,
                                   backend_options)
    explainer = Explainer(**parts)
    if prompt_ids is not None:  # the prompt as trained, or a tokenizer that differs refused
        explainer._use_prompt_ids(prompt_ids, source if filename is None else filename)
    return explainer


@hookimpl
def register_explainer_formats(register):
    def recognise(source, options):
        from ..pepper_format import is_selfie_adapter

        return is_selfie_adapter(source, options.get("filename"))

    register("selfie-adapters", recognise, load_selfie_explainer)
