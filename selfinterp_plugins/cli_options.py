"""The options every `selfinterp` command that runs a model shares, and the helper that turns them
into a backend.

Why one place: each command, core and plugin, used to write out `--model` and its default, so the
default could drift and plugin commands documented it their own way; `--backend` and `--remote`
must also mean the same thing wherever they appear. Plugins import these names:

    from selfinterp_plugins.cli_options import load_backend, model_option

    @group.command()
    @model_option()
    def run(model_name):
        backend = load_backend(model_name)      # backend.model / backend.tokenizer for hf

Every mistake in these options is a `SelfInterpError` raised before a model loads, which the CLI
prints as one line (exit 2): an unknown backend, a backend whose plugin is not loaded, `--remote`
with a backend other than nnsight, a `--remote` value nnsight does not take.

This module imports nothing heavy: the commands are defined (and `--help` shown) without loading
torch models, transformers, nnsight or TransformerLens.
"""

from __future__ import annotations

import math

import click

from .defaults import DEFAULT_MODEL, MAX_NEW_TOKENS, MAX_SEED
from .errors import BackendError, ModelLoadError, OptionError, PluginNotInstalledError, UnknownNameError

__all__ = ["BACKEND_PLUGINS", "COUNT", "DEFAULT_MODEL", "DTYPES", "LAYER", "LEARNING_RATE", "MAX_COUNT", "MAX_LAYERS", "MODEL_HELP",
           "NONNEGATIVE", "POSITIVE", "RANK", "REMOTE_VALUES", "SAMPLES", "SEED", "TEXT", "TOKENS", "FiniteFloat", "LayerRange",
           "NonBlankPath", "Text",
           "backend_options", "check_backend", "check_backend_options", "check_device", "check_layer", "check_layers", "check_site", "count",
           "load_backend", "model_option"]

#: backends whose plugins ship with this project -> the pip extra that installs the plugin's library
BACKEND_PLUGINS = {"nnsight": "nnsight", "transformer_lens": "transformer-lens"}

#: `--dtype` words -> the torch dtype the frozen weights load in (adapters always train in float32)
DTYPES = ("float32", "bfloat16", "float16")

#: `--remote` words -> nnsight's `remote=` argument (an http(s) URL is passed on as NDIF's host)
REMOTE_VALUES = {"off": False, "local": "local", "ndif": True}

MODEL_HELP = "alias, hub id or local path"
BACKEND_HELP = ("library that runs the model, one of the registered backends: {names} (hf: transformers; the "
                "others from plugins, `selfinterp plugins` says whose)")
REMOTE_HELP = ("nnsight only. off: run here; local: nnsight's offline rehearsal of NDIF (each request serialised "
               "as for NDIF, then run here); ndif: run on NDIF (needs NDIF_API_KEY; the weights stay there, "
               "so --model must be a hub id NDIF serves); or an NDIF host URL")


class FiniteFloat(click.ParamType):
    """A float option that must be finite (click.FloatRange lets "nan" and "inf" through) and lie in
    a range: `FiniteFloat(min=0, min_open=True)` for a learning rate, `FiniteFloat(min=0)` for a
    temperature, `FiniteFloat(min=0, max=1, min_open=True)` for top-p. A bad value is click's usage
    error (exit 2) naming the option, before the command runs."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def get_metavar(self, param, ctx=None):
        return f"FLOAT {self._describe()}"

    def _describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_open else '>='}{self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_open else '<='}{self.max:g}")
        return "(finite" + (", " + ", ".join(parts) if parts else "") + ")"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            self.fail(f"{value!r} is not {'>' if self.min_open else '>='} {self.min:g}.", param, ctx)
        if self.max is not None and (number > self.max or (self.max_open and number == self.max)):
            self.fail(f"{value!r} is not {'<' if self.max_open else '<='} {self.max:g}.", param, ctx)
        return number

    def __repr__(self):
        return f"FiniteFloat{self._describe()}"


def _blank(value) -> bool:
    return isinstance(value, str) and not value.strip()


def _nul(value) -> bool:
    """A NUL cannot be in a file name or come from a shell; in-process (`main([...])`) it reached
    the first `os.stat` as ValueError."""
    return isinstance(value, str) and "\x00" in value


def _unencodable(value) -> bool:
    """A lone surrogate such as \\ud800 (not the \\udcXX that stands for a non-UTF-8 byte of a
    shell argument, which encodes back): click.Path's own encoding raised UnicodeEncodeError."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return True
    return False


