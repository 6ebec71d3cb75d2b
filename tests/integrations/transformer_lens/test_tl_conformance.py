"""The transformer_lens backend passes the conformance suite on a HookedTransformer converted from
the tiny transformers model (TransformerLens' own weight conversion) and on a TransformerBridge
wrapping it."""

from __future__ import annotations

import tempfile
import warnings

import pytest

pytest.importorskip("transformer_lens")

from selfinterp_plugins.testing import BackendConformance  # noqa: E402
from selfinterp_transformer_lens.backend import TransformerLensBackend  # noqa: E402

warnings.filterwarnings("ignore")


def hooked_from(model, tokenizer):
    """A HookedTransformer holding `model`'s weights, converted by TransformerLens itself (its
    `from_pretrained` accepts only the official checkpoints' names, so the steps are spelled out)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict

    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "n_positions"):
        config.n_ctx = config.n_positions  # GPT2Config in transformers 5 no longer has n_ctx
    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        fields = convert_hf_model_config(directory)
        if getattr(config, "n_inner", None):
            fields["d_mlp"] = config.n_inner  # TL assumes 4 * d_model for GPT-2
        fields.update(device="cpu", default_prepend_bos=False)
        cfg = HookedTransformerConfig(**fields)
        state = get_pretrained_state_dict(directory, cfg, hf_model=model)
    hooked = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    hooked.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                       fold_value_biases=False)
    hooked.eval()
    for p in hooked.parameters():
        p.requires_grad_(False)
    return hooked


class TestHookedTransformer(BackendConformance):
    archs = ("llama", "gpt2")
    atol = 1e-4  # TransformerLens' own implementation of the model: sums in another order

    def make_backend(self, model, tokenizer):
        return TransformerLensBackend(hooked_from(model, tokenizer), tokenizer)


class TestTransformerBridge(BackendConformance):
    archs = ("llama", "gpt2", "gemma3")

    def make_backend(self, model, tokenizer):
        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
            bridge = TransformerBridge.boot_transformers(directory, hf_model=model, tokenizer=tokenizer)
        return TransformerLensBackend(bridge, tokenizer)
