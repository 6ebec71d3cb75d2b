"""Which loader takes an explainer published in another format (`Explainer.from_pretrained`).

Plugins register formats (`register_explainer_formats`: the core's `selfie-adapters`, the PEFT
plugin's `activation-oracle`); a
source that is not an explainer folder goes to the one format that recognises it, or the one named.
"""

from __future__ import annotations

from .errors import ArtifactError, OptionError, UnknownNameError

#: the config file of a PEFT adapter directory (a published oracle, a weight diff, a DIT adapter)
_PEFT_ADAPTER = "adapter_config.json"


def foreign_loader(source, format: str | None, config_file: str, options: dict | None = None):
    """The loader of the format `source` is in, when it is not an explainer folder (a folder holding
    `config_file`): the one named by `format`, or the only registered format that recognises it
    (from `source` and the keyword `options` given: a hub repo is a selfie-adapters file only with
    `filename=`);
    None for an explainer folder or a shipped name. A PEFT adapter that no format takes is refused here, saying which plugin would."""
    from .defaults import explainer_location
    from .plugins import registry

    formats = {name: value for name, (_plugin, value) in registry().explainer_formats.items()}
    if format is not None:
        if format not in formats:
            raise UnknownNameError(f"Unknown explainer format {format!r}; installed: {', '.join(sorted(formats)) or 'none'} "
                                   "(the core has 'selfie-adapters'; the PEFT plugin adds 'activation-oracle').")
        return formats[format][1]
    location = explainer_location(source)
    if (location / config_file).is_file():
        return None
    claims = [name for name, (recognise, _load) in formats.items() if recognise(source, dict(options or {}))]
    if len(claims) > 1:
        raise OptionError(f"{source} could be an explainer of the formats {', '.join(sorted(claims))}; pass format= one "
                          "of them.")
    if claims:
        return formats[claims[0]][1]
    if (location / _PEFT_ADAPTER).is_file():
        raise ArtifactError(f"{location} is a PEFT adapter directory, not an explainer folder, and no installed plugin "
                            "takes it as an explainer; for an Activation Oracle install the PEFT plugin "
                            "(pip install 'selfinterp-plugins[peft]').")
    return None
