"""Adapters: the tiny trainable map from a vector to one soft token.

The family and its semantics follow Pepper et al. 2026 (ANCHORS.md §1):
every adapter first L2-normalises its input, x̂ = x / (‖x‖ + 1e-8), scales are stored as
logs, biases start at zero. At evaluation time a scale s is applied *before* the adapter
with the adapter's own normalisation off: soft = adapter_without_norm(s · x̂). With s = 1
this is exactly the training-time map, so `adapter(x)` and `adapter(x, scale=1.0)` agree.

Adapters are saved as safetensors + a JSON config (`AdapterConfig`), never pickled.
`ridge_init` gives the linear adapters a closed-form start from training data: the map
from vectors to the input embeddings of their labels' first tokens. On a 135M model that
start is what makes training succeed (see docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .errors import ArtifactError, UnknownNameError, VectorError

EPS = 1e-8


@dataclass
class AdapterConfig:
    """Shape and initialisation of an adapter; saved next to its weights as JSON."""

    kind: str
    d_model: int
    init_scale: float = 5.0
    rank: int = 64
    low_rank_init_factor: float = 0.01

    #: the widest residual stream accepted (the largest open models are ~16k wide); a larger value
    #: in a config file is corruption, and a full-rank adapter of it would exhaust memory
    MAX_D_MODEL = 65536

    def __post_init__(self):
        if not isinstance(self.kind, str) or not self.kind:
            raise ArtifactError(f"Adapter kind must be a name such as 'scalar_affine', got {self.kind!r}; fix the config.")
        for name in ("d_model", "rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= self.MAX_D_MODEL:
                raise ArtifactError(f"Adapter {name} must be an integer in 1..{self.MAX_D_MODEL}, got {value!r}; fix the config.")
        for name in ("init_scale", "low_rank_init_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ArtifactError(f"Adapter {name} must be a positive number, got {value!r}; fix the config.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        if not isinstance(data, dict):
            raise ArtifactError(f"Adapter config must be a JSON object, got {type(data).__name__}; re-save the explainer.")
        known = {f.name for f in fields(cls)}
        missing = {"kind", "d_model"} - set(data)
        if missing:
            raise ArtifactError(
                f"Adapter config lacks {sorted(missing)}; re-save the explainer with save_pretrained()."
            )
        return cls(**{k: v for k, v in data.items() if k in known})


def normalize(x: torch.Tensor) -> torch.Tensor:
    """x / (‖x‖ + 1e-8) along the last dimension, as the reference code does."""
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


class Adapter(nn.Module):
    """Base class. Subclasses implement `project(x̂)` on already normalised (and scaled) input."""

    kind: str = ""
    #: parameter names `ridge_init` may set (subclasses list what their closed form fits)
    trainable: tuple[str, ...] = ()

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Map vectors (..., d_model) to soft tokens; `scale` is the evaluation-time s of §1."""
        check_vectors(x, self.d_model)
        x_hat = normalize(x.to(self.param_dtype))
        if scale is not None:
            s = torch.as_tensor(scale, dtype=x_hat.dtype, device=x_hat.device)
            if s.dim() == 1:
                s = s.unsqueeze(-1)
            x_hat = x_hat * s
        return self.project(x_hat)

    @property
    def param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def project(self, x_hat: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def ridge_init(self, vectors: torch.Tensor, targets: torch.Tensor, ridge: float = 1.0) -> None:
        """Set the adapter to the least-squares map from normalised vectors to `targets`.

        `targets` are usually the input embeddings of each label's first token. Each kind fits
        what it can express (a scalar and a bias, a rank-r map, a full matrix).
        """
        raise NotImplementedError(f"{self.kind} has no closed-form initialisation")


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

    def project(self, x_hat):
        return self.scale * x_hat

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        s = (x_hat * targets.float()).sum() / ((x_hat * x_hat).sum() + ridge)
        self.log_scale.copy_(s.clamp_min(1e-3).log())


class BiasOnly(ScaleOnly):
    """soft = s·x̂ + b with s frozen: the paper's observation that the bias alone gives most of the gain."""

    kind = "bias_only"

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        self.log_scale.requires_grad_(False)
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    def project(self, x_hat):
        return self.scale * x_hat + self.bias

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        self.bias.copy_((targets.float() - self.scale * x_hat).mean(0))


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

    def project(self, x_hat):
        return self.scale * x_hat + self.bias

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        x_hat = normalize(vectors.float())
        t = targets.float()
        xc, tc = x_hat - x_hat.mean(0), t - t.mean(0)
        s = ((xc * tc).sum() / ((xc * xc).sum() + ridge)).clamp_min(1e-3)
        self.log_scale.copy_(s.log())
        self.bias.copy_(t.mean(0) - s * x_hat.mean(0))


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

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        std = config.low_rank_init_factor * config.init_scale / math.sqrt(config.rank)
        self.U = nn.Parameter(torch.randn(config.d_model, config.rank) * std)
        self.V = nn.Parameter(torch.randn(config.d_model, config.rank) * std)
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    def low_rank_term(self, x_hat):
        return (x_hat @ self.U) @ self.V.T

    def project(self, x_hat):
        return self.low_rank_term(x_hat) + self.bias

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

    def __init__(self, config: AdapterConfig):
        super().__init__(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def project(self, x_hat):
        return self.scale * x_hat + self.low_rank_term(x_hat) + self.bias

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

    def project(self, x_hat):
        return x_hat @ self.weight.T + self.bias

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        w, b = _ridge_solution(vectors, targets, ridge)
        self.weight.copy_(w.T.float())
        self.bias.copy_(b.float())


class RawVector(Adapter):
    """soft = scale·x, no normalisation and no parameters: the untrained baselines that inject the
    vector as it is (SelfIE, Patchscopes; ANCHORS.md §2). `scale=1` is the raw vector."""

    kind = "raw"

    def forward(self, x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
        check_vectors(x, self.d_model)
        x = x.float()
        if scale is None:
            return x
        s = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        return x * (s.unsqueeze(-1) if s.dim() == 1 else s)

    @torch.no_grad()
    def ridge_init(self, vectors, targets, ridge=1.0):
        raise ArtifactError("The raw adapter has no parameters to fit; use it untrained.")


BUILTIN_ADAPTERS: dict[str, type[Adapter]] = {
    cls.kind: cls for cls in (ScaleOnly, BiasOnly, ScalarAffine, LowRank, ScalarAffinePlusLowRank, FullRank)
}


def make_adapter(config: AdapterConfig, registry: dict[str, type[Adapter]] | None = None) -> Adapter:
    """Build an adapter from its config, looking its kind up in the plugin registry."""
    if registry is None:
        from .plugins import get_adapter_classes

        registry = get_adapter_classes()
    try:
        cls = registry[config.kind]
    except KeyError:
        raise UnknownNameError(
            f"Unknown adapter kind {config.kind!r}; choose one of: {', '.join(sorted(registry))}."
        ) from None
    return cls(config)
