"""Offline stand-ins of the papers' published artifacts: the same files, names and layout as the
hub repositories, with random values, for a model of any width.

No hub is reachable on the machines that test this library, so docs/artifacts.md runs the lines a
researcher types on these instead (a local folder works wherever a hub repo id does), and a user
can rehearse a script offline before pointing it at the real repository. The values are random:
the labels they give are noise; the files' layout, kinds and metadata are the published ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .storage._files import output_errors, save_safetensors

__all__ = ["PEPPER_REPO", "PEPPER_FILES", "selfie_adapters_stand_in"]

#: the hub repository of Pepper et al.'s adapters for Llama-3.1-8B-Instruct, and its files
PEPPER_REPO = "keenanpepper/selfie-adapters-llama-3.1-8b-instruct"
PEPPER_FILES = {"goodfire-sae-scalar-affine.safetensors": "scalar_affine",
                "wikipedia-full-rank.safetensors": "full_rank",
                "wikipedia-scalar-affine.safetensors": "scalar_affine"}


def selfie_adapters_stand_in(directory, model, layer: int | None = None, seed: int = 0) -> Path:
    """A folder laid out like `PEPPER_REPO` for `model` (anything with `config.hidden_size`, or an
    int width): the three adapters in the reference's file format (state dict + `config_json`
    metadata) and `mean-vectors.safetensors` with the key `layer_{layer}` (default: the model's
    last layer, where the paper's file has layer 19 of 32). Returns the folder."""
    config = getattr(model, "config", None)
    d = int(model) if isinstance(model, int) else int(config.hidden_size)
    layer = layer if layer is not None else (int(config.num_hidden_layers) - 1 if config is not None else 0)
    g = torch.Generator().manual_seed(seed)
    directory = Path(directory)
    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    for name, kind in PEPPER_FILES.items():
        if kind == "scalar_affine":
            state = {"log_scale": torch.tensor([math.log(2.0)]), "bias": torch.randn(d, generator=g) * 0.5}
        else:
            state = {"weight": torch.randn(d, d, generator=g) * (2.0 / math.sqrt(d)), "bias": torch.randn(d, generator=g) * 0.5}
        projection = {"type": kind, "normalize_input": True, "init_scale": 5.0, "low_rank_rank": None,
                      "low_rank_init_factor": 0.01}
        meta = {"config_json": json.dumps({"projection": projection}), "model_dim": str(d), "global_step": "1000",
                "best_val_loss": "1.5"}
        save_safetensors(state, directory / name, metadata=meta)
    save_safetensors({f"layer_{layer}": torch.randn(d, generator=g)}, directory / "mean-vectors.safetensors")
    return directory
