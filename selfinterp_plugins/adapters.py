"""Adapters: the tiny trainable map from a vector to one soft token.

The family and its semantics follow Pepper et al. 2026 (docs/fidelity.md):
every adapter first L2-normalises its input, x̂ = x / (‖x‖ + 1e-8), scales are stored as
logs, biases start at zero. At evaluation time a scale s is applied *before* the adapter
with the adapter's own normalisation off: soft = adapter_without_norm(s · x̂). With s = 1
this is exactly the training-time map, so `adapter(x)` and `adapter(x, scale=1.0)` agree.

Each kind owns its math as one pure function, `Kind.math(params, x, scale)`: the adapter's
tensors by name, the vectors and the optional scales in, soft tokens out. `Adapter.forward` calls
it, and so does every backend that runs the adapter itself (nnsight runs it inside its traced
request, on NDIF too), so a kind is computed the same everywhere and no backend knows any kind.

Each kind also names its config dataclass (`config_class`, see adapter_configs.py), as PEFT
does. Adapters are saved as safetensors + that config as JSON, never pickled. `ridge_init` gives
the linear adapters a closed-form start from training data: the map from vectors to the input
embeddings of their labels' first tokens. On a 135M model that start is what makes training
succeed (see docs/results.md); a kind without one says so (`UnsupportedInitError`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .adapter_configs import AdapterConfig, LowRankConfig, adapter_class
from .errors import UnsupportedInitError, VectorError

# public: `normalize` is what a kind's `math` starts with (hookspecs.register_adapters); `ridge_fit` is
# the closed-form start of the adapters and of a plugin's own projections (the PEFT LoRA explainer)
__all__ = ["Adapter", "AdapterConfig", "LowRankConfig", "make_adapter", "normalize", "ridge_fit"]

EPS = 1e-8


def normalize(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x / (‖x‖ + 1e-8) along the last dimension, as the reference code does; then times `scale`
    if given (a 0-d tensor, or one value per row). The first step of every normalising kind's math."""
    return scaled(x / (x.norm(dim=-1, keepdim=True) + EPS), scale)


