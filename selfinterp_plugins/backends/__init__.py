"""Backends run a frozen model with soft tokens injected; `hf` ships with the core.

A backend supplies a few primitives (`Backend.run`, `head`, `read`, facts) and inherits the
verbs; `Injection` is what `run` is told to write, `LowRankPatch` a change to the model's linear
layers that an explainer turns on for its calls (`Backend.patched`). See docs/plugins.md, "Writing a backend"."""

from .base import Backend
from .decoding import Sampling
from .hf import HFBackend
from .inputs import AdapterInput, Injection, clamped_cross_entropy, pad_token_id
from .patches import LowRankPatch

__all__ = ["AdapterInput", "Backend", "HFBackend", "Injection", "LowRankPatch", "Sampling", "clamped_cross_entropy",
           "pad_token_id"]
