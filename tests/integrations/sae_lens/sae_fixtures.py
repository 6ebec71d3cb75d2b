"""SAEs built from configs for the SAE-Lens tests: a random one, and a planted one whose latents
fire on known tokens, so scorers can be checked against a known answer."""

from __future__ import annotations

import torch

WORDS = (" cat", " dog", " river")  # planted latents 0, 1, 2 fire on exactly these tokens


def random_sae(d_in: int, d_sae: int = 16, hook: str = "blocks.1.hook_resid_post", seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu"))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "tiny"
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return sae


def planted_sae(backend, words=WORDS, d_sae: int = 8, margin: float = 0.9):
    """An SAE at the input embedding whose latent i fires (value ~0.1) on token `words[i]` only:
    W_enc[:, i] = e / |e|^2, b_enc = -margin, so x . W_enc[:, i] - margin > 0 iff x is close to e.
    Other latents never fire (b_enc = -100)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    tok = backend.tokenizer
    sae = StandardSAE(StandardSAEConfig(d_in=backend.d_model, d_sae=d_sae, dtype="float32", device="cpu",
                                        apply_b_dec_to_input=False))
    sae.cfg.metadata.hook_name = "hook_embed"
    sae.cfg.metadata.model_name = "planted"
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-100.0)
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape))
        for i, word in enumerate(words):
            ids = tok(word, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, word
            e = backend.embed_tokens(torch.tensor(ids)).float()[0]
            sae.W_enc[:, i] = e / e.dot(e)
            sae.b_enc[i] = -margin
            sae.W_dec[i] = e
    return sae


