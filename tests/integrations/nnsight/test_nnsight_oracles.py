"""Activation Oracles through nnsight, here and on the remote path rehearsed offline
(`remote="local"`): the injection at K ordinary-token positions equals the reference's hook
(tests/ao_reference.py) to 1e-6, a published-layout LoRA oracle answers as the merged model with
the hook, and a remote request carries the LoRA's factors (NDIF serves base weights only), whose
size is measured here."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nnsight")
pytest.importorskip("peft")

from ao_reference import cut, merged_by_hand, pattern_positions, reference_answers, reference_run  # noqa: E402
from nnsight import TransformersModel  # noqa: E402

from selfinterp_nnsight.requests import modules_needed, recording_requests  # noqa: E402
from selfinterp_peft.oracles import oracle_stand_in  # noqa: E402
from selfinterp_plugins import Explainer, Sampling  # noqa: E402
from selfinterp_plugins.oracles import activation_oracle  # noqa: E402

QUESTION = "What is the model thinking about?"


@pytest.fixture(scope="module")
def deep():
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0, num_hidden_layers=4, initializer_range=0.2)
    return model, tok, TransformersModel(model, tokenizer=tok)


def vectors(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, 64, generator=g) * 10


def residual_after_layer_1(oracle, model, v, remote):
    """The residual entering decoder layer 2 (leaving layer 1, injection included) in one
    `logits` call through the nnsight backend, and the logits of every prompt position."""
    seen = {}

    def keep(module, args, kwargs):
        seen["resid"] = (args[0] if args else kwargs["hidden_states"]).clone()

    n, ids = len(v), oracle.prompt_ids
    handle = model.model.layers[2].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad(), oracle.backend.remote_mode(remote):
            logits = oracle.backend.logits(ids.expand(n, -1), oracle._backend_input(v), oracle.inject_mask.expand(n, -1),
                                           oracle.site, torch.arange(len(ids)).expand(n, -1))
    finally:
        handle.remove()
    return seen["resid"], logits


@pytest.mark.parametrize("remote", [False, "local"])
def test_injection_at_k_ordinary_token_positions_equals_the_references_hook(deep, remote):
    model, tok, lm = deep
    oracle = activation_oracle(lm, layer=2, question=QUESTION, positions=3)
    v = vectors(2, 3)
    ids = oracle.prompt_ids.tolist()
    resid, logits = reference_run(model, ids, v, pattern_positions(ids, tok, 3))
    ours_resid, ours_logits = residual_after_layer_1(oracle, model, v, remote)
    torch.testing.assert_close(ours_resid, resid, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_logits.float(), logits, atol=1e-5, rtol=0)


def test_a_lora_oracle_answers_as_the_merged_model_with_the_hook_here_and_remote(deep, tmp_path, capsys):
    model, tok, lm = deep
    directory = oracle_stand_in(tmp_path / "oracle", model, base_model="tiny/llama")
    probe = torch.tensor([[1, 5, 9, 11]])
    plain = model(probe).logits
    oracle = Explainer.from_pretrained(directory, model=lm, layer=2, question=QUESTION, positions=3)
    v = vectors(3, 3, seed=2)
    ids = oracle.prompt_ids.tolist()
    theirs = reference_answers(merged_by_hand(model, directory), tok, ids, v, pattern_positions(ids, tok, 3), 8)
    expected = [tok.decode(cut(row, oracle._is_finished.stop_ids)) for row in theirs]
    sampling = Sampling(max_new_tokens=8)
    assert [r["text"] for r in oracle.explain(v, sampling=sampling, progress=False)] == expected
    with recording_requests() as blobs:
        remote = oracle.explain(v, sampling=sampling, progress=False, remote="local")
    assert [r["text"] for r in remote] == expected
    assert len(blobs) == 1 and not {m for m in modules_needed(blobs[0], lm) if m.startswith("selfinterp")}
    lora_bytes = 4 * oracle.model_patch.num_floats  # float32 factors
    patch, oracle.model_patch = oracle.model_patch, None
    with recording_requests() as bare:
        without = oracle.explain(v, sampling=sampling, progress=False, remote="local")
    assert [r["text"] for r in without] != expected  # the LoRA changes the answers, so they show it travelled
    print(f"one remote explain request: {len(blobs[0]):,} bytes with the LoRA ({lora_bytes:,} bytes of factors), "
          f"{len(bare[0]):,} without")
    assert len(blobs[0]) - len(bare[0]) >= lora_bytes  # the factors travel; NDIF has base weights only
    assert "bytes with the LoRA" in capsys.readouterr().out
    assert patch is not None and torch.equal(model(probe).logits, plain)  # the model is the base model again
    assert not any(m._forward_hooks for m in model.modules())
