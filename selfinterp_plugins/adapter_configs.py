"""Adapter configs, one dataclass per kind as in PEFT, and the kind → adapter class lookup.

`AdapterConfig` holds what every kind has (kind, d_model, init_scale); a kind with options of its
own declares a subclass as its `config_class` (the low-rank kinds: `LowRankConfig`, with the
rank). `AdapterConfig.from_dict` and `AdapterConfig.for_kind` build the config class of the kind
they are given, so saved files and `Explainer.create(..., option=...)` reach the kind's own fields.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields

from .errors import ArtifactError, UnknownNameError


@dataclass
class AdapterConfig:
    """What every adapter kind has; saved next to its weights as JSON. A kind with options of its
    own declares a subclass (see `LowRankConfig`) as its `config_class`."""

    kind: str
    d_model: int
    init_scale: float = 5.0

    #: the widest residual stream accepted (the largest open models are ~16k wide); a larger value
    #: in a config file is corruption, and a full-rank adapter of it would exhaust memory
    MAX_D_MODEL = 65536
    #: keys the single config class of earlier versions wrote for every kind: files of those
    #: versions carry them on a scalar_affine too, so kinds without them drop them without a warning
    LEGACY_KEYS = ("rank", "low_rank_init_factor")

    def __post_init__(self):
        if not isinstance(self.kind, str) or not self.kind:
            raise ArtifactError(f"Adapter kind must be a name such as 'scalar_affine', got {self.kind!r}; fix the config.")
        self._check_int("d_model", self.MAX_D_MODEL)
        self._check_positive("init_scale")

    def _check_int(self, name: str, limit: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise ArtifactError(f"Adapter {name} must be an integer in 1..{limit}, got {value!r}; fix the config.")

    def _check_positive(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ArtifactError(f"Adapter {name} must be a positive number, got {value!r}; fix the config.")

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
        return target(kind=kind, d_model=d_model, **{k: v for k, v in options.items() if k in known})

    @classmethod
    def from_dict(cls, data: dict, registry: dict | None = None) -> AdapterConfig:
        """Read a saved config. On `AdapterConfig` itself this builds the config class of the kind
        the dict names (looked up in the plugin registry); on a subclass, that subclass.

        A key the config class does not know is ignored with a warning naming it and the kind,
        rather than refused: a file written by a newer version (or a newer plugin) still loads
        here, as in PEFT, and the weights file, loaded strictly, still refuses a mismatched shape.
        The keys earlier versions wrote for every kind (`LEGACY_KEYS`) are dropped silently."""
        if not isinstance(data, dict):
            raise ArtifactError(f"Adapter config must be a JSON object, got {type(data).__name__}; re-save the explainer.")
        missing = {"kind", "d_model"} - set(data)
        if missing:
            raise ArtifactError(
                f"Adapter config lacks {sorted(missing)}; re-save the explainer with save_pretrained()."
            )
        target = cls._class_for(data["kind"], registry)
        known = {f.name for f in fields(target)}
        for key in sorted(set(data) - known - set(cls.LEGACY_KEYS), key=str):
            warnings.warn(f"Adapter config of kind {data['kind']!r} has an unknown key {key!r}; ignored "
                          "(written by another version of the kind?).", stacklevel=2)
        return target(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def _class_for(cls, kind, registry) -> type[AdapterConfig]:
        return adapter_class(kind, registry).config_class if cls is AdapterConfig else cls


@dataclass
class LowRankConfig(AdapterConfig):
    """The low-rank kinds' options: rank r, and U, V ~ N(0, (low_rank_init_factor·init_scale/√r)²)."""

    rank: int = 64
    low_rank_init_factor: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        self._check_int("rank", self.MAX_D_MODEL)
        self._check_positive("low_rank_init_factor")


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
