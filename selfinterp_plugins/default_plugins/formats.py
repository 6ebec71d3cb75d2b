"""Explainers published in another format that the core reads itself: Pepper et al.'s
selfie-adapters files (`pepper_format`), registered as any plugin's format is."""

from ..hookspecs import hookimpl


@hookimpl
def register_explainer_formats(register):
    def recognise(source, options):
        from ..pepper_format import is_selfie_adapter

        return is_selfie_adapter(source, options.get("filename"))

    def load(source, model, **options):
        from ..pepper_format import load_selfie_explainer

        return load_selfie_explainer(source, model, **options)

    register("selfie-adapters", recognise, load)
