"""SmolLM2 through TransformerBridge, offline (the bridge wraps the already-loaded model):
the shipped explainer gives the hf backend's greedy labels and logits, and an adapter trained
through TransformerLens equals one trained through hf from the same seed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from selfinterp_plugins import Explainer, Sampling, TrainConfig, shipped_explainer_dir  # noqa: E402
from selfinterp_plugins.backends import HFBackend  # noqa: E402
from selfinterp_plugins.sites import Site  # noqa: E402
from selfinterp_plugins.topics import load_topics, topic_vectors  # noqa: E402

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def setup(smollm2):
    from transformer_lens.model_bridge import TransformerBridge

    from selfinterp_plugins.models.cache import _smollm2_cache_dir

    model, tok = smollm2
    bridge = TransformerBridge.boot_transformers(str(_smollm2_cache_dir(None)), hf_model=model, tokenizer=tok)
    hf = Explainer.from_pretrained(shipped_explainer_dir(), model=HFBackend(model, tok))
    # TransformerLens switches its tokenizers to always prepend BOS; an explainer trained through
    # hf must see its prompts exactly as trained, so it gets the model's own tokenizer
    tl = Explainer.from_pretrained(shipped_explainer_dir(), model=bridge, tokenizer=tok)
    layer = hf.metadata["layer"]
    topics = [t for t in load_topics() if t["split"] == "test"][:24]
    data = topic_vectors(hf.backend, topics, [layer], progress=False,
                         means={layer: torch.tensor(hf.metadata["topic_mean"])})[layer]
    return hf, tl, data


def test_shipped_explainer_same_labels_and_logits(setup):
    hf, tl, data = setup
    assert tl.backend.name == "transformer_lens" and hf.backend.name == "hf"
    sampling = Sampling(max_new_tokens=16)
    ours = tl.explain(data.vectors, sampling=sampling, progress=False)
    theirs = hf.explain(data.vectors, sampling=sampling, progress=False)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    n = 4
    ids, mask = hf.prompt_ids.expand(n, -1), hf.inject_mask.expand(n, -1)
    soft = hf.soft_tokens(data.vectors[:n])
    positions = torch.tensor([[len(hf.prompt_ids) - 1, 3]] * n)
    torch.testing.assert_close(tl.backend.logits(ids, soft, mask, Site(), positions),
                               hf.backend.logits(ids, soft, mask, Site(), positions), rtol=0, atol=1e-4)


def test_capture_through_the_bridge_equals_hf(setup):
    hf, tl, _ = setup
    ids = [hf.prompt_ids.tolist(), hf.prompt_ids[:9].tolist()]
    sites = [Site.parse("blocks.10.hook_resid_post"), Site.parse("embed")]
    torch.testing.assert_close(tl.backend.capture(ids, sites), hf.backend.capture(ids, sites), rtol=0, atol=1e-4)


def test_training_through_tl_equals_training_through_hf(setup):
    """Same loss and gradients at initialisation; after 3 AdamW steps (lr 1e-2) the adapters agree
    to within 1e-2: Adam divides by the gradient's running RMS, so 1e-5-level differences in the
    gradients of nearly-zero components become differences of a fraction of the learning rate."""
    hf, tl, data = setup
    grads, states = [], []
    for backend in (hf.backend, tl.backend):
        explainer = Explainer.create(backend, adapter="scalar_affine", template="echo")
        loss = explainer.loss(data.vectors[:8], data.labels[:8])
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in explainer.adapter.named_parameters() if p.grad is not None}))
        explainer.adapter.zero_grad()
        explainer.train(data, config=TrainConfig(epochs=1, batch_size=8, max_steps=3), progress=False)
        states.append({k: v.detach().clone() for k, v in explainer.adapter.state_dict().items()})
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    for name, grad in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], grad, rtol=1e-3, atol=1e-5)
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=1e-2)
