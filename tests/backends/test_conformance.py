"""The hf backend passes the conformance suite (trivially: it is the reference, on another copy of
the same weights), and so does hf with activation checkpointing."""

from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.testing import BackendConformance


class TestHF(BackendConformance):
    archs = ("llama", "gpt2", "gemma3")

    def make_backend(self, model, tokenizer):
        return HFBackend(model, tokenizer)


class TestHFCheckpointing(BackendConformance):
    archs = ("llama",)

    def make_backend(self, model, tokenizer):
        return HFBackend(model, tokenizer, checkpointing=True)
