"""The `hf` backend on tiny models of every architecture: injection, prefix cache, generation,
capture and facts."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from selfinterp_plugins.backends import HFBackend, Sampling
from selfinterp_plugins.backends.hf import find_blocks, softcapped
from selfinterp_plugins.backends.inputs import Injection
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.models import tiny_model
from selfinterp_plugins.sites import Site
from selfinterp_plugins.templates import PromptTemplate

SITES = ["embed", "resid_pre.1", "resid_post.0"]


@pytest.fixture(scope="module")
def backends(tiny_arch):
    arch, model, tok = tiny_arch
    return arch, HFBackend(model, tok)


@pytest.fixture()
def backend(backends):
    return backends[1]


@pytest.fixture(scope="module")
def llama_backend(tiny_llama):
    return HFBackend(*tiny_llama)


def _prompt(backend):
    template = PromptTemplate.chat(backend.tokenizer)
    ids = template.prompt_ids(backend.tokenizer)
    mask = ids == template.placeholder_id(backend.tokenizer)
    return template, ids, mask


def _soft(backend, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, backend.d_model, generator=g)
    return v / v.norm(dim=-1, keepdim=True) * backend.typical_embed_norm * 3


def _training_batch(backend, labels=("dog", "golden retriever", "a")):
    """Right-padded prompt+target rows, as Explainer.loss builds them."""
    template, prompt, pmask = _prompt(backend)
    tok = backend.tokenizer
    targets = [template.target_ids(tok, label) for label in labels]
    width = max(map(len, targets))
    ids = torch.full((len(labels), len(prompt) + width), tok.pad_token_id, dtype=torch.long)
    ids[:, : len(prompt)] = prompt
    for i, t in enumerate(targets):
        ids[i, len(prompt) : len(prompt) + len(t)] = torch.tensor(t)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, : len(prompt)] = pmask
    positions = (len(prompt) - 1 + torch.arange(width)).expand(len(labels), width)
    return ids, mask, positions, int(pmask.nonzero()[0])


@contextlib.contextmanager
def record_site(backend, store: list):
    """Record the hidden state at the injection site AFTER the backend's injection hook ran.

    The backend registers its hook inside `injecting`; a hook registered inside that same
    context runs after it and therefore sees the injected value.
    """
    original = backend.injecting

    @contextlib.contextmanager
    def wrapped(injection):
        with original(injection):
            if injection is None:  # a decoding step or the shared prefix: nothing injected, nothing recorded
                yield
                return
            site = injection.site
            module = backend._site_module(site)
            if site.kind == "resid_pre":

                def pre(_m, args, kwargs):
                    store.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

                handle = module.register_forward_pre_hook(pre, with_kwargs=True)
            else:

                def post(_m, _args, output):
                    store.append((output[0] if isinstance(output, tuple) else output).detach().clone())

                handle = module.register_forward_hook(post)
            try:
                yield
            finally:
                handle.remove()

    backend.injecting = wrapped
    try:
        yield
    finally:
        del backend.injecting


# ---- facts ---------------------------------------------------------------------------------


def test_facts(backends):
    arch, backend = backends
    model = backend.model
    assert backend.d_model == 64
    assert backend.n_layers == (3 if arch == "gemma3" else 2)
    assert backend.blocks is find_blocks(model)
    assert backend.device == torch.device("cpu")
    assert backend.dtype == torch.float32
    norm = backend.typical_embed_norm
    assert norm > 0
    emb = model.get_input_embeddings()(torch.arange(4096))
    assert norm == pytest.approx(float(emb.norm(dim=-1).median()), rel=1e-5)
    assert isinstance(backend.fingerprint(), str) and len(backend.fingerprint()) == 16
    ids = torch.tensor([1, 2, 3])
    torch.testing.assert_close(backend.embed_tokens(ids), model.get_input_embeddings()(ids))


def test_fingerprint_depends_on_weights(llama_backend):
    from selfinterp_plugins.models import tiny_model

    other = HFBackend(*tiny_model("llama", seed=1))
    assert other.fingerprint() != llama_backend.fingerprint()
    assert HFBackend(llama_backend.model, llama_backend.tokenizer).fingerprint() == llama_backend.fingerprint()


@pytest.mark.parametrize("spec", ["resid_pre.9", "resid_post.3", "blocks.99.hook_resid_pre"])
def test_site_past_last_layer(backend, spec):
    site = Site.parse(spec)
    ids, mask, positions, _ = _training_batch(backend)
    soft = _soft(backend, ids.shape[0])
    with pytest.raises(BackendError, match="past the last layer"):
        backend.logits(ids, soft, mask, site, positions)
    with pytest.raises(BackendError, match="past the last layer"):
        backend.capture([[1, 2, 3]], [site])
    with pytest.raises(BackendError):
        backend.generate(ids[:, :5], soft, mask[:, :5], site, Sampling(max_new_tokens=2), lambda ids: False)


# ---- injection -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SITES)
def test_injection_changes_exactly_the_placeholder_positions(backend, spec):
    site = Site.parse(spec)
    ids, mask, positions, first = _training_batch(backend)
    soft = _soft(backend, ids.shape[0])
    injected, plain = [], []
    with record_site(backend, injected):
        logits = backend.logits(ids, soft, mask, site, positions)
    with record_site(backend, plain):
        no_inject = backend.logits(ids, soft, torch.zeros_like(mask), site, positions)
    assert len(injected) == len(plain) == 1
    hidden, base = injected[0], plain[0]
    assert hidden.shape[:2] == ids.shape
    # the site holds the soft token at every placeholder, and is untouched elsewhere
    assert torch.equal(hidden[~mask], base[~mask])
    assert int(mask.sum()) == 2 * ids.shape[0]
    for r, c in mask.nonzero().tolist():
        torch.testing.assert_close(hidden[r, c], soft[r], rtol=0, atol=0)
        assert not torch.allclose(base[r, c], soft[r])
    # downstream: logits change after the placeholders (all target positions lie after them)
    assert not torch.allclose(logits, no_inject)


@pytest.mark.parametrize("spec", SITES)
def test_injection_leaves_positions_before_first_placeholder_alone(backend, spec):
    """Logits at every position: identical before the first placeholder (causal), different after."""
    site = Site.parse(spec)
    ids, mask, _, first = _training_batch(backend)
    ids, mask = ids[:1], mask[:1]
    width = ids.shape[1]
    positions = torch.arange(width)[None]
    soft = _soft(backend, 1)
    with torch.no_grad():
        injected = backend.logits(ids, soft, mask, site, positions)
        plain = backend.logits(ids, soft, torch.zeros_like(mask), site, positions)
    torch.testing.assert_close(injected[:, :first], plain[:, :first], rtol=0, atol=0)
    assert not torch.allclose(injected[:, first], plain[:, first])
    assert not torch.allclose(injected[:, -1], plain[:, -1])
    if site.kind == "embed":
        with torch.no_grad():
            reference = backend.model(input_ids=ids).logits
        torch.testing.assert_close(plain, reference, rtol=1e-4, atol=1e-4)  # no mask = the bare model


def test_add_normmatched_site(backend):
    site = Site("resid_pre", 1, "add_normmatched", 0.5)
    ids, mask, positions, _ = _training_batch(backend)
    soft = _soft(backend, ids.shape[0])
    injected, plain = [], []
    with record_site(backend, injected):
        backend.logits(ids, soft, mask, site, positions)
    with record_site(backend, plain):
        backend.logits(ids, soft, torch.zeros_like(mask), site, positions)
    hidden, base = injected[0], plain[0]
    assert torch.equal(hidden[~mask], base[~mask])
    for r, c in mask.nonzero().tolist():
        h = base[r, c]
        torch.testing.assert_close(hidden[r, c], h + 0.5 * h.norm() * soft[r] / soft[r].norm(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", SITES)
def test_logits_are_differentiable_in_soft(backend, spec):
    ids, mask, positions, _ = _training_batch(backend)
    soft = _soft(backend, ids.shape[0]).requires_grad_(True)
    backend.logits(ids, soft, mask, Site.parse(spec), positions).logsumexp(-1).sum().backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all()
    assert (soft.grad.abs().sum(-1) > 0).all()
    assert not any(p.grad is not None for p in backend.model.parameters())


# ---- prefix cache --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SITES)
def test_prefix_cache_gives_the_same_logits(backend, spec):
    site = Site.parse(spec)
    ids, mask, positions, first = _training_batch(backend)
    soft = _soft(backend, ids.shape[0])
    full = backend.logits(ids, soft, mask, site, positions, prefix_len=0)
    cached = backend.logits(ids, soft, mask, site, positions, prefix_len=first)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    # a second call reuses the stored prefix: still the same (the cache was not corrupted)
    again = backend.logits(ids, soft, mask, site, positions, prefix_len=first)
    torch.testing.assert_close(again, full, rtol=1e-5, atol=1e-5)
    # and with another batch size
    one = backend.logits(ids[1:2], soft[1:2], mask[1:2], site, positions[1:2], prefix_len=first)
    torch.testing.assert_close(one, full[1:2], rtol=1e-5, atol=1e-5)


def test_prefix_cache_gradient_matches(llama_backend):
    backend = llama_backend
    ids, mask, positions, first = _training_batch(backend)
    grads = []
    for prefix in (0, first):
        soft = _soft(backend, ids.shape[0]).requires_grad_(True)
        backend.logits(ids, soft, mask, Site(), positions, prefix_len=prefix).logsumexp(-1).sum().backward()
        grads.append(soft.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_prefix_len_with_differing_prefixes_falls_back(llama_backend):
    backend = llama_backend
    ids, mask, positions, first = _training_batch(backend)
    ids = ids.clone()
    ids[1, 2] = ids[1, 2] + 1  # row 1's prefix differs from row 0's
    soft = _soft(backend, ids.shape[0])
    full = backend.logits(ids, soft, mask, Site(), positions, prefix_len=0)
    claimed = backend.logits(ids, soft, mask, Site(), positions, prefix_len=first)
    torch.testing.assert_close(claimed, full, rtol=1e-5, atol=1e-5)


# ---- generation ----------------------------------------------------------------------------


def _stop_on(token_mod=7):
    """A stopping rule that ends rows at different lengths on a random tiny model."""
    return lambda ids: ids[-1] % token_mod == 0


def _manual_greedy(backend, prompt, pmask, soft, site, steps, is_finished):
    """Reference: re-run the whole sequence each step, injecting only at the prompt's placeholders."""
    out = []
    ids = prompt.clone()
    for _ in range(steps):
        mask = torch.zeros(1, len(ids), dtype=torch.bool)
        mask[0, : len(prompt)] = pmask
        with torch.no_grad():
            logits = backend.logits(ids[None], soft[None], mask, site, torch.tensor([[len(ids) - 1]]))
        token = int(logits[0, -1].argmax())
        out.append(token)
        if is_finished(out):
            break
        ids = torch.cat([ids, torch.tensor([token])])
    return out


