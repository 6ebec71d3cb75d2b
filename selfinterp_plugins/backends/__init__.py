"""Backends run a frozen model with soft tokens injected; `hf` ships with the core.

A backend supplies a few primitives (`Backend.run`, `head`, `read`, facts) and inherits the
verbs; `Injection` is what `run` is told to write. See docs/plugins.md, "Writing a backend"."""

from .base import Backend
from .decoding import Sampling
from .hf import HFBackend
from .inputs import AdapterInput, Injection, clamped_cross_entropy, pad_token_id

__all__ = ["AdapterInput", "Backend", "HFBackend", "Injection", "Sampling", "clamped_cross_entropy", "pad_token_id"]
