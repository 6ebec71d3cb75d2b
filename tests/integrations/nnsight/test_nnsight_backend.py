"""The nnsight backend on tiny models of three architectures, against the hf backend on the same
weights: logits, loss and adapter gradients, generation, capture; and each of them again through
nnsight's remote path rehearsed offline (`remote="local"`: serialised exactly as for NDIF,
deserialised with this package hidden, then run)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

pytest.importorskip("nnsight")

from nnsight import TransformersModel  # noqa: E402

from selfinterp_nnsight.backend import NNsightBackend  # noqa: E402
from selfinterp_nnsight.requests import recording_requests  # noqa: E402
from selfinterp_plugins import Explainer, Sampling, TrainConfig, VectorLabelDataset  # noqa: E402
from selfinterp_plugins.adapters import AdapterConfig, ScalarAffine, normalize  # noqa: E402
from selfinterp_plugins.backends import HFBackend  # noqa: E402
from selfinterp_plugins.backends.base import AdapterInput  # noqa: E402
from selfinterp_plugins.errors import BackendError, VectorError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.sites import Site  # noqa: E402

ARCHS = ["llama", "gpt2", "gemma3"]
SITES = ["embed", "resid_pre.1", "resid_post.0"]
LABELS = ["cat", "a dog", "the big red house", "x"]



def wrapped(arch: str, seed: int = 0):
    """A fresh tiny model (nnsight wraps its modules, so never the shared session fixture), its
    nnsight wrapper and an hf backend on the same weights."""
    model, tok = tiny_model(arch, seed=seed)
    return TransformersModel(model, tokenizer=tok), HFBackend(model, tok)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    return wrapped(request.param)


def twins(pair, site="embed", adapter="scalar_affine", template="echo"):
    """Two explainers with the same random (non-trivial) adapter: one per backend."""
    lm, hf = pair
    ours = Explainer.create(lm, adapter=adapter, site=site, template=template)
    theirs = Explainer.create(hf, adapter=adapter, site=site, template=template)
    with torch.no_grad():
        for p in ours.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    theirs.adapter.load_state_dict(ours.adapter.state_dict())
    return ours, theirs


def grads(explainer):
    return {n: p.grad.clone() for n, p in explainer.adapter.named_parameters() if p.grad is not None}


def test_plugin_picks_the_nnsight_backend(pair):
    ours, theirs = twins(pair)
    assert isinstance(ours.backend, NNsightBackend) and ours.backend.name == "nnsight"
    assert theirs.backend.name == "hf"
    assert ours.backend.fingerprint() == theirs.backend.fingerprint()
    assert ours.backend.d_model == theirs.backend.d_model and ours.backend.n_layers == theirs.backend.n_layers


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("mode", ["replace", "add_normmatched"])
def test_logits_equal_hf(pair, site, mode):
    ours, theirs = twins(pair, Site.parse(site, mode=mode, coef=2.0))
    n = 3
    ids, mask = ours.prompt_ids.expand(n, -1), ours.inject_mask.expand(n, -1)
    vectors = torch.randn(n, ours.backend.d_model)
    last = len(ours.prompt_ids) - 1
    shared = torch.tensor([[last, last - 1]] * n)  # the head runs at these positions only
    differing = torch.tensor([[last, 2], [4, 1], [0, 3]])  # picked per row
    for positions, prefix_len in ((shared, ours.prefix_len), (differing, 0)):
        with torch.no_grad():
            expected = theirs.backend.logits(ids, theirs.soft_tokens(vectors), mask, theirs.site, positions, prefix_len)
            got = ours.backend.logits(ids, AdapterInput(vectors, ours.adapter), mask, ours.site, positions, prefix_len)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("adapter", ["scalar_affine", "bias_only", "low_rank", "full_rank"])
@pytest.mark.parametrize("site", SITES)
def test_loss_and_adapter_gradients_equal_hf(pair, adapter, site):
    ours, theirs = twins(pair, site, adapter)
    vectors = torch.randn(4, ours.backend.d_model) * 3
    ours.loss(vectors, LABELS).backward()
    theirs_loss = theirs.loss(vectors, LABELS)
    theirs_loss.backward()
    ours.adapter.zero_grad()
    loss = ours.loss(vectors, LABELS)
    loss.backward()
    torch.testing.assert_close(loss.detach(), theirs_loss.detach(), rtol=0, atol=1e-5)
    g_ours, g_theirs = grads(ours), grads(theirs)
    assert set(g_ours) == set(g_theirs) == {n for n, p in theirs.adapter.named_parameters() if p.requires_grad}
    for name in g_theirs:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-4, atol=1e-6)


class Doubled(ScalarAffine):
    """A plugin kind changing a built-in's math only: no backend may compute it as scalar_affine."""

    kind = "doubled"

    @staticmethod
    def math(params, x, scale=None):
        return 2 * (params["log_scale"].exp() * normalize(x, scale) + params["bias"])