@pytest.mark.parametrize("spec", ["embed", "resid_post.0"])
def test_greedy_generation_equals_manual_prefill_only_loop(backend, spec):
    site = Site.parse(spec)
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 1)
    never = lambda ids: False  # noqa: E731
    generated = backend.generate(prompt[None], soft, pmask[None], site, Sampling(max_new_tokens=5), never)
    assert len(generated) == 1 and len(generated[0]) == 5
    assert generated[0] == _manual_greedy(backend, prompt, pmask, soft[0], site, 5, never)
    first = int(pmask.nonzero()[0])
    cached = backend.generate(prompt[None], soft, pmask[None], site, Sampling(max_new_tokens=5), never, prefix_len=first)
    assert cached == generated


def test_generation_injects_in_the_prefill_only(llama_backend):
    """The input of block 1 holds the soft token in the prefill call and never afterwards."""
    backend = llama_backend
    site = Site("resid_post", 0)
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 1)
    seen = []
    hooks_before = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in backend.model.named_modules()}

    def pre(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = backend.blocks[1].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        out = backend.generate(prompt[None], soft, pmask[None], site, Sampling(max_new_tokens=5), lambda ids: False)
    finally:
        handle.remove()
    assert len(out[0]) == 5
    assert len(seen) == 5  # one prefill + 4 decode steps (the last token needs no forward)
    assert seen[0].shape[1] == len(prompt)
    for pos in pmask.nonzero()[:, 0].tolist():
        assert torch.equal(seen[0][0, pos], soft[0])
    for step in seen[1:]:
        assert step.shape[1] == 1
        assert not torch.allclose(step[0, 0], soft[0])
    # the injection hook is gone once generation returns
    hooks_after = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in backend.model.named_modules()}
    assert hooks_after == hooks_before


