"""Adapter configs, one dataclass per kind as in PEFT, and the kind → adapter class lookup.

`AdapterConfig` holds what every kind has (kind, d_model, init_scale); a kind with options of its
own declares a subclass as its `config_class` (the low-rank kinds: `LowRankConfig`, with the
rank). `AdapterConfig.from_dict` and `AdapterConfig.for_kind` build the config class of the kind
they are given, so saved files and `Explainer.create(..., option=...)` reach the kind's own fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Annotated

from .errors import ArtifactError, OptionError, UnknownNameError
from .storage.validation import Name, PositiveFloat, between, check_fields, validate

#: the widest residual stream accepted (the largest open models are ~16k wide); a larger value
#: in a config file is corruption, and a full-rank adapter of it would exhaust memory
MAX_D_MODEL = 65536


@dataclass
class AdapterConfig:
    """What every adapter kind has; saved next to its weights as JSON. A kind with options of its
    own declares a subclass (see `LowRankConfig`) as its `config_class`."""

    kind: Name
    d_model: Annotated[int, between(1, MAX_D_MODEL)]
    init_scale: PositiveFloat = 5.0

    MAX_D_MODEL = MAX_D_MODEL
    #: keys the single config class of earlier versions wrote for every kind: files of those
    #: versions carry them on a scalar_affine too, so kinds without them drop them without a warning
    LEGACY_KEYS = ("rank", "low_rank_init_factor")

    def __post_init__(self):
        """Built in Python, a bad field is the caller's option (OptionError); a saved file's fields
        are checked by `from_dict` first, as an ArtifactError naming the file."""
        check_fields(self, f"Adapter config ({type(self).__name__})", "pass a value in that range.", error=OptionError)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_kind(cls, kind: str, d_model: int, registry: dict | None = None, **options) -> AdapterConfig:
        """The config of `kind` (its own config class) with `options`, as `Explainer.create` builds it.

        An option the kind does not have raises UnknownNameError: a typo in code should stop, not
        train the wrong adapter. `rank` and `low_rank_init_factor` are accepted and ignored by kinds
        without them, as every kind accepted them before per-kind configs."""
        target = cls._class_for(kind, registry)
        known = {f.name for f in fields(target)}
        unknown = sorted(set(options) - known - set(cls.LEGACY_KEYS))
        if unknown:
            raise UnknownNameError(f"Adapter kind {kind!r} has no option(s) {unknown}; its options are: "
                                   f"{', '.join(sorted(known - {'kind', 'd_model'}))}.")
        values = {"kind": kind, "d_model": d_model, **{k: v for k, v in options.items() if k in known}}
        return validate(target, values, f"Adapter kind {kind!r}", f"fix that option (the kind's options: "
                        f"{', '.join(sorted(known - {'kind', 'd_model'}))}).", error=OptionError, noun="option")

    @classmethod
    def from_dict(cls, data: dict, registry: dict | None = None, source: str = "", prefix: str = "") -> AdapterConfig:
        """Read a saved config. On `AdapterConfig` itself this builds the config class of the kind
        the dict names (looked up in the plugin registry); on a subclass, that subclass.

        A key the config class does not know is ignored with a warning naming it and the kind,
        rather than refused: a file written by a newer version (or a newer plugin) still loads
        here, as in PEFT, and the weights file, loaded strictly, still refuses a mismatched shape.
        The keys earlier versions wrote for every kind (`LEGACY_KEYS`) are dropped silently."""
        source = source or "Adapter config"
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: {prefix or 'the adapter config'} should be a JSON object, got "
                                f"{type(data).__name__}; re-save the explainer.")
        if "kind" not in data:
            raise ArtifactError(f"{source}: field {prefix + '.' if prefix else ''}kind is missing; re-save the explainer "
                                "with save_pretrained().")
        target = cls._class_for(data["kind"], registry)
        return validate(target, data, f"{source} (adapter kind {data['kind']!r})", "re-save the explainer with save_pretrained().", prefix=prefix,
                        unknown="warn", ignored=cls.LEGACY_KEYS)

    @classmethod
    def _class_for(cls, kind, registry) -> type[AdapterConfig]:
        return adapter_class(kind, registry).config_class if cls is AdapterConfig else cls


@dataclass
class LowRankConfig(AdapterConfig):
    """The low-rank kinds' options: rank r, and U, V ~ N(0, (low_rank_init_factor·init_scale/√r)²)."""

    rank: Annotated[int, between(1, MAX_D_MODEL)] = 64
    low_rank_init_factor: PositiveFloat = 0.01


def adapter_class(kind: str, registry: dict | None = None) -> type:
    """The adapter class registered for `kind` (the plugin registry unless one is given)."""
    if not isinstance(kind, str) or not kind:
        raise ArtifactError(f"Adapter kind must be a name such as 'scalar_affine', got {kind!r}; fix the config.")
    if registry is None:
        from .plugins import get_adapter_classes

        registry = get_adapter_classes()
    try:
        return registry[kind]
    except KeyError:
        raise UnknownNameError(
            f"Unknown adapter kind {kind!r}; choose one of: {', '.join(sorted(registry))}."
        ) from None
