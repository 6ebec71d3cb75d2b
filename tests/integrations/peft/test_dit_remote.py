"""What a remote (NDIF) request asking a DIT adapter about a weight diff would carry.

NDIF serves base weights only; a diff and the DIT adapter are additive low-rank paths, so a request
can carry their factors and add x·Aᵀ·Bᵀ·s at every decoder linear's output. Rehearsed here with
nnsight's `remote="local"` on the offline stand-in of a published folder (tiny Qwen3): the logits
equal this library's own path, and the request's bytes are measured; docs/artifacts.md quotes them,
with the same sum computed for the published Qwen3-8B shapes.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("nnsight")

from selfinterp_peft.batched import per_row_diffs  # noqa: E402
from selfinterp_peft.chat import dit_ask_ids  # noqa: E402
from selfinterp_peft.diff_store import diff_dir, read_index  # noqa: E402
from selfinterp_peft.dit import DITAdapter  # noqa: E402
from selfinterp_peft.dit_format import import_published  # noqa: E402
from selfinterp_peft.dit_stand_in import published_stand_in  # noqa: E402
from selfinterp_peft.weight_diff import WeightDiff  # noqa: E402
from selfinterp_plugins.models import tiny_family_model  # noqa: E402

#: Qwen3-8B (its config.json): hidden 4096, MLP 12288, 36 layers, 32 query and 8 key-value heads of 128
QWEN3_8B = dict(hidden=4096, mlp=12288, layers=36, q=32 * 128, kv=8 * 128)


def qwen3_in_plus_out(hidden, mlp, layers, q, kv) -> int:
    """Σ (in + out) over the decoder linears q, k, v, o, gate, up, down of every layer."""
    per_layer = (hidden + q) + 2 * (hidden + kv) + (q + hidden) + 2 * (hidden + mlp) + (mlp + hidden)
    return layers * per_layer


def test_the_qwen3_8b_sum_is_the_published_indexs_n_params():
    """The reference's `data/lora-index/weight-diff-20250512-8b-5000-conf-2025-s42.csv` gives every
    rank-1 Qwen3-8B diff n_params 2727936 (the numel of its A and B)."""
    assert qwen3_in_plus_out(**QWEN3_8B) == 2_727_936
    diff_bf16, dit_bf16 = 2 * 2_727_936, 2 * 16 * 2_727_936
    assert (diff_bf16, dit_bf16) == (5_455_872, 87_293_952)


def test_a_local_rehearsal_of_a_remote_dit_request_gives_the_same_logits_and_carries_the_factors(tmp_path):
    from nnsight import TransformersModel

    from selfinterp_nnsight.requests import recording_requests

    model, tok = tiny_family_model("qwen3")  # a copy the nnsight wrapper may change
    src = published_stand_in(tmp_path / "loras", model)
    import_published(src, tmp_path / "out", model, tok, limit=1)
    diff = WeightDiff.from_pretrained(diff_dir(tmp_path / "out", read_index(tmp_path / "out")[0]["id"]))
    dit = DITAdapter.from_pretrained(tmp_path / "out" / "dit-adapter", model, tok)
    ids = torch.tensor([dit_ask_ids(tok, dit.config.question)])
    with torch.no_grad(), per_row_diffs(dit.model, [diff]):
        expected = dit.model(ids).logits
    layers = dict(dit.model.base_model.model.named_modules())
    factors = {}  # per linear: the diff's (A, s·B) and the DIT adapter's (lora_A, s·lora_B): what a request carries
    for name, m in diff.modules.items():
        lora = layers[name]
        factors[name] = (m.A, m.B * m.scale, lora.lora_A["default"].weight.detach(),
                         lora.lora_B["default"].weight.detach() * lora.scaling["default"])
    lm = TransformersModel(model, tokenizer=tok)
    order = [n for n, _ in model.named_modules() if n in factors]  # nnsight visits modules in the order they run
    with recording_requests() as blobs:
        with lm.trace(ids, remote="local"):
            for name in order:
                envoy = lm
                for part in name.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                dA, dB, tA, tB = factors[name]
                x = envoy.input
                envoy.output = envoy.output + x @ dA.T @ dB.T + x @ tA.T @ tB.T
            logits = lm.output.logits.save()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    carried = sum(t.numel() * t.element_size() for f in factors.values() for t in f)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"\nnnsight remote='local': {len(blobs)} request of {len(blobs[0]):,} bytes for one diff and the DIT adapter on "
          f"{len(factors)} linears (their factors: {carried:,} bytes in float32; the model's weights: {weights:,} bytes, "
          "not sent)")
    assert len(blobs) == 1 and carried < len(blobs[0]) < carried + 64_000
    assert factors[order[0]][2].numpy().tobytes() in blobs[0]  # the DIT adapter's factors travel as they are