@pytest.mark.parametrize("spec", ["resid_pre.1"])
def test_batched_generation_equals_one_by_one(backend, spec):
    site = Site.parse(spec)
    _, prompt, pmask = _prompt(backend)
    n = 3
    soft = _soft(backend, n, seed=3)
    stop = _stop_on(5)
    sampling = Sampling(max_new_tokens=6)
    first = int(pmask.nonzero()[0])
    batched = backend.generate(prompt.expand(n, -1), soft, pmask.expand(n, -1), site, sampling, stop, prefix_len=first)
    single = [backend.generate(prompt[None], soft[i : i + 1], pmask[None], site, sampling, stop)[0] for i in range(n)]
    assert batched == single
    for row in batched:
        assert 1 <= len(row) <= 6
        assert stop(row) or len(row) == 6
        assert not any(stop(row[:k]) for k in range(1, len(row)))  # rows stop at their first finish


def test_rows_stop_early_when_finished(llama_backend):
    backend = llama_backend
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 3)
    out = backend.generate(prompt.expand(3, -1), soft, pmask.expand(3, -1), Site(), Sampling(max_new_tokens=10),
                           lambda ids: True)
    assert [len(r) for r in out] == [1, 1, 1]


def test_sampling_is_seeded(llama_backend):
    backend = llama_backend
    _, prompt, pmask = _prompt(backend)
    soft = _soft(backend, 2)
    never = lambda ids: False  # noqa: E731

    def run(seed, temperature=1.5):
        sampling = Sampling(temperature=temperature, top_p=0.95, max_new_tokens=4, seed=seed)
        return backend.generate(prompt.expand(2, -1), soft, pmask.expand(2, -1), Site(), sampling, never)

    first = run(1)
    assert run(1) == first
    assert run(2) != first
    greedy = backend.generate(prompt.expand(2, -1), soft, pmask.expand(2, -1), Site(), Sampling(max_new_tokens=4), never)
    assert first != greedy


