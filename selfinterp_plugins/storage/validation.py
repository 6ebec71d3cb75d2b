"""One validation layer for every file the library reads, built on pydantic v2.

Each file's fields are defined once, by a dataclass (a config class such as `AdapterConfig`, or a
small dataclass naming a file's fields where the library had none, e.g. a checkpoint's
`state.json`); ranges and choices are written on the fields as `Annotated[int, between(1, 64)]`
or `Literal[...]`. `validate(cls, data, source, fix)` checks a dict read from a file against those
fields and builds the dataclass; `check_fields(obj, ...)` checks an object built in Python (from
its `__post_init__`), so the API and the files share the same rules.

The rules are strict-ish: no coercion ("5" is not 5, true is not 1, 2.0 is not an int) except an
int where a float is expected; floats must be finite unless a field says otherwise (`LossValue`).
A failure is one line naming the file, the dotted field and the fix:
`explainer_config.json: field adapter.d_model should be a valid integer (got '5'); re-save it.`

How: pydantic validates a TypedDict generated from the dataclass's own type hints (never a second
hand-written model), in strict mode with `allow_inf_nan=False`; the dataclass is then built from
the validated values, so its `__post_init__` sees checked types. (Validating the dataclass itself
in strict mode would demand an instance, not a dict, and would re-enter `__post_init__`.)

Size bounds shared by the readers (_files.py) and the fields live here too, each a
documented default that callers may override.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
import warnings
from typing import Annotated

import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, Required, TypedDict

from ..errors import ArtifactError, SelfInterpError

__all__ = ["LossValue", "MAX_INFLATED_BYTES", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_JSONL_BYTES", "MAX_TEXT_CHARS",
           "Name", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Text", "between",
           "check_fields", "check_finite_tensors", "length", "unencodable_text", "validate"]

#: a JSON config file larger than this is refused before it is read (the largest real one, an
#: explainer config with a 64k-wide topic mean in its metadata, is ~1.5 MB)
MAX_JSON_BYTES = 64 << 20
#: a JSONL file (labels, explanations, results) larger than this is refused before it is read
MAX_JSONL_BYTES = 1 << 30
#: a gzip input stops inflating past this many bytes (a 3 MB file can inflate to gigabytes)
MAX_INFLATED_BYTES = 512 << 20
#: JSON nested deeper than this is refused (real files nest < 10 levels; Python's parser recurses)
MAX_JSON_DEPTH = 100
#: prompt / template / question text: 16,384 characters, ~4k tokens at ~4 characters a token, 30x
#: the longest built-in prompt; a 4 MB prompt took > 180 s and 4.7 GB to tokenise
MAX_TEXT_CHARS = 16_384


def between(ge: float | None = None, le: float | None = None, *, gt: float | None = None, lt: float | None = None):
    """A range for a numeric field: `Annotated[int, between(1, 65536)]`."""
    return Field(ge=ge, le=le, gt=gt, lt=lt)


def length(min_length: int | None = None, max_length: int | None = None):
    """Bounds on a list's (or string's) length: `Annotated[list[str], length(3, 3)]`."""
    return Field(min_length=min_length, max_length=max_length)


def unencodable_text(value) -> str | None:
    """The first string in a parsed JSON value (keys included) that no encoding can write, or None.
    JSON's `\\ud800` escape decodes to a lone surrogate, half of a UTF-16 pair: Python holds it,
    but encoding it (a tokenizer, a file write) fails, far from the file that held it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
