"""How many SAE latents per minute generation and detection scoring get through on SmolLM2.

Ours: conversations for several labels written in one sampled batch (10 per label, batch 40),
re-tokenised and run through model + SAE in batches of 16; detection contexts judged 32 prompts per
forward pass, latent activations of the context pool computed once for all latents.
Naive: the same work one conversation / one judge prompt at a time.
Prints latents per minute for both and the ratio; the SAE is the end-to-end one (--sae) or a
random SAE from a config (throughput does not depend on what the latents mean).

    python benchmarks/sae_scoring.py [--sae runs/sae-e2e/sae]
"""

from __future__ import annotations

import argparse
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sae", default=None, help="an SAE directory (default: random SAE at resid_post.6)")
    p.add_argument("--labels", type=int, default=8, help="latents scored the batched way")
    p.add_argument("--naive-labels", type=int, default=2, help="latents scored one sample at a time")
    p.add_argument("--samples", type=int, default=10)
    args = p.parse_args()

    import torch

    from selfinterp_plugins import HFBackend
    from selfinterp_plugins.models import load_model
    from selfinterp_sae_lens.corpus import shakespeare_texts, token_windows
    from selfinterp_sae_lens.detection_scoring import ContextPool, ModelJudge, detection_score
    from selfinterp_sae_lens.generation_scoring import ConversationWriter, generation_score
    from selfinterp_sae_lens.source import load_sae

    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m-instruct")
    backend = HFBackend(model, tok)
    if args.sae:
        sae = load_sae(args.sae)
    else:
        from sae_lens import StandardSAE, StandardSAEConfig

        sae = StandardSAE(StandardSAEConfig(d_in=backend.d_model, d_sae=4608, dtype="float32", device="cpu"))
        sae.cfg.metadata.hook_name = "blocks.6.hook_resid_post"
    words = ["love", "king", "sword", "night", "blood", "crown", "death", "honour", "gold", "heaven", "sea", "war"]
    records = [{"id": str(i), "feature": i, "scale": 1.0, "label": words[i % len(words)]} for i in range(args.labels)]

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    ours = timed(lambda: generation_score(records, sae, backend, ConversationWriter(backend, batch_size=40),
                                          args.samples, chunk=4, batch_size=16, progress=False))
    naive_records = records[: args.naive_labels]
    naive = timed(lambda: generation_score(naive_records, sae, backend, ConversationWriter(backend, batch_size=1),
                                           args.samples, chunk=1, batch_size=1, progress=False))
    g_ours, g_naive = args.labels / ours * 60, args.naive_labels / naive * 60
    print(f"generation scoring ({args.samples} conversations per label): ours {g_ours:.1f} latents/min, "
          f"naive {g_naive:.1f} latents/min, ratio {g_ours / g_naive:.2f}x")

    windows = token_windows(tok, shakespeare_texts()[:3], 32, limit=600, seed=0)
    features = [int(r["feature"]) for r in records]
    t_pool = timed(lambda: ContextPool.build(backend, sae, windows, features))
    pool = ContextPool.build(backend, sae, windows, features)
    d_ours = timed(lambda: detection_score(records, pool, ModelJudge(backend, batch_size=32), tok, progress=False))
    d_naive = timed(lambda: detection_score(naive_records, pool, ModelJudge(backend, batch_size=1), tok, progress=False))
    d_o, d_n = args.labels / (d_ours + t_pool) * 60, args.naive_labels / d_naive * 60
    print(f"detection scoring (20 + 20 contexts per label, pool of {len(windows)} windows built in {t_pool:.1f} s): "
          f"ours {d_o:.1f} latents/min incl. the pool, naive {d_n:.1f} latents/min, ratio {d_o / d_n:.2f}x")


if __name__ == "__main__":
    main()