def test_pick_next_top_p_keeps_only_the_nucleus():
    from selfinterp_plugins.backends.base import pick_next

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {int(pick_next(logits, Sampling(temperature=1.0, top_p=0.8), g)) for _ in range(200)}
    assert picks == {0, 1}
    assert int(pick_next(logits, Sampling(), None)) == 0


# ---- capture -------------------------------------------------------------------------------


def _prompts(tok):
    texts = ["Tell me about dogs.", "Hi there", "A much longer prompt about the history of the Roman empire and its roads."]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_capture_matches_output_hidden_states(backends):
    arch, backend = backends
    tok = backend.tokenizer
    ids = _prompts(tok)[0]
    n = backend.n_layers
    sites = [Site("resid_post", k) for k in range(n - 1)] + [Site("resid_pre", k) for k in range(n)] + [Site()]
    got = backend.capture([ids], sites, [-1])
    assert got.shape == (1, len(sites), 64)
    with torch.no_grad():
        hs = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    for j, site in enumerate(sites):
        if site.kind == "resid_post":
            expected = hs[site.layer + 1][0, -1]
        elif site.kind == "resid_pre":
            expected = hs[site.layer][0, -1]
        else:
            expected = backend.embed_tokens(torch.tensor(ids))[-1]
        torch.testing.assert_close(got[0, j], expected, rtol=1e-5, atol=1e-5, msg=f"{arch} {site.name}")


