"""What a third-party backend's tests need: the conformance suite and a factory."""

from selfinterp_plugins.testing import BackendConformance
from selfinterp_toy_backend import ToyBackend, ToyModel


class TestToyBackend(BackendConformance):
    archs = ("gpt2",)  # the toy model is a GPT-2

    def make_backend(self, model, tokenizer):
        return ToyBackend(ToyModel.from_gpt2(model, tokenizer))