class Text(click.ParamType):
    """A name or a text (a model, a split, a site, a question) that says something: "" or only
    whitespace is click's usage error (exit 2) naming the option, before the command runs. Taken as
    given, a blank name meant something else: `--split ""` was every split, a blank model a hub
    lookup's traceback-like message."""

    name = "text"

    def convert(self, value, param, ctx):
        if _blank(value):
            self.fail(f"{value!r} is empty; give a name or a text (see --help).", param, ctx)
        if _nul(value):
            self.fail(f"{value!r} holds a NUL character; give a name or a text without one.", param, ctx)
        if _unencodable(value):
            self.fail(f"{value!r} holds a lone surrogate, which is not text; give a name or a text without one.",
                      param, ctx)
        return value


#: every option or argument that takes a name or a text
TEXT = Text()


#: the longest file name (one path component) Linux and macOS file systems hold, in bytes: a longer
#: one was OSError (ENAMETOOLONG) at the first `is_dir()`
NAME_MAX = 255


class NonBlankPath(click.Path):
    """`click.Path`, refusing "" and whitespace-only paths: `Path("")` is the current directory, so
    `selfinterp explain ""` read the directory it ran in as the explainer (and an output of ""
    was a write to "." after the model loaded)."""

    def convert(self, value, param, ctx):
        if _blank(value):
            self.fail(f"{value!r} is an empty path; give a file or directory.", param, ctx)
        if _nul(value):
            self.fail(f"{value!r} holds a NUL character, which no file name can; give a file or directory.", param, ctx)
        if _unencodable(value):
            self.fail(f"{value!r} holds a lone surrogate, which no file name can; give a file or directory.", param, ctx)
        if isinstance(value, str) and any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX
                                          for part in value.split("/")):
            self.fail(f"{value[:40]!r}... has a name longer than {NAME_MAX} bytes, which no file system holds; give a "
                      "file or directory.", param, ctx)
        return super().convert(value, param, ctx)


#: `LayerRange`'s and `LAYER`'s bound: past any model's depth, so a layer this large is a typo
MAX_LAYERS = 65_536


class LayerRange(click.ParamType):
    """`start:stop:step` (three whole numbers, as in Python's `range`): the layers a command reads,
    given as a `range`. Malformed, empty or zero-step ranges are click's usage error (exit 2)
    before the command runs; whether `stop` fits the model is `check_layers`'s, once its layer
    count is known."""

    name = "start:stop:step"

    def convert(self, value, param, ctx):
        if isinstance(value, range):
            return value
        parts = str(value).split(":")
        if len(parts) != 3 or not all(part.strip().isdigit() and part.strip().isascii() for part in parts):
            self.fail(f"{value!r} is not start:stop:step (three whole numbers, e.g. 0:30:3; every layer from 0 "
                      "to 29 is 0:30:1).", param, ctx)
        start, stop, step = (int(part) for part in parts)
        if step == 0:
            self.fail(f"{value!r} has step 0; the step is at least 1 (0:30:1 is every layer).", param, ctx)
        if stop > MAX_LAYERS:
            self.fail(f"{value!r} stops past layer {MAX_LAYERS:,}; no model has that many layers.", param, ctx)
        if start >= stop:
            self.fail(f"{value!r} holds no layer (start must be below stop, e.g. 0:30:3).", param, ctx)
        return range(start, stop, step)


def check_layers(layers: range, n_layers: int | None, option: str = "--layers") -> None:
    """Refuse layers past the model's last (`n_layers` from its config before loading, or from the
    loaded model; None: not known yet, checked again later) in one line with the fix."""
    if n_layers is None or layers[-1] < n_layers:
        return
    start = layers.start if layers.start < n_layers else 0
    raise OptionError(f"{option} {layers.start}:{layers.stop}:{layers.step} reads layer {layers[-1]}, past the model's "
                      f"last ({n_layers - 1}: it has {n_layers}); give a stop of at most {n_layers}, e.g. "
                      f"{option} {start}:{n_layers}:{layers.step}.")


