"""The transformer_lens backend on tiny HookedTransformers built from configs (three
architectures), checked against forward passes written independently of the backend
(`start_at_layer` on a hand-built residual stream), plus explain / train / save-load."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from selfinterp_plugins import Explainer, Sampling, TrainConfig, VectorLabelDataset  # noqa: E402
from selfinterp_plugins.errors import BackendError, ModelMismatchError, VectorError  # noqa: E402
from selfinterp_plugins.sites import Site  # noqa: E402
from selfinterp_plugins.templates import PromptTemplate  # noqa: E402
from selfinterp_transformer_lens.backend import TransformerLensBackend  # noqa: E402

ARCHS = {
    "gpt2-like": dict(normalization_type="LN", positional_embedding_type="standard", act_fn="gelu"),
    "llama-like": dict(normalization_type="RMS", positional_embedding_type="rotary", act_fn="silu", gated_mlp=True,
                       rotary_dim=16),
    "attn-only": dict(normalization_type="LN", positional_embedding_type="standard", act_fn="gelu", attn_only=True),
}
SITES = ["embed", "blocks.1.hook_resid_pre", "resid_post.0"]


def tiny_hooked(arch: str, tokenizer, seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_mlp=128,
                                  d_vocab=len(tokenizer), seed=seed, device="cpu", initializer_range=0.2, **ARCHS[arch])
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module", params=list(ARCHS))
def backend(request, tokenizer):
    return TransformerLensBackend(tiny_hooked(request.param, tokenizer))


def _prompt(backend):
    template = PromptTemplate.chat(backend.tokenizer)
    ids = template.prompt_ids(backend.tokenizer)
    return template, ids, ids == template.placeholder_id(backend.tokenizer)


def _soft(backend, n):
    v = torch.randn(n, backend.d_model, generator=torch.Generator().manual_seed(0))
    return v / v.norm(dim=-1, keepdim=True) * backend.typical_embed_norm * 3


def reference_logits(model, ids, soft, mask, site: Site):
    """Logits with the soft token written into the residual stream by hand, then the model run
    from that point with `start_at_layer`: no hooks involved."""
    mask3 = mask[:, :, None]
    if site.kind == "embed":
        embed = torch.where(mask3, soft[:, None, :], model.embed(ids))
        resid = embed + model.pos_embed(ids) if model.cfg.positional_embedding_type == "standard" else embed
        return model(resid, start_at_layer=0, tokens=ids)
    layer = site.layer if site.kind == "resid_pre" else site.layer + 1
    clean = model(ids, stop_at_layer=layer)
    resid = torch.where(mask3, soft[:, None, :], clean)
    return model(resid, start_at_layer=layer, tokens=ids)


@pytest.mark.parametrize("spec", SITES)
def test_logits_equal_an_independent_forward(backend, spec):
    site = Site.parse(spec)
    _, prompt, pmask = _prompt(backend)
    ids, mask = prompt.expand(3, -1), pmask.expand(3, -1)
    soft = _soft(backend, 3)
    positions = torch.tensor([[len(prompt) - 1, 2]] * 3)
    got = backend.logits(ids, soft, mask, site, positions)
    want = reference_logits(backend.model, ids, soft, mask, site)[torch.arange(3)[:, None], positions]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    clean = backend.model(ids)[torch.arange(3)[:, None], positions]
    assert not torch.allclose(got, clean, atol=1e-3)  # the injection did something


def test_logits_are_differentiable_in_soft(backend):
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 2).requires_grad_(True)
    positions = torch.tensor([[len(prompt) - 1]] * 2)
    backend.logits(prompt.expand(2, -1), soft, pmask.expand(2, -1), Site(), positions).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0


@pytest.mark.parametrize("spec", ["embed", "resid_pre.1"])
def test_greedy_generation_equals_recomputing_with_injection(backend, spec):
    """The KV-cached, prefill-only generation equals re-running the whole sequence with the
    injection at the prompt positions, token by token."""
    site = Site.parse(spec)
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 2)
    cached = backend.generate(prompt.expand(2, -1), soft, pmask.expand(2, -1), site, Sampling(max_new_tokens=5),
                              lambda ids: False)
    for row in range(2):
        seq = prompt.clone()
        for _ in range(5):
            mask = torch.zeros(len(seq), dtype=torch.bool)
            mask[: len(prompt)] = pmask
            logits = reference_logits(backend.model, seq[None], soft[row : row + 1], mask[None], site)
            seq = torch.cat([seq, logits[0, -1].argmax()[None]])
        assert cached[row] == seq[len(prompt):].tolist()


def test_rows_stop_when_finished(backend):
    _, prompt, pmask = _prompt(backend)
    out = backend.generate(prompt.expand(3, -1), _soft(backend, 3), pmask.expand(3, -1), Site(), Sampling(max_new_tokens=6),
                           lambda ids: len(ids) >= 2)
    assert [len(o) for o in out] == [2, 2, 2]


def test_capture_equals_run_with_cache(backend):
    ids = [[1, 5, 9, 200, 7], [3, 4, 8]]
    sites = [Site.parse("embed"), Site.parse("resid_post.0"), Site.parse("resid_pre.1")]
    got = backend.capture(ids, sites, [-1, 1])
    for row, (seq, pos) in enumerate(zip(ids, [4, 1])):
        _, cache = backend.model.run_with_cache(torch.tensor([seq]))
        for j, name in enumerate(["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]):
            torch.testing.assert_close(got[row, j], cache[name][0, pos], rtol=1e-5, atol=1e-5)


def test_capture_all_equals_run_with_cache(backend):
    """Every position at once (what SAE latents are computed from), right-padded rows."""
    ids = torch.tensor([[1, 5, 9, 200, 7], [3, 4, 8, 0, 0]])
    for site, name in [("embed", "hook_embed"), ("resid_post.0", "blocks.0.hook_resid_post"), ("resid_pre.1", "blocks.1.hook_resid_pre")]:
        got = backend.capture_all(ids, Site.parse(site))
        assert got.shape == (2, 5, backend.d_model)
        for row, length in enumerate([5, 3]):
            _, cache = backend.model.run_with_cache(ids[row : row + 1, :length])
            torch.testing.assert_close(got[row, :length], cache[name][0], rtol=1e-5, atol=1e-5)


def test_site_past_last_layer_and_bad_vectors(backend, tokenizer):
    with pytest.raises(BackendError, match="past the last layer"):  # refused when created, not at the first call
        Explainer.create(backend, adapter="scalar_affine", template="echo", site="resid_pre.5")
    explainer = Explainer.create(backend, adapter="scalar_affine", template="echo")
    with pytest.raises(VectorError, match="d_model"):
        explainer.explain(torch.randn(1, backend.d_model + 1), progress=False)
    with pytest.raises(VectorError, match="NaN"):
        explainer.explain(torch.full((1, backend.d_model), float("nan")), progress=False)


def test_plugin_picks_the_backend_and_accepts_tl_hook_names(tokenizer):
    model = tiny_hooked("gpt2-like", tokenizer)
    explainer = Explainer.create(model, adapter="scalar_affine", template="echo", site="blocks.1.hook_resid_post")
    assert explainer.backend.name == "transformer_lens"
    assert explainer.site == Site("resid_post", 1)
    assert len(explainer.explain(torch.randn(2, 64), sampling=Sampling(max_new_tokens=3), progress=False)) == 2


def test_train_save_reload_gives_identical_outputs(tokenizer, tmp_path):
    model = tiny_hooked("llama-like", tokenizer)
    words = ["dog", "tree", "house", "river"]
    vectors = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    data = VectorLabelDataset(vectors, [{"id": str(i), "label": words[i % 4]} for i in range(32)], {})
    explainer = Explainer.create(model, adapter="scalar_affine", template="chat")
    before = explainer.loss(vectors[:8], data.labels[:8]).item()
    history = explainer.train(data, config=TrainConfig(epochs=3, batch_size=8, lr=5e-2), progress=False)
    assert history["steps"] == 12 and explainer.loss(vectors[:8], data.labels[:8]).item() < before
    labels = explainer.explain(vectors[:4], sampling=Sampling(max_new_tokens=6), progress=False)
    explainer.save_pretrained(tmp_path / "ex")
    again = Explainer.from_pretrained(tmp_path / "ex", model=model)
    assert again.explain(vectors[:4], sampling=Sampling(max_new_tokens=6), progress=False) == labels
    other = tiny_hooked("llama-like", tokenizer, seed=1)
    with pytest.raises(ModelMismatchError, match="has other weights"):
        Explainer.from_pretrained(tmp_path / "ex", model=other)


# ---- the shared-prefix cache and row dropping (HookedTransformer) ----------------------------


@pytest.mark.parametrize("spec", SITES)
def test_prefix_cache_gives_the_same_logits_and_gradients(backend, spec):
    site = Site.parse(spec)
    template, prompt, pmask = _prompt(backend)
    first = int(pmask.nonzero()[0])
    tok = backend.tokenizer
    targets = [template.target_ids(tok, label) for label in ("dog", "golden retriever", "a")]
    width = max(map(len, targets))
    ids = torch.full((3, len(prompt) + width), tok.pad_token_id, dtype=torch.long)
    ids[:, : len(prompt)] = prompt
    for i, t in enumerate(targets):
        ids[i, len(prompt) : len(prompt) + len(t)] = torch.tensor(t)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, : len(prompt)] = pmask
    positions = (len(prompt) - 1 + torch.arange(width)).expand(3, width)
    results = []
    for prefix in (0, first, first):  # the third call reuses the stored prefix
        soft = _soft(backend, 3).requires_grad_(True)
        out = backend.logits(ids, soft, mask, site, positions, prefix_len=prefix)
        out.logsumexp(-1).sum().backward()
        results.append((out.detach(), soft.grad))
    for out, grad in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["embed", "resid_post.1"])
def test_prefix_cached_batch_with_rows_finishing_early_equals_one_by_one(backend, spec):
    """Rows stop at different steps and leave the batch; each row's output equals generating it
    alone without the prefix cache."""
    site = Site.parse(spec)
    _, prompt, pmask = _prompt(backend)
    first = int(pmask.nonzero()[0])
    soft = _soft(backend, 4)
    budgets = [2, 5, 3, 8]
    seen: dict[int, int] = {}

    def stop_batched(ids):  # the backend passes each row's growing list; rows first appear in order
        budget = budgets[seen.setdefault(id(ids), len(seen))]
        return len(ids) >= budget

    sampling = Sampling(max_new_tokens=8)
    batched = backend.generate(prompt.expand(4, -1), soft, pmask.expand(4, -1), site, sampling, stop_batched,
                               prefix_len=first)
    assert [len(o) for o in batched] == budgets
    for i in range(4):
        alone = backend.generate(prompt[None], soft[i : i + 1], pmask[None], site, sampling,
                                 lambda ids, n=budgets[i]: len(ids) >= n)[0]
        assert batched[i] == alone