def test_capture_final_layer_is_before_the_final_norm(backends):
    arch, backend = backends
    ids = _prompts(backend.tokenizer)[0]
    last = Site("resid_post", backend.n_layers - 1)
    got = backend.capture([ids], [last])[0, 0]
    with torch.no_grad():
        hs = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert not torch.allclose(got, hs[-1][0, -1], atol=1e-4)  # hs[-1] has the final norm applied
    assert torch.isfinite(got).all()


def test_capture_with_right_padding_equals_per_row(backends):
    arch, backend = backends
    prompts = _prompts(backend.tokenizer)
    sites = [Site("resid_post", 0), Site("resid_pre", 1)]
    for positions in ([-1, -1, -1], [0, 0, 5], [-2, 0, -3]):
        batched = backend.capture(prompts, sites, positions)
        for i, ids in enumerate(prompts):
            single = backend.capture([ids], sites, [positions[i]])
            torch.testing.assert_close(batched[i], single[0], rtol=1e-5, atol=1e-5, msg=f"{arch} row {i}")
    default = backend.capture(prompts, sites)
    torch.testing.assert_close(default, backend.capture(prompts, sites, [-1, -1, -1]))


def test_capture_position_outside_prompt(llama_backend):
    with pytest.raises(BackendError, match="outside"):
        llama_backend.capture([[1, 2, 3]], [Site()], [3])
    with pytest.raises(BackendError, match="outside"):
        llama_backend.capture([[1, 2, 3], [1, 2]], [Site()], [-1, -3])


def _hook_counts(model):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}


def test_capture_leaves_no_hooks(llama_backend):
    before = _hook_counts(llama_backend.model)
    llama_backend.capture([[1, 2, 3]], [Site("resid_pre", 1), Site("resid_post", 0), Site()])
    assert _hook_counts(llama_backend.model) == before


# ---- memory options: activation checkpointing, bf16 weights with an fp32 adapter -------------


@pytest.mark.parametrize("spec", SITES)
def test_checkpointing_gives_the_same_logits_and_gradients(backends, spec):
    arch, plain = backends
    checkpointed = HFBackend(plain.model, plain.tokenizer, checkpointing=True)
    site = Site.parse(spec)
    ids, mask, positions, first = _training_batch(plain)
    results = []
    for backend in (plain, checkpointed):
        soft = _soft(backend, ids.shape[0]).requires_grad_(True)
        logits = backend.logits(ids, soft, mask, site, positions, prefix_len=first)
        logits.logsumexp(-1).sum().backward()
        results.append((logits.detach(), soft.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)
    assert all("forward" not in vars(block) for block in checkpointed.blocks)  # wrappers removed


def test_checkpointing_is_a_backend_option(tiny_llama):
    from selfinterp_plugins import Explainer

    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, backend_options={"checkpointing": True})
    assert explainer.backend.checkpointing
    with pytest.raises(BackendError, match="checkpointing"):
        Explainer.create(model, tok, backend_options={"gradient_ckpt": True})


def test_bf16_model_trains_an_fp32_adapter():
    from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model = model.to(torch.bfloat16)
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    vectors = torch.randn(8, explainer.backend.d_model, generator=torch.Generator().manual_seed(0))
    data = VectorLabelDataset(vectors, [{"id": str(i), "label": w} for i, w in enumerate(["dog", "tree"] * 4)], {})
    before = {k: v.clone() for k, v in explainer.adapter.state_dict().items()}
    history = explainer.train(data, config=TrainConfig(epochs=1, batch_size=4), progress=False)
    assert all(p.dtype == torch.float32 for p in explainer.adapter.parameters())
    assert all(torch.isfinite(torch.tensor(history["train_loss"])))
    assert any(not torch.equal(before[k], v) for k, v in explainer.adapter.state_dict().items())
    assert len(explainer.explain(vectors[:2], progress=False)) == 2