def check_layer(layer: int | None, n_layers: int | None, option: str = "--layer") -> None:
    """`check_layers` for one layer (`--layer N`; None: the command picks one later)."""
    if layer is None or n_layers is None or layer < n_layers:
        return
    raise OptionError(f"{option} {layer} is past the model's last layer ({n_layers - 1}: it has {n_layers}); give "
                      f"{option} 0 to {n_layers - 1}.")


def check_site(site: str, n_layers: int | None, option: str = "--site") -> None:
    """A `--site` such as resid_post.K whose layer the model lacks, refused like `check_layer`. A
    site that does not parse here (a TransformerLens hook name) is left to the command's own check."""
    from .errors import SelfInterpError
    from .sites import Site

    try:
        layer = Site.parse(site).layer
    except SelfInterpError:
        return
    if layer is not None and n_layers is not None and layer >= n_layers:
        raise OptionError(f"{option} {site} reads layer {layer}, past the model's last ({n_layers - 1}: it has "
                          f"{n_layers}); give a layer 0 to {n_layers - 1}.")


#: the largest count any option takes: what an int32 holds (C libraries, tensor sizes). Every
#: integer option is bounded where it is declared: unbounded, `--seed 100000000000000000000` was
#: torch's overflow RuntimeError and `--samples 10000000000` a list that filled memory
MAX_COUNT = 2**31 - 1


def count(maximum: int = MAX_COUNT, minimum: int = 1) -> click.IntRange:
    """An integer option's range: at least `minimum` (1 for a count), at most `maximum` (the most
    the option can use: memory per unit, a model's context, int32)."""
    return click.IntRange(min=minimum, max=maximum)


#: counts that must be at least 1 (batch sizes, epochs, limits, steps, windows)
COUNT = count()
#: integers that may be 0 but not negative (sizes where 0 means none)
NONNEGATIVE = count(minimum=0)
#: seeds: 0 .. 2**32 - 1 (NumPy's range; torch's takes it)
SEED = count(MAX_SEED, minimum=0)
#: a layer index (`MAX_LAYERS` is past any model's depth; the model's own is checked when known)
LAYER = count(MAX_LAYERS - 1, minimum=0)
#: tokens in one generation or window (`MAX_NEW_TOKENS`: SmolLM2's context)
TOKENS = count(MAX_NEW_TOKENS)
#: samples per vector or label: each is a generation kept in memory with its record
SAMPLES = count(1000)
#: LoRA / SVD ranks (AdapterConfig's bound too)
RANK = count(65_536)
#: finite floats above 0 (LoRA alpha)
POSITIVE = FiniteFloat(min=0, min_open=True)
#: learning rates: above 0, at most 10 (far past any that trains; --lr 1.5e41 overflowed the float32
#: optimiser state of SAE-Lens's trainer as torch's RuntimeError)
LEARNING_RATE = FiniteFloat(min=0, max=10, min_open=True)


def model_option(help: str = MODEL_HELP, default: str | None = DEFAULT_MODEL):
    """`--model`, passed as `model_name`. `default=None` is for a command that can also take the
    model from elsewhere (`report --config`); its help still names `DEFAULT_MODEL`."""
    if default is None:
        return click.option("--model", "model_name", type=TEXT, default=None, help=f"{help} [default: {DEFAULT_MODEL}]")
    return click.option("--model", "model_name", type=TEXT, default=default, show_default=True, help=help)


class BackendName(click.ParamType):
    """`--backend`'s values are the registered backends. They are listed when help is shown, not when
    a command is defined (plugins load after that), and checked by `check_backend`, so that an
    unknown name and a backend whose plugin is missing each get their own one-line error."""

    name = "backend"

    def get_metavar(self, param, ctx):
        from .plugins import registry

        return "[" + "|".join(sorted(registry().backends)) + "]"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        from .plugins import registry

        return [CompletionItem(name) for name in sorted(registry().backends) if name.startswith(incomplete)]