def test_a_plugin_kind_is_computed_with_its_own_math_in_the_request(pair):
    ours, theirs = twins(pair)
    config = AdapterConfig(kind="doubled", d_model=ours.backend.d_model)
    ours.adapter, theirs.adapter = Doubled(config), Doubled(config)
    with torch.no_grad():
        ours.adapter.bias.add_(torch.randn_like(ours.adapter.bias))
    theirs.adapter.load_state_dict(ours.adapter.state_dict())
    vectors = torch.randn(4, ours.backend.d_model)
    theirs.loss(vectors, LABELS).backward()
    for remote in (False, "local"):
        ours.adapter.zero_grad()
        with ours.backend.remote_mode(remote), recording_requests() as blobs:
            ours.loss(vectors, LABELS).backward()
        for name, g in grads(theirs).items():
            torch.testing.assert_close(grads(ours)[name], g, rtol=1e-4, atol=1e-6)
    assert ours.adapter.bias.detach().numpy().tobytes() in blobs[0]  # its tensors travelled, not soft tokens


def test_generation_equals_hf_row_by_row_with_rows_stopping_early(pair):
    ours, theirs = twins(pair, template="chat")
    n = 6
    vectors = torch.randn(n, ours.backend.d_model) * 20
    sampling = Sampling(max_new_tokens=8)
    ids, mask = ours.prompt_ids.expand(n, -1), ours.inject_mask.expand(n, -1)
    free = theirs.backend.generate(ids, theirs.soft_tokens(vectors), mask, theirs.site, sampling, lambda out: False)
    # stop each row at a token that some rows produce and others do not
    stop = free[0][2]

    def is_finished(out):
        return out[-1] == stop

    expected = [theirs.backend.generate(ids[:1], theirs.soft_tokens(vectors[i:i + 1]), mask[:1], theirs.site, sampling,
                                        is_finished)[0] for i in range(n)]
    assert any(len(row) < 8 for row in expected)
    soft = AdapterInput(vectors, ours.adapter)
    assert ours.backend.generate(ids, soft, mask, ours.site, sampling, is_finished, ours.prefix_len) == expected
    with ours.backend.remote_mode("local"):  # one generate request, stops as end-of-sequence ids
        assert ours.backend.generate(ids, soft, mask, ours.site, sampling, is_finished, ours.prefix_len) == expected


def test_capture_equals_hf_in_any_site_order(pair):
    lm, hf = pair
    ours = NNsightBackend(lm)
    sites = [Site.parse(s) for s in ("resid_post.1", "embed", "resid_pre.1", "resid_post.0")]
    ids = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
    positions = [-1, 0, 2]
    expected = hf.capture(ids, sites, positions)
    torch.testing.assert_close(ours.capture(ids, sites, positions), expected, rtol=0, atol=1e-6)
    with ours.remote_mode("local"):
        torch.testing.assert_close(ours.capture(ids, sites, positions), expected, rtol=0, atol=1e-6)