#: a recorded loss: NaN / infinity are facts of a diverged run, kept as they were written
LossValue = Annotated[float, Field(allow_inf_nan=True)]
#: prompt or template text, bounded (see MAX_TEXT_CHARS); a constrained str also refuses a lone
#: surrogate (pydantic's "unable to parse raw data as a unicode string"), a plain `str` field does not
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
#: a non-empty, bounded name (a kind, a module, a token)
Name = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    """A TypeAdapter for a TypedDict with `cls`'s init fields and type hints (built once per class)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    spec = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec[f.name] = Required[hints[f.name]] if required else NotRequired[hints[f.name]]
    shape = TypedDict(f"{cls.__name__}Fields", spec)  # type: ignore[misc]
    shape.__pydantic_config__ = _STRICT
    return TypeAdapter(shape)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _where(loc: tuple, prefix: str) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def _reason(error: dict) -> str:
    if error["type"] == "missing":
        return "is missing"
    message = error["msg"]
    for head in ("Input should", "Value should"):
        if message.startswith(head):
            message = "should" + message[len(head):]
    if message.startswith("String should"):
        message = "should" + message[len("String should"):]
    if message.startswith(("List should", "Dictionary should")):
        message = "should" + message.split(" should", 1)[1]
    return f"{message[0].lower()}{message[1:]} (got {error['input']!r:.60})"


def _raise(err: ValidationError, source: str, prefix: str, fix: str, error: type[SelfInterpError], noun: str = "field"):
    first = err.errors()[0]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    raise error(f"{source}: {noun} {_where(first['loc'], prefix)} {_reason(first)}{more}; {fix}") from None


def validate(cls: type, data, source: str, fix: str, *, prefix: str = "", unknown: str = "forbid",
             ignored: tuple = (), required: tuple = (), error: type[SelfInterpError] = ArtifactError,
             noun: str = "field"):
    """`data` (a dict read from `source`) checked against dataclass `cls`'s fields and built into it.

    `unknown` says what a key `cls` lacks does: "forbid" (an error naming it), "warn" (dropped with
    a warning: a file from a newer version still loads) or "ignore" (dropped; files with free-form
    extras). Keys in `ignored` are dropped silently whatever `unknown` says (legacy keys); keys in
    `required` must be present even where the dataclass has a default. `prefix` is the dotted path
    of `data` inside its file ("adapter"), for the message; `noun` what a key is called there
    ("option" for keyword options given in Python, with `error=OptionError`)."""
    head = f"{source}: {prefix or 'the file'}"
    if not isinstance(data, dict):
        raise error(f"{head} should be a JSON object, got {type(data).__name__}; {fix}")
    names = _field_names(cls)
    extra = sorted((k for k in data if k not in names and k not in ignored), key=str)
    if extra and unknown == "forbid":
        raise error(f"{source}: unknown field(s) {', '.join(_where((k,), prefix) for k in extra)}; the fields are "
                    f"{', '.join(names)}. {fix[0].upper()}{fix[1:]}")
    if extra and unknown == "warn":
        for key in extra:
            warnings.warn(f"{source}: unknown field {_where((key,), prefix)!r}; ignored (written by another version?).",
                          stacklevel=3)
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{source}: field {_where((missing[0],), prefix)} is missing; {fix}")
    try:
        values = _adapter(cls).validate_python({k: v for k, v in data.items() if k in names})
    except ValidationError as err:
        _raise(err, source, prefix, fix, error, noun)
    return cls(**values)


def check_fields(obj, source: str, fix: str, *, error: type[SelfInterpError] = ArtifactError) -> None:
    """Check a dataclass built in Python against its own field types and ranges (call it from
    `__post_init__`): the API gets the same rules as the files."""
    values = {name: getattr(obj, name) for name in _field_names(type(obj))}
    try:
        _adapter(type(obj)).validate_python(values)
    except ValidationError as err:
        _raise(err, source, "", fix, error)


#: floating dtypes `torch.isfinite` supports (float8 is not one of them)
_ISFINITE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_finite_tensors(tensors: dict[str, torch.Tensor], source, fix: str) -> dict[str, torch.Tensor]:
    """Refuse weights holding NaN or infinity (every label of an adapter with a NaN weight is the
    same junk token): an ArtifactError naming the tensor."""
    for name, tensor in tensors.items():
        if not (tensor.is_floating_point() and tensor.numel()):
            continue
        # torch has no isfinite for the float8 dtypes; widened to float32 each value keeps its NaN or inf
        values = tensor if tensor.dtype in _ISFINITE_DTYPES else tensor.float()
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ArtifactError(f"{source}: tensor {name} holds {bad} NaN or infinite value(s); {fix}")
    return tensors


def json_depth_ok(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most `limit` containers deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True
