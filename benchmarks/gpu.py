"""The training step and explaining on a Llama-3.1-8B-shaped model, against the same floors as
benchmarks/training_step.py and benchmarks/explain.py (their functions, imported), with peak memory.

The model has random weights, built from a transformers `LlamaConfig` with the 8B's sizes (hidden
4096, 32 layers, 32 query and 8 key-value heads, MLP 14336, the Llama 3.1 vocabulary and rope), so
nothing downloads; its tokenizer is the real Llama 3.1 one (offline, `family_tokenizer`). A random
model writes no closing string, so every label runs its full `--max-new-tokens`: the same work on
every run. The adapter is `full_rank` (the shipped kind, d² + d parameters) with the echo template.

    python benchmarks/gpu.py                          # CUDA, bfloat16, the 8B shape
    python benchmarks/gpu.py --device cpu --tiny      # the same code on a tiny shape (the tests' smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch
from explain import floor_generate, timed_explain

from _common import machine, median_time
from training_step import floor_step, ours_step

#: Llama-3.1-8B's config.json, the sizes that set the work (the rest are LlamaConfig's defaults)
LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=8192))
#: the same architecture at the tests' tiny size
TINY = dict(LLAMA31_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def build(sizes: dict, device: str, dtype: torch.dtype):
    """(model, tokenizer): random weights of `sizes` made directly on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from selfinterp_plugins.models import family_tokenizer

    tokenizer = family_tokenizer("llama3.1")
    config = LlamaConfig(**sizes, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, tokenizer


def synced(fn, device: torch.device):
    """`fn` that returns only once the device has run it (CUDA queues kernels and returns at once)."""
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def peak(device: torch.device, fn):
    """(fn's result, the peak memory allocated on `device` while it ran, in GiB; None off CUDA)."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) / 2**30


def gib(value) -> str:
    return "n/a (not CUDA)" if value is None else f"{value:.2f} GiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape instead of the 8B one")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                        help="default: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--n", type=int, default=64, help="vectors to explain")
    parser.add_argument("--explain-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from selfinterp_plugins import Explainer, HFBackend, Sampling
    from selfinterp_plugins.topics import load_topics

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    start = time.perf_counter()
    model, tokenizer = build(TINY if args.tiny else LLAMA31_8B, args.device, dtype)
    built = time.perf_counter() - start
    explainer = Explainer.create(HFBackend(model, tokenizer), adapter="full_rank", template="echo", site="embed")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    d = model.config.hidden_size
    print(f"machine: {machine()}")
    print(f"device: {card}; {dtype}; shape {'tiny' if args.tiny else 'llama-3.1-8b'}: d_model {d}, "
          f"{model.config.num_hidden_layers} layers, vocab {model.config.vocab_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}e9 parameters, built in {built:.1f} s")

    titles = [t["title"] for t in load_topics() if t["split"] == "train"]
    generator = torch.Generator().manual_seed(0)
    labels = titles[: args.batch]
    vectors = torch.randn(args.batch, d, generator=generator)
    t_ours, mem_ours = peak(device, lambda: median_time(synced(ours_step(explainer, vectors, labels), device), args.repeat))
    t_floor, mem_floor = peak(device, lambda: median_time(synced(floor_step(explainer, labels), device), args.repeat))
    print(f"training step: batch {args.batch}, ours {t_ours * 1000:.1f} ms, floor {t_floor * 1000:.1f} ms -> "
          f"ours / floor = {t_ours / t_floor:.2f}x (goal <= 1.10x); peak memory ours {gib(mem_ours)}, "
          f"floor {gib(mem_floor)}")

    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    to_explain = torch.randn(args.n, d, generator=generator)
    explainer.explain(to_explain[:4], sampling=sampling, progress=False)  # warm-up
    (_, t_explain, generated), mem_explain = peak(
        device, lambda: timed_explain(explainer, to_explain, sampling, args.explain_batch))
    t_gen_floor, mem_gen_floor = peak(device, lambda: floor_generate(explainer, generated, args.explain_batch))
    tokens = sum(map(len, generated))
    print(f"explain: {args.n} vectors, batch {args.explain_batch}, {tokens} new tokens, ours {t_explain:.3f} s, "
          f"floor {t_gen_floor:.3f} s -> ours / floor = {t_explain / t_gen_floor:.2f}x (goal <= 1.10x); "
          f"peak memory ours {gib(mem_explain)}, floor {gib(mem_gen_floor)}")


if __name__ == "__main__":
    main()
