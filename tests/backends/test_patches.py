"""A LowRankPatch on the model while an explainer runs: PEFT's LoRA term on each named linear,
on for the block and off after, refused for a module the model lacks or of another width."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins.backends import HFBackend, LowRankPatch
from selfinterp_plugins.errors import BackendError


def _patch(model, rank=2, seed=0, names=("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")):
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name in names:
        linear = model.get_submodule(name)
        modules["base_model.model." + name] = (torch.randn(rank, linear.in_features, generator=g),
                                               torch.randn(linear.out_features, rank, generator=g), 0.5)
    return LowRankPatch(modules)


def test_the_patch_adds_scale_x_a_b_to_each_module_then_comes_off(tiny_llama):
    model, tok = tiny_llama
    patch = _patch(model)
    assert sorted(patch.modules) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    x = torch.randn(3, 64)
    linear = model.get_submodule("model.layers.0.self_attn.q_proj")
    a, b, scale = patch.modules["model.layers.0.self_attn.q_proj"]
    plain = linear(x)
    backend = HFBackend(model, tok)
    with backend.patched(patch):
        patched = linear(x)
    torch.testing.assert_close(patched, plain + 0.5 * (x @ a.T) @ b.T, atol=1e-6, rtol=0)
    assert torch.equal(linear(x), plain)  # off again
    assert patch.num_floats == 2 * (64 + 64) + 2 * (128 + 64)


def test_a_module_the_model_lacks_or_of_another_width_is_refused(tiny_llama):
    model, tok = tiny_llama
    backend = HFBackend(model, tok)
    with pytest.raises(BackendError, match="no module 'model.layers.7.mlp.up_proj'"):
        with backend.patched(LowRankPatch({"model.layers.7.mlp.up_proj": (torch.ones(1, 64), torch.ones(128, 1), 1.0)})):
            pass
    with pytest.raises(BackendError, match=r"is 64x64 \(out x in\) in this model but the patch is for 64x32"):
        with backend.patched(LowRankPatch({"model.layers.0.self_attn.q_proj": (torch.ones(1, 32), torch.ones(64, 1), 1.0)})):
            pass
    with pytest.raises(BackendError, match=r"not \(r, in\) and \(out, r\)"):
        LowRankPatch({"x": (torch.ones(2, 3), torch.ones(3, 1), 1.0)})


def test_the_shared_prefix_of_a_patched_call_is_not_reused_unpatched(tiny_llama):
    """The prefix cache is the model's: a patched call must not leave one behind for an
    unpatched call, nor use one an unpatched call left."""
    from selfinterp_plugins import Explainer, Sampling

    model, tok = tiny_llama
    backend = HFBackend(model, tok)
    plain = Explainer.create(backend, adapter="scale_only", template="echo")
    vectors = torch.randn(2, 64)
    sampling = Sampling(max_new_tokens=6)
    before = [r["text"] for r in plain.explain(vectors, sampling=sampling, progress=False)]
    patched = Explainer(backend, plain.adapter, plain.template, plain.site)
    patched.model_patch = _patch(model, rank=4, names=("model.layers.0.self_attn.v_proj",))
    with_patch = [r["text"] for r in patched.explain(vectors, sampling=sampling, progress=False)]
    after = [r["text"] for r in plain.explain(vectors, sampling=sampling, progress=False)]
    fresh = Explainer(HFBackend(model, tok), plain.adapter, plain.template, plain.site)
    fresh.model_patch = patched.model_patch
    assert after == before and with_patch != before
    assert [r["text"] for r in fresh.explain(vectors, sampling=sampling, progress=False)] == with_patch
