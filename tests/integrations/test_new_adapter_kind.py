"""A new adapter kind, defined here and registered as no built-in, computed as itself by every
backend: its parameter is named `weight` like full_rank's, but its math is elementwise,
soft = x̂ ⊙ weight + bias. No backend may know a kind (issue 18, item 2): hf, nnsight here,
nnsight's remote path (`remote="local"`: the request serialised as for NDIF) and TransformerLens
give the soft tokens of that formula and the logits and greedy labels those soft tokens give, and a
training step on hf and on nnsight (here and remote) takes the same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("nnsight")
pytest.importorskip("transformer_lens")

from nnsight import TransformersModel  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from selfinterp_nnsight.requests import modules_needed, recording_requests  # noqa: E402
from selfinterp_plugins import Adapter, AdapterConfig, Explainer, Sampling, TrainConfig, VectorLabelDataset  # noqa: E402
from selfinterp_plugins.adapters import normalize  # noqa: E402
from selfinterp_plugins.backends import HFBackend  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.plugins import backend_for  # noqa: E402
from selfinterp_plugins.sites import Site  # noqa: E402
from selfinterp_plugins.templates import PromptTemplate  # noqa: E402

SITE = "resid_pre.1"
SAMPLING = Sampling(max_new_tokens=6)
LABELS = ["cat", "a dog", "the big red house"]


class Elementwise(Adapter):
    """soft = x̂ ⊙ weight + bias: one weight per dimension, named like full_rank's matrix."""

    kind = "elementwise"

    def __init__(self, config):
        super().__init__(config)
        self.weight = nn.Parameter(torch.full((config.d_model,), float(config.init_scale)))
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    @staticmethod
    def math(params, x, scale=None):
        return normalize(x, scale) * params["weight"] + params["bias"]


def expected(adapter, x, scale=None):
    """The kind's formula written out here, independently of the library."""
    x_hat = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    if scale is not None:
        x_hat = x_hat * scale[:, None]
    return (x_hat * adapter.weight + adapter.bias).detach()


def explainer_on(model, state, template="echo"):
    """An explainer with an Elementwise adapter holding `state`, built directly (no registry)."""
    backend = backend_for(model)
    adapter = Elementwise(AdapterConfig("elementwise", backend.d_model))
    adapter.load_state_dict(state)
    return Explainer(backend, adapter, PromptTemplate.named(template, backend.tokenizer), Site.parse(SITE))


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama", seed=3, initializer_range=0.2)
    g = torch.Generator().manual_seed(0)
    state = {"weight": torch.randn(64, generator=g) * 4, "bias": torch.randn(64, generator=g)}
    lm = TransformersModel(model, tokenizer=tok)
    return {"hf": explainer_on(HFBackend(model, tok), state), "nnsight": explainer_on(lm, state), "state": state,
            "vectors": torch.randn(3, 64, generator=g) * 5, "tok": tok}


def test_soft_tokens_logits_and_greedy_labels_are_the_kinds_on_hf_and_nnsight(setup):
    hf, ours, vectors = setup["hf"], setup["nnsight"], setup["vectors"]
    scales = torch.tensor([0.5, 1.0, 3.0])
    soft = expected(hf.adapter, vectors, scales)
    torch.testing.assert_close(hf.soft_tokens(vectors, scale=scales), soft, rtol=0, atol=1e-6)
    n, last = len(vectors), len(hf.prompt_ids) - 1
    ids, mask = hf.prompt_ids.expand(n, -1), hf.inject_mask.expand(n, -1)
    positions = torch.tensor([[last, last - 1]] * n)
    with torch.no_grad():
        want = hf.backend.logits(ids, soft, mask, hf.site, positions, hf.prefix_len)
        assert not torch.allclose(want, hf.backend.logits(ids, torch.zeros_like(soft), mask, hf.site, positions))
        labels = [text for _, text in hf.generate_labels(vectors, scales, SAMPLING)]
        for remote in (False, "local"):
            with ours.backend.remote_mode(remote), recording_requests() as blobs:
                got = ours.backend.logits(ids, ours._backend_input(vectors, scales), mask, ours.site, positions,
                                          ours.prefix_len)
                assert [text for _, text in ours.generate_labels(vectors, scales, SAMPLING)] == labels, remote
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # remote: the kind's tensors and its math travelled, not soft tokens, and NDIF needs neither
    # this package nor this test module to load the request
    assert len(blobs) == 2
    for blob in blobs:
        carried = {name: value.numpy().tobytes() in blob
                   for name, value in {"weight": ours.adapter.weight.detach(), "vectors": vectors, "soft": soft}.items()}
        assert carried == {"weight": True, "vectors": True, "soft": False}
        needed = modules_needed(blob, ours.backend.model)
        assert not {m for m in needed if m.startswith("selfinterp") or m == __name__}, needed