class BackendOption(click.Option):
    """`--backend`, whose help names the registered backends, read when help is shown (as
    `BackendName`'s metavar), not the three this project's plugins ship: a plugin's backend is a
    valid value, and a plugin not loaded is not one."""

    def get_help_record(self, ctx):
        from .plugins import registry

        self.help = BACKEND_HELP.format(names=", ".join(sorted(registry().backends)))
        return super().get_help_record(ctx)


DTYPE_HELP = "dtype of the frozen weights (adapters train in float32 whatever it is); bfloat16 halves memory on a GPU"
DEVICE_HELP = ("cpu, cuda, cuda:N, or auto (transformers' device_map='auto': a model larger than one GPU is sharded "
               "and soft tokens follow the hidden state to the device of the injection site)")


def backend_options(command):
    """`--backend`, `--remote`, `--dtype` and `--device`, passed as `backend`, `remote`, `dtype` and
    `device` (give all four to `load_backend`)."""
    command = click.option("--device", type=TEXT, default="cpu", show_default=True, metavar="cpu|cuda|cuda:N|auto",
                           help=DEVICE_HELP)(command)
    command = click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                           help=DTYPE_HELP)(command)
    command = click.option("--remote", type=TEXT, default="off", show_default=True, metavar="off|local|ndif|URL",
                           help=REMOTE_HELP)(command)
    return click.option("--backend", cls=BackendOption, type=BackendName(), default="hf", show_default=True)(command)


def check_backend(name: str) -> None:
    """Raise unless `name` is a registered backend: PluginNotInstalledError (with the install
    command, or the plugin's own failure) for a backend this project ships a plugin for,
    UnknownNameError for any other name."""
    from .plugins import plugin_errors, registry

    registered = registry().backends
    if name in registered:
        return
    if name in BACKEND_PLUGINS:
        install = f"pip install 'selfinterp-plugins[{BACKEND_PLUGINS[name]}]'"
        failure = next((e["error"] for e in plugin_errors() if e["plugin"] == name), None)
        if failure:
            raise PluginNotInstalledError(f"The {name} backend is not available: its plugin failed to load "
                                          f"({' '.join(failure.split())}); `selfinterp plugins` shows why.")
        raise PluginNotInstalledError(f"The {name} backend is not available: its plugin is not loaded (not installed, "
                                      f"or left out by SELFINTERP_PLUGINS); {install}.")
    raise UnknownNameError(f"Unknown backend {name!r}; registered: {', '.join(sorted(registered))} "
                           "(`selfinterp plugins` lists them).")


def _remote_value(remote) -> bool | str:
    text = str(remote).strip()
    if text.lower() in REMOTE_VALUES:
        return REMOTE_VALUES[text.lower()]
    if text.startswith(("http://", "https://")):
        return text
    raise OptionError(f"--remote takes off, local, ndif or an NDIF host URL (http://...), got {remote!r}.")


def check_device(device: str = "cpu") -> str:
    """`--device` as transformers' `device_map` takes it; a CUDA device on a machine without one is
    refused here, before minutes of loading end in torch's assertion."""
    text = str(device).strip().lower()
    if text in ("cpu", "auto"):
        return text
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        import torch

        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: torch sees no CUDA device on this machine; use --device cpu.")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                              "use cuda:0 up to the last one.")
        return text
    raise OptionError(f"--device takes cpu, cuda, cuda:N or auto, got {device!r}.")


def check_backend_options(backend: str = "hf", remote: str = "off", dtype: str = "float32",
                          device: str = "cpu") -> bool | str:
    """Check `--backend`, `--remote`, `--dtype` and `--device` before anything loads; returns
    `remote` as the nnsight backend takes it: False, "local", True (NDIF) or a host URL."""
    check_backend(backend)
    if dtype not in DTYPES:
        raise OptionError(f"--dtype takes {', '.join(DTYPES)}, got {dtype!r}.")
    check_device(device)
    value = _remote_value(remote)
    if value is not False and backend != "nnsight":
        raise OptionError(f"--remote {remote} needs --backend nnsight (only nnsight models run remotely); "
                          "add --backend nnsight, or drop --remote.")
    return value


