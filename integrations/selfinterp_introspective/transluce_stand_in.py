"""An offline stand-in for a published Transluce explainer directory: the layout the reference's
training writes (see `transluce`), with random values, on a model of the right family. For the
docs' runnable lines and for trying the loader without the hub; no answer it gives means anything."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .transluce import MARKERS, published


def published_stand_in(hub_id: str, model, tokenizer, directory: str | Path, seed: int = 0) -> Path:
    """`directory` written as `hf download hub_id` would leave it (safetensors only): a full
    fine-tune's transformers directory, or the LoRA r 128 saved with its embedding layers; the
    marker rows re-drawn as the reference draws them (mean + std * noise). `model` is not changed."""
    spec = published(hub_id)
    directory = Path(directory)
    gen = torch.Generator().manual_seed(seed)
    tuned = copy.deepcopy(model)
    ids = [tokenizer.convert_tokens_to_ids(m) for m in MARKERS[spec.model_type]]
    with torch.no_grad():
        for layer in {id(x): x for x in (tuned.get_input_embeddings(), tuned.get_output_embeddings())}.values():
            mean, std = layer.weight.mean(0), layer.weight.var(0).sqrt()
            for i in ids:
                layer.weight[i] = mean + std * torch.randn(layer.weight.shape[1], generator=gen)
    if spec.finetune == "full":
        tuned.save_pretrained(directory, safe_serialization=True)
    else:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=128, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"])
        lora = get_peft_model(tuned, config)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        lora.save_pretrained(directory, save_embedding_layers=True)
    tokenizer.save_pretrained(directory)
    return directory