def scaled(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x times the evaluation-time scale: one number, or one per row (a 1-d tensor; a row may hold
    several vectors, (N, K, d), for a prompt that takes K)."""
    if scale is None:
        return x
    return x * (scale.reshape(-1, *[1] * (x.dim() - 1)) if scale.dim() == 1 else scale)


class Adapter(nn.Module):
    """Base class. A kind sets `kind`, builds its parameters in `__init__`, and defines `math`."""

    kind: str = ""
    #: the dataclass this kind's config is (a subclass of AdapterConfig for kinds with options)
    config_class: type[AdapterConfig] = AdapterConfig

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config

    def __init_subclass__(cls, **kwargs):
        """Refuse, where the kind is written, a `math` that is not a staticmethod: as a method it
        would receive the adapter itself, which cannot travel with a remote request."""
        super().__init_subclass__(**kwargs)
        if "math" in cls.__dict__ and not isinstance(cls.__dict__["math"], staticmethod):
            raise TypeError(f"{cls.__name__}.math must be a @staticmethod math(params, x, scale=None).")

    @staticmethod
    def math(params: dict[str, torch.Tensor], x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Soft tokens (..., d_model) from vectors x (..., d_model): the kind's whole computation.

        `params` are the adapter's tensors by name (`tensors()`), `scale` the evaluation-time s
        (None, a 0-d tensor or one per row). A pure function of torch only, defined as a
        staticmethod: backends ship it to where the model runs (nnsight sends it by value to NDIF),
        so it may call torch and functions of its own module or of this one (`normalize`), nothing
        else. Normalising kinds start with `normalize(x, scale)`."""
        raise NotImplementedError("An adapter kind must define math(params, x, scale) as a staticmethod.")

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's parameters and buffers by name: what `math` reads."""
        return {**dict(self.named_buffers()), **dict(self.named_parameters())}

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Map vectors (..., d_model) to soft tokens; `scale` is the evaluation-time s of §1."""
        check_vectors(x, self.d_model)
        x = x.to(self.param_dtype)
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        return self.math(self.tensors(), x, scale)

    @property
    def param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @classmethod
    def has_ridge_init(cls) -> bool:
        """Whether the kind has a closed-form ridge start: `selfinterp train` starts such kinds with
        it by default and the others with their own init (`--init paper`), since `--init ridge` fails
        for them. A kind that overrides `ridge_init` has one; override this to say otherwise."""
        return cls.ridge_init is not Adapter.ridge_init

    @torch.no_grad()
    def ridge_init(self, vectors: torch.Tensor, targets: torch.Tensor, ridge: float = 1.0) -> None:
        """Set the adapter to the least-squares map from normalised vectors to `targets`.

        `targets` are usually the input embeddings of each label's first token. Each kind fits
        what it can express (a scalar and a bias, a rank-r map, a full matrix); a kind without a
        closed form keeps this default, which tells the user to start from the kind's own init."""
        raise UnsupportedInitError(f"Adapter kind {self.kind!r} has no ridge initialisation; train it with "
                                   "init='paper' (selfinterp train --init paper).")


def check_vectors(x: torch.Tensor, d_model: int) -> None:
    """Refuse vectors an adapter cannot use, with the fix in the message."""
    if not isinstance(x, torch.Tensor):
        raise VectorError(f"Vectors must be a torch.Tensor, got {type(x).__name__}; wrap them with torch.as_tensor(...).")
    if x.dim() == 0:
        raise VectorError("Got a scalar where vectors were expected; pass shape (d_model,) or (N, d_model).")
    if not x.is_floating_point():
        raise VectorError(f"Vectors must be floating point, got {x.dtype}; convert them with .float().")
    if x.shape[-1] != d_model:
        raise VectorError(
            f"Vector size {x.shape[-1]} does not match the model's d_model {d_model}; "
            "pass vectors read from this model (same layer width)."
        )
    if not torch.isfinite(x).all():
        raise VectorError("Vectors contain NaN or infinite values; drop or repair those rows before explaining.")


class ScaleOnly(Adapter):
    """soft = s·x̂. With s frozen this is the untrained SelfIE-style baseline."""

    kind = "scale_only"

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @staticmethod
    def math(params, x, scale=None):
        return params["log_scale"].exp() * normalize(x, scale)

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        s = (x_hat * targets.float()).sum() / ((x_hat * x_hat).sum() + ridge)
        self.log_scale.copy_(s.clamp_min(1e-3).log())


class ScalarAffine(Adapter):
    """soft = s·x̂ + b: the paper's headline adapter, d_model + 1 parameters."""

    kind = "scalar_affine"

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @staticmethod
    def math(params, x, scale=None):
        return params["log_scale"].exp() * normalize(x, scale) + params["bias"]

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        t = targets.float()
        xc, tc = x_hat - x_hat.mean(0), t - t.mean(0)
        s = ((xc * tc).sum() / ((xc * xc).sum() + ridge)).clamp_min(1e-3)
        self.log_scale.copy_(s.log())
        self.bias.copy_(t.mean(0) - s * x_hat.mean(0))


class BiasOnly(ScalarAffine):
    """soft = s·x̂ + b with s frozen: the paper's observation that the bias alone gives most of the gain."""

    kind = "bias_only"

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        self.log_scale.requires_grad_(False)

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        self.bias.copy_((targets.float() - self.scale * x_hat).mean(0))


def ridge_fit(x: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve min ‖XW + b − T‖² + ridge‖W‖² (bias unpenalised) in float64; returns W (d_in×d_out,
    x·W) and b. The closed-form start of the adapters here and of the PEFT plugin's projections."""
    x, t = x.double(), targets.double()
    x_mean, t_mean = x.mean(0), t.mean(0)
    xc, tc = x - x_mean, t - t_mean
    gram = xc.T @ xc + ridge * torch.eye(xc.shape[1], dtype=xc.dtype)
    w = torch.linalg.solve(gram, xc.T @ tc)
    return w, t_mean - x_mean @ w


def _ridge_solution(vectors: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`ridge_fit` on the normalised vectors x̂ the adapters read."""
    return ridge_fit(normalize(vectors.double()), targets, ridge)


class LowRank(Adapter):
    """soft = x̂·U·Vᵀ + b (the reference's `low_rank_only`)."""

    kind = "low_rank"
    config_class = LowRankConfig

    def __init__(self, config: LowRankConfig):
        super().__init__(config)
        std = config.low_rank_init_factor * config.init_scale / math.sqrt(config.rank)
        self.U = nn.Parameter(torch.randn(config.d_model, config.rank) * std)
        self.V = nn.Parameter(torch.randn(config.d_model, config.rank) * std)
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    @staticmethod
    def math(params, x, scale=None):
        return (normalize(x, scale) @ params["U"]) @ params["V"].T + params["bias"]

    @torch.no_grad()
    def _set_low_rank(self, w: torch.Tensor) -> None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = self.config.rank
        root = s[:r].sqrt()
        self.U.copy_((u[:, :r] * root).float())
        self.V.copy_((vh[:r].T * root).float())

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        w, b = _ridge_solution(vectors, targets, ridge)
        self._set_low_rank(w)
        self.bias.copy_(b.float())


class ScalarAffinePlusLowRank(LowRank):
    """soft = s·x̂ + x̂·U·Vᵀ + b."""

    kind = "scalar_affine_plus_low_rank"

    def __init__(self, config: LowRankConfig):
        super().__init__(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    @staticmethod
    def math(params, x, scale=None):
        x_hat = normalize(x, scale)
        return params["log_scale"].exp() * x_hat + (x_hat @ params["U"]) @ params["V"].T + params["bias"]

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        w, b = _ridge_solution(vectors, targets, ridge)
        s = torch.diagonal(w).mean().clamp_min(1e-3)
        self.log_scale.copy_(s.log().float())
        self._set_low_rank(w - s * torch.eye(w.shape[0], dtype=w.dtype))
        self.bias.copy_(b.float())


class FullRank(Adapter):
    """soft = W·x̂ + b; the paper's init draws W ~ N(0, (init_scale·√(1/d))²) (a random matrix, no
    identity term; `projection.py`), b = 0, so the soft token starts at about init_scale in norm."""

    kind = "full_rank"

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        std = config.init_scale * math.sqrt(2.0 / (config.d_model + config.d_model))
        self.weight = nn.Parameter(torch.randn(config.d_model, config.d_model) * std)
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    @staticmethod
    def math(params, x, scale=None):
        return normalize(x, scale) @ params["weight"].T + params["bias"]

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        w, b = _ridge_solution(vectors, targets, ridge)
        self.weight.copy_(w.T.float())
        self.bias.copy_(b.float())


class RawVector(Adapter):
    """soft = scale·x, no normalisation and no parameters: the untrained baselines that inject the
    vector as it is (SelfIE, Patchscopes). `scale=1` is the raw vector."""

    kind = "raw"

    @staticmethod
    def math(params, x, scale=None):
        return scaled(x, scale)


BUILTIN_ADAPTERS: dict[str, type[Adapter]] = {
    cls.kind: cls for cls in (ScaleOnly, BiasOnly, ScalarAffine, LowRank, ScalarAffinePlusLowRank, FullRank)
}


def make_adapter(config: AdapterConfig, registry: dict[str, type[Adapter]] | None = None) -> Adapter:
    """Build an adapter from its config, looking its kind up in the plugin registry. A config of
    another class (say a plain AdapterConfig for a low-rank kind) is read into the kind's own."""
    cls = adapter_class(config.kind, registry)
    if not isinstance(config, cls.config_class):
        config = cls.config_class.from_dict(config.to_dict())
    return cls(config)
