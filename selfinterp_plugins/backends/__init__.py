"""Backends run a frozen model with soft tokens injected; `hf` ships with the core."""

from .base import Backend, Sampling
from .hf import HFBackend

__all__ = ["Backend", "HFBackend", "Sampling"]
