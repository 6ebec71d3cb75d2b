"""How one training run of the LoRA-tuned explainer goes, where the reference's Trainer and
dataset decide it (Li et al. 2025): which parameters AdamW decays, and which paraphrase of each
prompt a pass over the data sees."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import torch

from .config import TaskExample

#: the Hugging Face Trainer's exemptions from weight decay (`Trainer.get_decay_parameter_names`), which
#: the reference's training runs with: biases and norm weights are not decayed
NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decay_groups(named, modules, weight_decay: float) -> list[dict]:
    """AdamW's two parameter groups as the reference's Trainer builds them: `weight_decay` for
    every parameter but biases, norm weights (by name) and those of `nn.LayerNorm`s in `modules`."""
    in_layer_norm = {id(p) for m in modules if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    exempt = [p for n, p in named if NO_DECAY.search(n) or id(p) in in_layer_norm]
    exempt_ids = {id(p) for p in exempt}
    decayed = [p for _, p in named if id(p) not in exempt_ids]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def paraphrases_of_epoch(examples: list[TaskExample], seed: int, epoch: int) -> list[TaskExample]:
    """The examples as one training pass sees them: each with paraphrases gets one drawn at random,
    as the reference's dataset draws one (`random.choice`) each time it is iterated."""
    rng = random.Random(f"paraphrases/{seed}/{epoch}")
    out = []
    for ex in examples:
        if ex.paraphrases:
            ids, pos = rng.choice(ex.paraphrases)
            ex = replace(ex, prompt_ids=ids, feature_pos=pos)
        out.append(ex)
    return out