def test_a_training_step_takes_the_same_gradients_on_hf_and_nnsight(setup):
    hf, vectors = setup["hf"], setup["vectors"]
    hf.adapter.zero_grad()
    loss = hf.loss(vectors, LABELS)
    loss.backward()
    want = {n: p.grad.clone() for n, p in hf.adapter.named_parameters()}
    data = VectorLabelDataset(vectors, [{"id": str(i), "label": label} for i, label in enumerate(LABELS)])
    config = TrainConfig(max_steps=1, batch_size=3, warmup_steps=0, seed=1)
    reference = explainer_on(hf.backend, setup["state"])
    reference.train(data, config=config, progress=False)
    for remote in (False, "local"):
        ours = explainer_on(setup["nnsight"].backend.model, setup["state"])
        with ours.backend.remote_mode(remote):
            got = ours.loss(vectors, LABELS)
            got.backward()
            torch.testing.assert_close(got.detach(), loss.detach(), rtol=0, atol=1e-5)
            for name, grad in want.items():
                torch.testing.assert_close(dict(ours.adapter.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
            ours.adapter.load_state_dict(setup["state"])
            ours.train(data, config=config, progress=False)
        for name, value in reference.adapter.state_dict().items():
            torch.testing.assert_close(ours.adapter.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def tiny_hooked(tokenizer) -> HookedTransformer:
    """A llama-like HookedTransformer built from a config, as tests/integrations/transformer_lens does."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_mlp=128,
                                  d_vocab=len(tokenizer), seed=0, device="cpu", initializer_range=0.2,
                                  normalization_type="RMS", positional_embedding_type="rotary", act_fn="silu",
                                  gated_mlp=True, rotary_dim=16)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_transformer_lens_injects_the_kinds_soft_tokens(setup):
    """TransformerLens receives soft tokens from `Adapter.forward`: the same as hf's, and its logits
    and greedy labels are those of the kind's formula injected by hand."""
    tl = explainer_on(tiny_hooked(setup["tok"]), setup["state"])
    assert tl.backend.name == "transformer_lens"
    vectors = setup["vectors"]
    soft = expected(tl.adapter, vectors)
    torch.testing.assert_close(tl.soft_tokens(vectors), setup["hf"].soft_tokens(vectors), rtol=0, atol=0)
    torch.testing.assert_close(tl.soft_tokens(vectors), soft, rtol=0, atol=1e-6)
    n, last = len(vectors), len(tl.prompt_ids) - 1
    ids, mask = tl.prompt_ids.expand(n, -1), tl.inject_mask.expand(n, -1)
    positions = torch.tensor([[last]] * n)
    with torch.no_grad():
        got = tl.backend.logits(ids, tl._backend_input(vectors), mask, tl.site, positions, tl.prefix_len)
        torch.testing.assert_close(got, tl.backend.logits(ids, soft, mask, tl.site, positions), rtol=0, atol=1e-5)
        by_hand = tl.backend.generate(ids, soft, mask, tl.site, SAMPLING, tl._is_finished, tl.prefix_len)
    texts = [tl.backend.tokenizer.decode(row, skip_special_tokens=False) for row in by_hand]
    assert [text for _, text in tl.generate_labels(vectors, torch.ones(n), SAMPLING)] == texts
