"""Activation Oracles through TransformerLens: a HookedTransformer converted from the tiny model
(its own implementation of it) and a TransformerBridge wrapping it. The injection at K ordinary-
token positions equals the reference's hook (tests/ao_reference.py) to 1e-6 on the residual
stream of the same model; a published-layout LoRA oracle answers as the model with the LoRA merged
by hand plus the hook; a HookedTransformer whose norms are folded into its weights is refused."""

from __future__ import annotations

import copy
import tempfile
import warnings

import pytest
import torch

pytest.importorskip("transformer_lens")
pytest.importorskip("peft")

from ao_reference import cut, merged_by_hand, pattern_positions, reference_answers, steering_hook  # noqa: E402
from test_tl_conformance import hooked_from  # noqa: E402

from selfinterp_peft.oracles import oracle_stand_in  # noqa: E402
from selfinterp_plugins import BackendError, Explainer, Sampling  # noqa: E402
from selfinterp_plugins.oracles import activation_oracle  # noqa: E402

warnings.filterwarnings("ignore")
QUESTION = "What is the model thinking about?"


@pytest.fixture(scope="module")
def deep():
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, num_hidden_layers=4, initializer_range=0.2)


def bridge_of(model, tok):
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
        return TransformerBridge.boot_transformers(directory, hf_model=model, tokenizer=tok)


def vectors(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, 64, generator=g) * 10


def resid_pre_2(tl, run):
    """What `blocks.2.hook_resid_pre` holds in `run()`: the residual leaving layer 1 after the
    injection (a torch hook on the hook point, which TransformerLens' own hook contexts leave alone)."""
    seen = {}
    handle = tl.blocks[2].hook_resid_pre.register_forward_hook(
        lambda module, args, output: seen.__setitem__("resid", output.clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen["resid"]


def test_injection_on_a_hooked_transformer_equals_the_references_hook(deep):
    model, tok = deep
    hooked = hooked_from(model, tok)
    oracle = activation_oracle(hooked, tok, layer=2, question=QUESTION, positions=3)
    v = vectors(2, 3)
    ids = oracle.prompt_ids
    batch, mask = ids.expand(2, -1), oracle.inject_mask.expand(2, -1)
    everywhere = torch.arange(len(ids)).expand(2, -1)

    def ours():
        with torch.no_grad():
            ours.logits = oracle.backend.logits(batch, oracle.soft_tokens(v), mask, oracle.site, everywhere)

    positions = pattern_positions(ids.tolist(), tok, 3)
    hook = steering_hook(list(v), [positions] * 2, 1.0, torch.float32)

    def theirs():  # the reference's hook, as a TransformerLens hook on the same model
        with torch.no_grad():
            theirs.logits = hooked.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_resid_post", lambda h, hook: hook_fn(h))])

    def hook_fn(h):
        return hook(None, None, h)

    got, want = resid_pre_2(hooked, ours), resid_pre_2(hooked, theirs)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    plain = resid_pre_2(hooked, lambda: hooked(batch))
    assert (want - plain).abs().max() > 1.0  # the hook did add something, so the comparison sees it


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_a_lora_oracle_answers_as_the_merged_model_with_the_hook(deep, tmp_path, kind):
    model, tok = deep
    directory = oracle_stand_in(tmp_path / "oracle", model, base_model="tiny/llama")
    # the bridge puts its components in place of the wrapped model's modules: it gets a copy of its own
    tl = hooked_from(model, tok) if kind == "hooked" else bridge_of(copy.deepcopy(model), tok)
    oracle = Explainer.from_pretrained(directory, model=tl, tokenizer=tok, layer=2, question=QUESTION, positions=3)
    v = vectors(3, 3, seed=3)
    ids = oracle.prompt_ids.tolist()
    theirs = reference_answers(merged_by_hand(model, directory), tok, ids, v, pattern_positions(ids, tok, 3), 8)
    got = oracle.explain(v, sampling=Sampling(max_new_tokens=8), progress=False)
    assert [r["text"] for r in got] == [tok.decode(cut(row, oracle._is_finished.stop_ids)) for row in theirs]
    plain = reference_answers(model, tok, ids, v, pattern_positions(ids, tok, 3), 8)
    assert plain != theirs  # the LoRA changes the answers
    weights = [p.clone() for p in tl.parameters()]
    oracle.explain(v, sampling=Sampling(max_new_tokens=2), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, tl.parameters()))  # taken off exactly after each call


def test_a_hooked_transformer_with_folded_norms_is_refused(deep, tmp_path):
    from transformer_lens import HookedTransformer

    model, tok = deep
    hooked = hooked_from(model, tok)
    folded = HookedTransformer(hooked.cfg, tokenizer=tok, default_padding_side="right")
    folded.load_and_process_state_dict(hooked.state_dict(), fold_ln=True, center_writing_weights=False,
                                       center_unembed=False)
    directory = oracle_stand_in(tmp_path / "oracle", model, base_model="tiny/llama")
    oracle = Explainer.from_pretrained(directory, model=folded, tokenizer=tok, layer=2, question=QUESTION)
    with pytest.raises(BackendError, match=r"norms folded into its weights \(fold_ln=True\).*fold_ln=False"):
        oracle.explain(vectors(1, 1)[:, 0], progress=False)


def test_injection_on_a_transformer_bridge_equals_the_references_hook(deep):
    """The reference's hook on the bridge's layer 1 (the bridge computes attention its own way, so
    the same model as the oracle runs on, as for the HookedTransformer above)."""
    from ao_reference import reference_run

    model, tok = deep
    bridge = bridge_of(copy.deepcopy(model), tok)
    oracle = activation_oracle(bridge, tok, layer=2, question=QUESTION, positions=3)
    v = vectors(2, 3, seed=4)
    ids = oracle.prompt_ids
    seen = {}

    def keep(module, args, kwargs):  # the residual entering layer 2: leaving layer 1, injection included
        seen["resid"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = bridge.original_model.model.layers[2].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        resid, logits = reference_run(bridge.original_model, ids.tolist(), v, pattern_positions(ids.tolist(), tok, 3))
        with torch.no_grad():
            ours = oracle.backend.logits(ids.expand(2, -1), oracle.soft_tokens(v), oracle.inject_mask.expand(2, -1),
                                         oracle.site, torch.arange(len(ids)).expand(2, -1))
    finally:
        handle.remove()
    torch.testing.assert_close(seen["resid"], resid, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, logits, atol=1e-5, rtol=0)