# ---- the cached path on the real model ------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.parametrize("spec", ["embed", "resid_pre.3", "resid_post.10"])
def test_smollm2_cached_path_equals_uncached(smollm2, spec):
    """Prefix cache on vs off on SmolLM2: logits within 1e-5 and the same greedy labels."""
    from selfinterp_plugins import Explainer

    model, tok = smollm2
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="chat", site=spec, init_scale=2.0)
    explainer.adapter.bias.data = 0.05 * torch.randn(explainer.backend.d_model, generator=torch.Generator().manual_seed(1))
    vectors = torch.randn(6, explainer.backend.d_model, generator=torch.Generator().manual_seed(0))
    labels = ["golden retriever", "tree", "the French Revolution", "a", "Jupiter", "sourdough bread"]
    with torch.no_grad():
        cached_loss = explainer.loss(vectors, labels)
        cached = explainer.explain(vectors, sampling=Sampling(max_new_tokens=12), progress=False)
        prefix_len, explainer.prefix_len = explainer.prefix_len, 0
        uncached_loss = explainer.loss(vectors, labels)
        uncached = explainer.explain(vectors, sampling=Sampling(max_new_tokens=12), progress=False)
    assert prefix_len > 0
    torch.testing.assert_close(cached_loss, uncached_loss, rtol=0, atol=1e-5)
    assert [r["text"] for r in cached] == [r["text"] for r in uncached]

    ids, mask, positions, first = _training_batch(explainer.backend, labels=labels[:3])
    soft = explainer.soft_tokens(vectors[:3]).detach()
    site = Site.parse(spec)
    full = explainer.backend.logits(ids, soft, mask, site, positions, prefix_len=0)
    reused = explainer.backend.logits(ids, soft, mask, site, positions, prefix_len=first)
    # fp32 sums in another order (other matmul shapes): differences of ~1e-4 on logits of ~25
    assert (reused - full).abs().max() / full.abs().max() < 1e-5


# ---- what the tiny models never exercise (mutation survivors of backends/hf.py) -------------


class _Block(nn.Module):
    """A decoder block multiplying its input by `scale`; `as_tuple` returns `(hidden, tag)` as
    GPT-2-style blocks of some transformers versions do."""

    def __init__(self, scale: float, as_tuple: bool):
        super().__init__()
        self.scale, self.as_tuple = scale, as_tuple

    def forward(self, hidden_states):
        out = hidden_states * self.scale
        return (out, f"tag{self.scale}") if self.as_tuple else out


