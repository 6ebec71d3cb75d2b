"""How many SAE labels per minute generation scoring gets through on SmolLM2, against two yardsticks.

Ours: `generation_score` with the default writer, several labels' conversations in one left-padded,
sampled `generate` call (10 per label, 40 per call), each sample re-tokenised and run through model
+ SAE in batches of 16 and written to a per-sample JSONL as its batch lands.
One label at a time: the same scoring, labels scored one after another, each label's 10
conversations in one `generate` call of their own (the way a loop over labels does it).
Bare generate: transformers' `model.generate` on the same prompts in the same batches with the same
seeds, so it writes exactly the tokens ours wrote, with nothing parsed, scored or written: the floor
that batching across labels can approach.

Prints labels per minute of each and the ratios; then detection scoring against one judge prompt at
a time (--detection). The SAE is a directory (--sae) or a random SAE from a config (throughput does
not depend on what the latents mean).

    python benchmarks/sae_scoring.py [--sae runs/sae-e2e/sae] [--labels 8] [--naive-labels 4] [--detection]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sae", default=None, help="an SAE directory (default: random SAE at resid_post.6)")
    p.add_argument("--labels", type=int, default=8, help="labels scored the batched way (and by bare generate)")
    p.add_argument("--naive-labels", type=int, default=4, help="labels scored one label at a time")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--detection", action="store_true", help="also time detection scoring")
    args = p.parse_args()

    import torch

    from selfinterp_plugins import HFBackend
    from selfinterp_plugins.backends import pad_token_id
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.templates import end_of_turn_id
    from selfinterp_sae_lens.generation_scoring import ConversationWriter, generation_score
    from selfinterp_sae_lens.source import load_sae

    from _common import machine

    torch.set_num_threads(2)
    print(machine())
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
        out = fn()
        return time.perf_counter() - t, out

    writer = ConversationWriter(backend, batch_size=40)
    with tempfile.TemporaryDirectory() as tmp:
        ours, _ = timed(lambda: generation_score(records, sae, backend, writer, args.samples, output=Path(tmp) / "gen.jsonl",
                                                 batch_size=16, progress=False))
        written = [json.loads(line) for line in (Path(tmp) / "gen.jsonl").read_text().splitlines()]

    def one_at_a_time():
        alone = ConversationWriter(backend, batch_size=args.samples)
        for record in records[: args.naive_labels]:
            generation_score([record], sae, backend, alone, args.samples, batch_size=16, progress=False)

    naive, _ = timed(one_at_a_time)

    # bare generate: the same prompts, batches and seeds as ours, so the same tokens
    prompts = [writer.prompt_ids(r["label"]) for r in records for _ in range(args.samples)]
    pad = pad_token_id(tok)
    stop = [i for i in (tok.eos_token_id, end_of_turn_id(tok)) if i is not None]
    s = writer.sampling

    def bare():
        texts = []
        for start in range(0, len(prompts), writer.batch_size):
            chunk = prompts[start : start + writer.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad)
            mask = torch.zeros_like(ids)
            for i, q in enumerate(chunk):
                ids[i, width - len(q):], mask[i, width - len(q):] = torch.tensor(q), 1
            torch.manual_seed(s.seed + start)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=s.temperature,
                                     top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens, pad_token_id=pad,
                                     eos_token_id=stop)
            texts += [tok.decode([t for t in row if t not in stop and t != pad], skip_special_tokens=True,
                                 clean_up_tokenization_spaces=False).strip() for row in out[:, width:].tolist()]
        return texts

    floor, bare_texts = timed(bare)
    same = sum(a == b["text"] for a, b in zip(bare_texts, written))
    per_min = {"ours": args.labels / ours * 60, "one label at a time": args.naive_labels / naive * 60,
               "bare generate": args.labels / floor * 60}
    print(f"generation scoring, {args.samples} conversations per label (labels per minute): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_min.items()))
    print(f"ours / one label at a time {per_min['ours'] / per_min['one label at a time']:.2f}x; "
          f"ours / bare generate {per_min['ours'] / per_min['bare generate']:.2f}x "
          f"(bare generate wrote the same text as ours for {same} of {len(written)} samples)")

    if args.detection:
        from selfinterp_sae_lens.corpus import shakespeare_texts, token_windows
        from selfinterp_sae_lens.detection_scoring import ContextPool, ModelJudge, detection_score

        naive_records = records[: args.naive_labels]
        windows = token_windows(tok, shakespeare_texts()[:3], 32, limit=600, seed=0)
        t_pool, pool = timed(lambda: ContextPool.build(backend, sae, windows, [int(r["feature"]) for r in records]))
        d_ours, _ = timed(lambda: detection_score(records, pool, ModelJudge(backend, batch_size=32), tok, progress=False))
        d_naive, _ = timed(lambda: detection_score(naive_records, pool, ModelJudge(backend, batch_size=1), tok, progress=False))
        d_o, d_n = args.labels / (d_ours + t_pool) * 60, args.naive_labels / d_naive * 60
        print(f"detection scoring (20 + 20 contexts per label, pool of {len(windows)} windows built in {t_pool:.1f} s): "
              f"ours {d_o:.1f} latents/min incl. the pool, naive {d_n:.1f} latents/min, ratio {d_o / d_n:.2f}x")


if __name__ == "__main__":
    main()