def test_remote_rehearsal_equals_local_for_explain_and_a_training_step():
    lm, _ = wrapped("llama", seed=1)
    ours = Explainer.create(lm, adapter="full_rank", site="resid_pre.1", template="chat")
    vectors = torch.randn(5, ours.backend.d_model) * 10
    sampling = Sampling(max_new_tokens=6)
    local = ours.explain(vectors, sampling=sampling, batch_size=3, progress=False)
    remote = ours.explain(vectors, sampling=sampling, batch_size=3, progress=False, remote="local")
    assert [r["text"] for r in remote] == [r["text"] for r in local]
    assert ours.backend.remote is False  # the switch lasts one call

    ours.loss(vectors, LABELS + ["y"]).backward()
    expected = grads(ours)
    ours.adapter.zero_grad()
    with ours.backend.remote_mode("local"):
        loss = ours.loss(vectors, LABELS + ["y"])
        loss.backward()
        with torch.no_grad():  # evaluation: no gradients computed or sent back
            torch.testing.assert_close(ours.loss(vectors, LABELS + ["y"]), loss.detach())
    for name, g in grads(ours).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-7)


def test_training_through_nnsight_equals_hf_and_reloads(tmp_path):
    lm, hf = wrapped("llama", seed=2)
    ours, theirs = twins((lm, hf), "resid_post.0")
    data = VectorLabelDataset(torch.randn(12, ours.backend.d_model), [{"id": str(i), "label": LABELS[i % 4]} for i in range(12)])
    config = TrainConfig(epochs=1, batch_size=4, seed=3)
    ours.train(data, config=config, progress=False)
    theirs.train(data, config=config, progress=False)
    for (name, a), b in zip(ours.adapter.state_dict().items(), theirs.adapter.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    ours.save_pretrained(tmp_path / "e")
    reloaded = Explainer.from_pretrained(tmp_path / "e", model=hf)
    sampling = Sampling(max_new_tokens=5)
    assert ([r["text"] for r in reloaded.explain(data.vectors, sampling=sampling, progress=False)]
            == [r["text"] for r in ours.explain(data.vectors, sampling=sampling, progress=False)])


def test_bad_input_gets_the_core_errors(pair):
    ours, _ = twins(pair)
    with pytest.raises(VectorError, match="d_model"):
        ours.explain(torch.randn(2, ours.backend.d_model + 1), progress=False)
    with pytest.raises(VectorError, match="NaN"):
        ours.explain(torch.full((1, ours.backend.d_model), float("nan")), progress=False)
    with pytest.raises(VectorError, match="N labels"):
        ours.loss(torch.randn(2, ours.backend.d_model), ["one"])
    with pytest.raises(BackendError, match="past the last layer"):
        Explainer.create(pair[0], site="resid_post.9").explain(torch.randn(1, ours.backend.d_model), progress=False)
    with pytest.raises(BackendError, match="no option"):
        Explainer.create(pair[0], backend_options={"checkpointing": True})
    with pytest.raises(BackendError, match="remote takes"):
        ours.explain(torch.randn(1, ours.backend.d_model), remote=3, progress=False)


def test_remote_needs_an_nnsight_model(tiny_llama):
    explainer = Explainer.create(*tiny_llama)
    with pytest.raises(BackendError, match="nnsight"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), remote=True, progress=False)


def test_capture_all_equals_hf_at_every_site(pair):
    lm, hf = pair
    ours = NNsightBackend(lm)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    for name in ("embed", "resid_pre.1", "resid_post.0", "resid_post.1"):
        site = Site.parse(name)
        expected = hf.capture_all(ids, site)
        assert expected.shape == (2, 5, hf.d_model)
        torch.testing.assert_close(ours.capture_all(ids, site), expected, rtol=0, atol=1e-6)
        with ours.remote_mode("local"):
            torch.testing.assert_close(ours.capture_all(ids, site), expected, rtol=0, atol=1e-6)


