"""selfie-adapters files as the reference writes and reads them (agencyenterprise/selfie-adapters
at 7158081), re-stated from its code for the tests; nothing here imports this library.

The reference ships no writer of its safetensors files (the published ones were converted from
its `.pt` checkpoints); their layout is what its loader reads, `selfie_adapters/inference.py`
`SelfIEAdapter._load_safetensors` (lines 92-142): tensors = the projection module's
`state_dict()` (`projection.py`: `log_scale` is `nn.Parameter(torch.zeros(1))`, lines 70, 101,
281; `bias` (d,); `U`, `V` (d, r); `weight` (d, d)), and a `__metadata__` of strings holding either
`config_json` (its `["projection"]` section, line 118) or the flat keys of lines 121-127, plus
`model_dim`, `global_step`, `best_val_loss` (lines 130-140). `write_reference_file` writes exactly
that with `safetensors.torch.save_file`, as any conversion would.
"""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

#: `training/config.py` lines 57-62 (SoftPromptConfig.template) and 63 (reserved_token)
LLAMA31_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    'What is the meaning of "<|reserved_special_token_0|>"?<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    'The meaning of "<|reserved_special_token_0|>" is "'
)
RESERVED_TOKEN = "<|reserved_special_token_0|>"
KINDS = ("scale_only", "scalar_affine", "low_rank_only", "scalar_affine_plus_low_rank", "full_rank")
LOW_RANK = ("low_rank_only", "scalar_affine_plus_low_rank")


def reference_state(kind: str, d: int, r: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A projection's `state_dict()` (`projection.py` __init__ of each class), every entry random
    so that no term hides behind a zero."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"scale_only": {"log_scale": (1,)}, "scalar_affine": {"log_scale": (1,), "bias": (d,)},
              "low_rank_only": {"U": (d, r), "V": (d, r), "bias": (d,)},
              "scalar_affine_plus_low_rank": {"log_scale": (1,), "U": (d, r), "V": (d, r), "bias": (d,)},
              "full_rank": {"weight": (d, d), "bias": (d,)}}[kind]
    return {name: torch.randn(shape, generator=g) * (0.5 if name == "log_scale" else 0.3) for name, shape in shapes.items()}


def reference_config(kind: str, r: int | None, init_scale: float = 5.0) -> dict:
    """`training/config.py::Config.to_dict()` for a run of `kind` (the sections the loader and a
    reader of the file use; the logging and training sections left out)."""
    return {
        "model": {"name": "meta-llama/Meta-Llama-3.1-8B-Instruct", "dtype": "bfloat16"},
        "data": {"eos_token": "<|eot_id|>", "batch_size": 80},
        "projection": {"type": kind, "normalize_input": True, "init_scale": init_scale,
                       "low_rank_rank": r if kind in LOW_RANK else None, "low_rank_init_factor": 0.01},
        "soft_prompt": {"template": LLAMA31_TEMPLATE, "reserved_token": RESERVED_TOKEN},
        "seed": 42,
    }


def write_reference_file(path, kind: str, state: dict, style: str, d: int, full_config: bool = False,
                         extra_meta: dict | None = None) -> None:
    """A selfie-adapters file in one of the two metadata styles `inference.py` reads:
    `config_json` (lines 116-118; `full_config` writes the whole Config.to_dict(), else only its
    projection section) or `flat` (lines 121-127: projection_type, normalize_input, init_scale,
    low_rank_rank)."""
    r = state["U"].shape[1] if "U" in state else None
    if style == "config_json":
        config = reference_config(kind, r)
        meta = {"config_json": json.dumps(config if full_config else {"projection": config["projection"]})}
    elif style == "flat":
        meta = {"projection_type": kind, "normalize_input": "true", "init_scale": "5.0"}
        if r is not None:
            meta["low_rank_rank"] = str(r)
    else:
        raise ValueError(style)
    meta.update(model_dim=str(d), global_step="2044", best_val_loss="1.8125")
    meta.update(extra_meta or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)


def reference_loader_checks(path) -> tuple[dict, int, dict[str, torch.Tensor]]:
    """What the reference's `SelfIEAdapter(path)` checks before it will use a file, re-stated:
    a metadata header (line 109); `config_json["projection"]` or the flat keys (116-127); a known
    projection type (`create_projection_module`, projection.py 390-420), a rank and an init factor
    for the low-rank types (400-413, 219-223, 303-307); `model_dim` an int (131); and
    `load_state_dict` (line 78), strict: exactly the module's parameter names and shapes."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta is not None, "no metadata header"
    if "config_json" in meta:
        proj = json.loads(meta["config_json"])["projection"]
    else:
        proj = {"type": meta.get("projection_type", ""), "normalize_input": meta.get("normalize_input", "true").lower() == "true",
                "init_scale": float(meta["init_scale"]) if "init_scale" in meta else 30.0,
                "low_rank_rank": int(meta["low_rank_rank"]) if meta.get("low_rank_rank") else None,
                "low_rank_init_factor": None}
    assert proj["type"] in KINDS, proj["type"]
    assert isinstance(proj["normalize_input"], bool)
    if proj["type"] in LOW_RANK:
        assert proj.get("low_rank_rank") is not None and proj["low_rank_rank"] > 0
        assert proj.get("low_rank_init_factor") is not None
    d = int(meta["model_dim"])
    state = load_file(str(path))
    r = proj.get("low_rank_rank")
    expected = {n: tuple(t.shape) for n, t in reference_state(proj["type"], d, r or 1).items()}
    assert {n: tuple(t.shape) for n, t in state.items()} == expected
    return proj, d, state


def reference_transform(kind: str, state: dict, vectors: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """`SelfIEAdapter.transform` (inference.py 221-269) through each projection's `forward`:
    x / (‖x‖₂ + 1e-8) (`_normalize_if_needed`, projection.py 48-53) unless normalisation is off, then
    `scale * x` (75), `scale * x + bias` (109), `x @ W.T + bias` (147), `(x @ U) @ V.T + bias`
    (214-216), `scale * x + (x @ U) @ V.T + bias` (294-300), scale = exp(log_scale)."""
    x = vectors.float()
    if normalize:
        x = x / (torch.norm(x, p=2, dim=-1, keepdim=True) + 1e-8)
    if kind == "scale_only":
        return torch.exp(state["log_scale"]) * x
    if kind == "scalar_affine":
        return torch.exp(state["log_scale"]) * x + state["bias"]
    if kind == "full_rank":
        return torch.matmul(x, state["weight"].T) + state["bias"]
    if kind == "low_rank_only":
        return torch.matmul(torch.matmul(x, state["U"]), state["V"].T) + state["bias"]
    if kind == "scalar_affine_plus_low_rank":
        scale_term = torch.exp(state["log_scale"]) * x
        return scale_term + torch.matmul(torch.matmul(x, state["U"]), state["V"].T) + state["bias"]
    raise KeyError(kind)


def reference_eval_soft_tokens(kind: str, state: dict, vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """The eval convention, `evals/generation_scoring/evaluation_functions.py` (the label-generator
    loop): each vector divided by its norm (no epsilon, when > 0), times the scale, stacked, then
    `AdapterProjection.forward` = `transform(..., normalize_input=False)` (`label_generator.py` 32-35)."""
    rows = []
    for v in vectors:
        norm = torch.norm(v)
        rows.append((v / norm if norm > 0 else v) * scale)
    return reference_transform(kind, state, torch.stack(rows), normalize=False)