def load_backend(model_name: str = DEFAULT_MODEL, backend: str = "hf", remote: str = "off", dtype: str = "float32",
                 device: str = "cpu"):
    """The backend object that runs `model_name` (an alias, hub id or local path) on `backend`;
    `Explainer.create` / `from_pretrained` and `topic_vectors` take it as their model.

    - hf: `models.load_model(model_name)` (offline for the bundled models and local directories).
    - nnsight: that transformers model wrapped in `nnsight.TransformersModel`; `remote="local"` runs
      each request through nnsight's rehearsal of the NDIF path, here. With `remote="ndif"` (or a
      host URL) no weights load here: `TransformersModel(hub id)` holds meta tensors, its config
      comes from the hub (or the hub cache), its tokenizer from `models.load_tokenizer`, and the
      weights used are NDIF's. Aliases of the bundled models are sent as their hub ids.
    - transformer_lens: a `TransformerBridge` around the loaded transformers model
      (`boot_transformers(..., hf_model=, tokenizer=)`, offline for any model `load_model` loads).
      The backend gets the model's own tokenizer, not TransformerLens's copy (which always
      prepends BOS), so an explainer trained on another backend sees its prompts as trained. A
      `HookedTransformer` is not built: `HookedTransformer.from_pretrained` takes only
      TransformerLens's official model names and reads their configs from the hub, so it cannot be
      built from an alias or a local directory offline.
    - another registered backend: its factory gets the loaded transformers model and tokenizer.

    `remote` is the `--remote` word: off, local, ndif, or an NDIF host URL (nnsight only); `dtype`
    and `device` are how the weights loaded here are held (`--dtype`, `--device`; NDIF holds its own).
    """
    remote_value = check_backend_options(backend, remote, dtype, device)
    import torch

    from .models import load_model
    from .plugins import backend_for

    device_map = check_device(device)  # normalised: "CUDA:0" -> "cuda:0"
    weights = {"dtype": getattr(torch, dtype), "device_map": None if device_map == "cpu" else device_map}
    if backend == "nnsight":
        lm = _nnsight_model(model_name, remote_value, weights)
        return backend_for(lm, lm.tokenizer, backend="nnsight", remote=remote_value)
    model, tokenizer = load_model(model_name, **weights)
    if backend == "transformer_lens":
        return backend_for(_transformer_bridge(model_name, model, tokenizer), tokenizer, backend="transformer_lens")
    return backend_for(model, tokenizer, backend=backend)


def _nnsight_model(model_name: str, remote: bool | str, weights: dict | None = None):
    """An nnsight model: around the weights loaded here, or (NDIF) meta tensors named by hub id."""
    from nnsight import TransformersModel

    from .models import hub_id, load_model, load_tokenizer

    if remote is False or remote == "local":
        model, tokenizer = load_model(model_name, **(weights or {}))
        return TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    name, tokenizer = hub_id(model_name), load_tokenizer(model_name)  # the tokenizer as load_model reads it
    try:
        return TransformersModel(name, tokenizer=tokenizer, task="text-generation")
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user-facing load error
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(f"Cannot describe {name!r} for NDIF ({type(exc).__name__}: {reason}); NDIF runs models "
                             "by hub id: pass one it serves, with network access (or its config in the hub "
                             "cache).") from exc


def _transformer_bridge(model_name: str, model, tokenizer):
    """A TransformerBridge around an already loaded transformers model: no download, no copy of the
    weights (the bridge wraps the model; its config comes from the model, not the hub)."""
    from transformer_lens.model_bridge import TransformerBridge

    name = getattr(model.config, "_name_or_path", None) or model_name
    try:
        return TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)
    except Exception as exc:  # noqa: BLE001 - an architecture TransformerLens cannot bridge is a user error
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise BackendError(f"TransformerLens cannot bridge {model_name!r} ({type(exc).__name__}: {reason}); "
                           "run it with --backend hf.") from exc
