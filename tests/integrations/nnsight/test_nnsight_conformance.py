"""The nnsight backend passes the conformance suite run here and through its remote path rehearsed
offline (`remote="local"`: every verb one request, serialised as for NDIF)."""

from __future__ import annotations

import pytest

pytest.importorskip("nnsight")

from nnsight import TransformersModel  # noqa: E402

from selfinterp_nnsight.backend import NNsightBackend  # noqa: E402
from selfinterp_plugins.testing import BackendConformance  # noqa: E402


class TestNNsight(BackendConformance):
    archs = ("llama", "gpt2", "gemma3")

    def make_backend(self, model, tokenizer):
        return NNsightBackend(TransformersModel(model, tokenizer=tokenizer))


class TestNNsightRemoteRehearsal(BackendConformance):
    archs = ("llama", "gpt2")
    differentiable_logits = False  # a remote `logits` returns values; training goes through `loss`
    runs_through_primitives = False  # remote, each verb is one request

    def make_backend(self, model, tokenizer):
        return NNsightBackend(TransformersModel(model, tokenizer=tokenizer), remote="local")