class _Body(nn.Module):
    """A model body calling its blocks by keyword (as some transformers models do) and requiring
    each tuple output to keep its extra element."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.embed = nn.Embedding(8, 3)
        self.layers = nn.ModuleList([_Block(2.0, as_tuple), _Block(3.0, as_tuple)])

    def forward(self, input_ids, past_key_values=None, use_cache=None):
        hidden = self.embed(input_ids)
        for block in self.layers:
            out = block(hidden_states=hidden)
            if block.as_tuple:
                hidden, tag = out
                assert tag == f"tag{block.scale}"
            else:
                hidden = out
        return SimpleNamespace(last_hidden_state=hidden, past_key_values=None)


class _LM(nn.Module):
    """The few attributes HFBackend reads of a transformers causal LM."""

    def __init__(self, config, as_tuple: bool = True):
        super().__init__()
        self.config = config
        self.base_model = _Body(as_tuple)
        self.lm_head = nn.Linear(3, 8, bias=False)

    def get_input_embeddings(self):
        return self.base_model.embed

    def get_output_embeddings(self):
        return self.lm_head


def _fake_backend(as_tuple=True):
    torch.manual_seed(0)
    return HFBackend(_LM(SimpleNamespace(n_layer=2), as_tuple), tokenizer=None)


@pytest.mark.parametrize("as_tuple", [True, False])
def test_read_and_inject_with_keyword_inputs_and_tuple_outputs(as_tuple):
    """Blocks called by keyword and returning tuples: reading two sites returns each value, the
    model runs on unchanged (x2 then x3); a replacement at either site is what the next block gets."""
    backend = _fake_backend(as_tuple)
    ids = torch.tensor([[1, 2, 3]])
    embedded = backend.model.base_model.embed(ids).detach()
    pre1, post1 = backend.read(ids, [Site.parse("resid_pre.1"), Site.parse("resid_post.1")])
    torch.testing.assert_close(pre1, embedded * 2)
    torch.testing.assert_close(post1, embedded * 6)
    soft = torch.tensor([[10.0, 20.0, 30.0]])
    mask = torch.tensor([[False, True, False]])
    for spec in ("resid_pre.1", "resid_post.0"):
        hidden, past = backend.run(ids, Injection(Site.parse(spec), soft, mask))
        expected = embedded * 6
        expected[0, 1] = soft[0] * 3
        torch.testing.assert_close(hidden.detach(), expected)
        assert past is None


def test_find_blocks_by_n_layer_and_its_refusal():
    """GPT-2 configs name the depth `n_layer`; a model with no block list of that length is refused."""
    model = _LM(SimpleNamespace(n_layer=2))
    assert find_blocks(model) is model.base_model.layers
    with pytest.raises(BackendError) as info:
        find_blocks(_LM(SimpleNamespace(n_layer=5)))
    assert str(info.value) == "Cannot find the decoder blocks of _LM; use a standard transformers causal LM."


def test_softcapped_by_hand():
    """cap * tanh(logits / cap): 2 tanh(1.5) = 1.8102965, 2 tanh(-0.5) = -0.9242343; no cap, unchanged."""
    logits = torch.tensor([3.0, -1.0])
    torch.testing.assert_close(softcapped(logits, 2.0), torch.tensor([1.8102965, -0.9242343]))
    assert softcapped(logits, None) is logits


def test_head_softcaps_with_the_configs_cap():
    model, tok = tiny_model("gemma3", final_logit_softcapping=1.5)
    backend = HFBackend(model, tok)
    assert backend.softcap == 1.5
    hidden = torch.randn(2, 64)
    raw = hidden @ model.get_output_embeddings().weight.T
    torch.testing.assert_close(backend.head(hidden), 1.5 * torch.tanh(raw / 1.5))


def test_checkpointing_recomputes_the_blocks_in_backward(tiny_llama):
    """Off by default; on, each block runs again in the backward pass (its MLP is called twice;
    counted on its forward, as the recomputation runs no module hooks)."""
    model, tok = tiny_llama
    ids = torch.tensor([[5, 17, 300, 42]])
    mask = torch.tensor([[False, True, False, False]])
    mlp, calls, counts = model.model.layers[1].mlp, [], []
    forward = mlp.forward
    mlp.forward = lambda x: calls.append(1) or forward(x)
    try:
        for backend in (HFBackend(model, tok), HFBackend(model, tok, checkpointing=True)):
            calls.clear()
            soft = torch.randn(1, 64, requires_grad=True)
            hidden, _ = backend.run(ids, Injection(Site.parse("resid_pre.0"), soft, mask))
            hidden.sum().backward()
            counts.append(len(calls))
    finally:
        del mlp.forward  # back to the class's forward
    assert counts == [1, 2]


def test_run_keeps_a_cache_only_when_asked(tiny_llama):
    """No cache unless keep_past; with it, one even when the config turns caching off."""
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    assert HFBackend(*tiny_llama).run(ids)[1] is None
    model, tok = tiny_model("llama", use_cache=False)
    _, past = HFBackend(model, tok).run(ids, keep_past=True)
    assert past.get_seq_length() == 5


def test_caches_keep_gemma3s_sliding_window():
    """The cache the backend builds, and its expansion to a batch, keep only the window on the
    sliding layers (window 3: the last 2 keys), all keys on the full one: Gemma3's memory bound."""
    model, tok = tiny_model("gemma3", sliding_window=3)
    backend = HFBackend(model, tok)
    _, past = backend.run(torch.tensor([[5, 17, 300, 42, 7]]), keep_past=True)
    assert [layer.keys.shape[-2] for layer in past.layers] == [2, 2, 5]
    expanded = backend.expand_past(past, 2)
    _, grown = backend.run(torch.tensor([[9], [10]]), past=expanded)
    assert [layer.keys.shape[-2] for layer in grown.layers] == [2, 2, 6]
