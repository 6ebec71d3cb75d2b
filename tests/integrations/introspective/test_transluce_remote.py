"""What a remote (NDIF) request asking Transluce's activation-patching LoRA explainer would carry.

NDIF serves base weights only. The published directory is a PEFT LoRA (r 128, alpha 16) plus whole
copies of `embed_tokens` and `lm_head` that differ from the base at the three marker rows only, so
one forward of the explainer is the base's with: the marker positions' input embeddings set to the
saved marker rows and the feature position's to the vector; x·Aᵀ·Bᵀ·(alpha/r) added at each adapted
linear's output; and the logits of the three marker tokens recomputed from the saved lm_head rows
(the final norm's output times those rows: the head's other rows are the base's). Rehearsed here
with nnsight's `remote="local"` on offline stand-ins of the published directories (tiny Qwen3 and
Llama-3.1), read straight from their files: the logits equal the explainer's own (hf) path, and the
request's bytes are measured. docs/artifacts.md quotes them, with the sums for the published 8B shapes.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("nnsight")

from selfinterp_introspective.transluce import MARKERS, load_transluce  # noqa: E402
from selfinterp_introspective.transluce_stand_in import published_stand_in  # noqa: E402

from selfinterp_plugins.models import tiny_family_model  # noqa: E402

#: the published bases' config.json: hidden, MLP, layers, query heads·128, key-value heads·128
SHAPES = {"Llama-3.1-8B": dict(hidden=4096, mlp=14336, layers=32, q=32 * 128, kv=8 * 128),
          "Qwen3-8B": dict(hidden=4096, mlp=12288, layers=36, q=32 * 128, kv=8 * 128)}
CASES = {"qwen3": ("Transluce/act_patch_qwen3_8b_qwen3_8b", "If feature {feature} at layer 1 is added, what changes?"),
         "llama3.1": ("Transluce/act_patch_llama3.1_8b_llama3.1_8b", "At layer 1, {feature} encodes ")}


def lora_floats(hidden, mlp, layers, q, kv, r=128) -> int:
    """r · Σ (in + out) over q, k, v, o, gate, up, down, times the layers: the numel of every A and B."""
    per_layer = (hidden + q) + 2 * (hidden + kv) + (q + hidden) + 2 * (hidden + mlp) + (mlp + hidden)
    return r * per_layer * layers


def test_the_published_8b_lora_sizes_are_the_docs_table():
    assert lora_floats(**SHAPES["Llama-3.1-8B"]) == 335_544_320
    assert lora_floats(**SHAPES["Qwen3-8B"]) == 349_175_808
    assert (2 * 335_544_320, 2 * 349_175_808) == (671_088_640, 698_351_616)  # bf16 bytes
    assert 2 * (6 + 1) * 4096 == 57_344  # six marker rows (three per matrix) and the vector, in bf16


def _published_files(directory):
    """The directory's tensors by module name, as a request would take them from the files."""
    from safetensors.torch import load_file

    config = json.loads((directory / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    saved = load_file(directory / "adapter_model.safetensors")
    factors = {}
    for key, a in saved.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            factors[name] = (a, saved[key.replace("lora_A", "lora_B")] * scaling)
    embed = saved["base_model.model.model.embed_tokens.weight"]
    return factors, embed, saved["base_model.model.lm_head.weight"]


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_local_rehearsal_of_a_remote_request_gives_the_explainers_logits(tmp_path, family):
    from nnsight import TransformersModel

    from selfinterp_nnsight.requests import recording_requests

    hub_id, user = CASES[family]
    model, tok = tiny_family_model(family)
    directory = published_stand_in(hub_id, model, tok, tmp_path / "explainer")
    explainer = load_transluce(directory, model, tok, hub_id)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    example = explainer.vector_example(user, vector, "", 1)
    with torch.no_grad():  # one forward as `generate`'s first step runs it
        embeds, mask, _ = explainer._embeds([example.prompt_ids], [example], left_pad=True)
        expected = explainer.model(inputs_embeds=embeds, attention_mask=mask).logits

    factors, embed, head = _published_files(directory)
    assert torch.equal(head, embed) == model.config.tie_word_embeddings  # the tiny Qwen3 ties them, the Llama not
    rows = [tok.convert_tokens_to_ids(m) for m in MARKERS[explainer.model.config.model_type]]
    base, base_tok = tiny_family_model(family)  # a fresh base: what NDIF serves (the wrapper may change it)
    for matrix, layer in ((embed, base.get_input_embeddings()), (head, base.get_output_embeddings())):
        assert not torch.equal(matrix[rows], layer.weight.detach()[rows])  # the markers' rows are the explainer's
    marker_rows, head_rows = embed[rows].clone(), head[rows].clone()  # what the request carries besides the factors
    ids = torch.tensor([example.prompt_ids])
    at = [example.prompt_ids.index(t) for t in rows]  # begin, feature, end
    assert at == [example.feature_pos - 1, example.feature_pos, example.feature_pos + 1]
    lm = TransformersModel(base, tokenizer=base_tok)
    order = [n for n, _ in base.named_modules() if n in factors]  # nnsight visits modules in the order they run
    c = base.config  # the formula counts what PEFT created: every A and B of the saved LoRA
    shape = dict(hidden=c.hidden_size, mlp=c.intermediate_size, layers=c.num_hidden_layers,
                 q=c.num_attention_heads * c.head_dim, kv=c.num_key_value_heads * c.head_dim)
    assert sum(t.numel() for f in factors.values() for t in f) == lora_floats(**shape)
    assert len(order) == 7 * c.num_hidden_layers
    with recording_requests() as blobs:
        with lm.trace(ids, remote="local"):
            embedded = lm.model.embed_tokens.output
            embedded[0, at] = marker_rows
            embedded[0, at[1]] = vector
            for name in order:
                envoy = lm
                for part in name.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                a, b = factors[name]
                x = envoy.input  # before the output: nnsight asks for values in the order they occur
                envoy.output = envoy.output + x @ a.T @ b.T
            h = lm.lm_head.input
            lm.lm_head.output[:, :, rows] = h @ head_rows.T
            logits = lm.output.logits.save()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)

    carried = sum(t.numel() * t.element_size() for f in factors.values() for t in f)
    extra = sum(t.numel() * t.element_size() for t in (marker_rows, head_rows, vector))
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    print(f"\n{family}: nnsight remote='local': {len(blobs)} request of {len(blobs[0]):,} bytes: the LoRA's factors on "
          f"{len(factors)} linears {carried:,} bytes in float32, marker rows and vector {extra:,} (the model's "
          f"weights: {weights:,} bytes, not sent)")
    assert len(blobs) == 1 and carried + extra < len(blobs[0]) < carried + extra + 64_000
    assert factors[order[0]][0].numpy().tobytes() in blobs[0]  # the factors travel as they are
    assert head_rows.numpy().tobytes() in blobs[0]