def test_explaining_inside_a_trace_is_refused_with_how(pair):
    """Inside a `trace` block nnsight runs the user's code in a worker greenlet, where an explainer's
    own traces failed with greenlet's `cyclic parent chain`; now a one-line fix, and the same
    activation explained after the block works."""
    lm, _ = pair
    explainer = Explainer.create(lm, template="echo")
    ids = torch.tensor([[1, 2, 3]])
    errors = []
    with lm.trace(ids):
        hidden = lm.model.layers[0].output[:, -1] if hasattr(lm, "model") else lm.transformer.h[0].output[:, -1]
        hidden = hidden.save()
        for call in (lambda: explainer.explain(hidden, sampling=Sampling(max_new_tokens=2), progress=False),
                     lambda: explainer.loss(hidden, ["cat"])):
            try:
                call()
            except BackendError as error:
                errors.append(str(error))
    assert len(errors) == 2 and all("after it: explainer.explain(h)" in e for e in errors)
    assert len(explainer.explain(hidden, sampling=Sampling(max_new_tokens=2), progress=False)) == 1


def test_the_deprecated_language_model_still_works(pair):
    """nnsight 0.8 recommends `TransformersModel` (docs and examples use it) but users' code still
    builds `LanguageModel`s: same backend, same labels."""
    from nnsight import LanguageModel

    lm, hf = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = LanguageModel(lm._module, tokenizer=lm.tokenizer)
    ours, theirs = Explainer.create(old, template="echo"), Explainer.create(hf, template="echo")
    theirs.adapter.load_state_dict(ours.adapter.state_dict())
    assert isinstance(ours.backend, NNsightBackend)
    vectors = torch.randn(3, hf.d_model) * 4
    sampling = Sampling(max_new_tokens=4)
    assert ([r["text"] for r in ours.explain(vectors, sampling=sampling, progress=False)]
            == [r["text"] for r in theirs.explain(vectors, sampling=sampling, progress=False)])


def test_each_entry_checks_for_a_trace_once(pair, monkeypatch):
    """`refuse_inside_trace` runs once per public entry, here and remote: `read` and the remote
    verbs go through `_call`, `run` checks itself, and `_request` (behind both) no longer checks
    again (read, run and every remote verb used to check twice)."""
    import selfinterp_nnsight.backend as module

    ours, _ = twins(pair, "resid_pre.1")
    backend, site = ours.backend, ours.site
    calls = []
    monkeypatch.setattr(module, "refuse_inside_trace", lambda: calls.append(1))
    ids, mask = ours.prompt_ids[None], ours.inject_mask[None]
    vectors = torch.randn(1, backend.d_model)
    adapter_input = AdapterInput(vectors, ours.adapter)
    positions = torch.tensor([[len(ours.prompt_ids) - 1]])
    from selfinterp_plugins.backends.base import Injection

    entries = {
        "read": lambda: backend.read(ids, [site]),
        "run": lambda: backend.run(ids, Injection(site, ours.soft_tokens(vectors), mask)),
        "embedding_rows": lambda: backend.embedding_rows(torch.tensor([0, 1])),
        "remote logits": lambda: backend.logits(ids, adapter_input, mask, site, positions),
        "remote loss": lambda: backend.loss(ids, adapter_input, mask, site, positions, torch.tensor([[5]])),
        "remote generate": lambda: backend.generate(ids, adapter_input, mask, site, Sampling(max_new_tokens=2),
                                                    ours._is_finished),
    }
    counted = {}
    for name, call in entries.items():
        calls.clear()
        with backend.remote_mode("local") if name.startswith("remote") else contextlib.nullcontext():
            with torch.no_grad():
                call()
        counted[name] = len(calls)
    assert counted == dict.fromkeys(entries, 1)
