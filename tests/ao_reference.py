"""The Activation Oracles' reference, re-stated for the tests (adamkarvonen/activation_oracles at
55f153f; each function names the file and lines it re-states). Written from a reading of that
code, not copied, and not from what this library does: the tests compare the library with these.

- the oracle's prompt: `get_introspection_prefix` (nl_probes/utils/dataset_utils.py 13-17) before
  the question, one user turn rendered by `apply_chat_template(..., add_generation_prompt=True,
  enable_thinking=False)` (304-316);
- where the vectors go: `find_pattern_in_tokens` (261-285), the first K ` ?` tokens, consecutive;
- the injection: `get_hf_activation_steering_hook` (nl_probes/utils/steering_hooks.py 129-195),
  a forward hook on decoder layer 1 (`hook_onto_layer = 1`, nl_probes/configs/sft_config.py 15)
  that, in the prompt's forward pass only (L > 1), sets each slot's residual h to
  (normalize(v)·‖h‖·c).to(dtype) + h, c = 1 (sft_config.py 23);
- the answer: `model.generate(**inputs, do_sample=False, max_new_tokens=...)` under that hook
  (nl_probes/utils/eval.py 54-55);
- a LoRA oracle: PEFT's LoRA, here merged into the weights by hand, W + (lora_alpha / r)·B·A.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

SPECIAL_TOKEN = " ?"  # dataset_utils.py line 10


def introspection_prefix(layer: int, num_positions: int) -> str:
    return f"Layer: {layer}\n" + SPECIAL_TOKEN * num_positions + " \n"


def prompt_ids(tokenizer, layer: int, num_positions: int, question: str) -> list[int]:
    messages = [{"role": "user", "content": introspection_prefix(layer, num_positions) + question}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, enable_thinking=False)
    return list(out if isinstance(out, list) else out["input_ids"])


def pattern_positions(ids: list[int], tokenizer, num_positions: int) -> list[int]:
    special = tokenizer.encode(SPECIAL_TOKEN, add_special_tokens=False)
    assert len(special) == 1
    positions = []
    for i, token in enumerate(ids):
        if len(positions) == num_positions:
            break
        if token == special[0]:
            positions.append(i)
    assert len(positions) == num_positions and positions[-1] - positions[0] == num_positions - 1
    return positions


def steering_hook(vectors: list[torch.Tensor], positions: list[list[int]], coef: float, dtype: torch.dtype):
    normed = [F.normalize(v, dim=-1).detach() for v in vectors]

    def hook(module, inputs, output):
        resid = output[0] if isinstance(output, tuple) else output
        if resid.shape[1] <= 1:  # a decoding step: no steering
            return output
        for b in range(len(vectors)):
            pos = torch.tensor(positions[b], dtype=torch.long, device=resid.device)
            orig = resid[b, pos, :]
            norms = orig.norm(dim=-1, keepdim=True)
            steered = (normed[b].to(resid.device) * norms * coef).to(dtype)
            resid[b, pos, :] = steered.detach() + orig
        return output

    return hook


def layer_module(model, layer: int = 1):
    """`get_hf_submodule` (nl_probes/utils/activation_utils.py 137-158): `model.model.layers[layer]`."""
    return model.model.layers[layer]


@torch.no_grad()
def reference_run(model, ids: list[int], vectors: torch.Tensor, positions: list[int], coef: float = 1.0,
                  layer: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual stream leaving decoder layer `layer`, after the hook, (B, T, d); logits (B, T, V))
    of the prompt for each row's vectors (B, K, d) under the reference's hook."""
    batch = torch.tensor([ids] * len(vectors))
    dtype = next(model.parameters()).dtype
    hook = steering_hook(list(vectors), [positions] * len(vectors), coef, dtype)
    seen = {}

    def steer_and_keep(module, inputs, output):
        output = hook(module, inputs, output)
        seen["resid"] = (output[0] if isinstance(output, tuple) else output).clone()
        return output

    handle = layer_module(model, layer).register_forward_hook(steer_and_keep)
    try:
        logits = model(input_ids=batch).logits
    finally:
        handle.remove()
    return seen["resid"], logits


@torch.no_grad()
def reference_answers(model, tokenizer, ids: list[int], vectors: torch.Tensor, positions: list[int], max_new_tokens: int,
                      coef: float = 1.0, layer: int = 1) -> list[list[int]]:
    """Greedy new tokens per row under the reference's hook (eval.py 54-55)."""
    batch = torch.tensor([ids] * len(vectors))
    dtype = next(model.parameters()).dtype
    handle = layer_module(model, layer).register_forward_hook(
        steering_hook(list(vectors), [positions] * len(vectors), coef, dtype))
    try:
        out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    finally:
        handle.remove()
    return out[:, len(ids):].tolist()


def cut(tokens: list[int], stops: set[int]) -> list[int]:
    """A row's tokens up to and including its first stop token, as the library returns a row."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


def merged_by_hand(model, adapter_dir) -> torch.nn.Module:
    """A copy of `model` with a plain LoRA directory's factors merged: W + (lora_alpha / r)·B·A per
    module (PEFT's scaling without rsLoRA or patterns), read from the files with safetensors."""
    import json
    from pathlib import Path

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    merged = copy.deepcopy(model)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[len("base_model.model."):-len(".lora_A.weight")]
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            modules[name].weight += scale * (b.float() @ a.float()).to(modules[name].weight.dtype)
    return merged


def eval_prompt_ids(tokenizer, layer: int, num_positions: int, question: str) -> list[int]:
    """What the reference evaluates with: the prompt + "N/A" answer rendering cut to the prompt's
    length (`create_training_datapoint` then `get_prompt_tokens_only`, dataset_utils.py 320-337 and
    136-156; eval.py 128-129)."""
    messages = [{"role": "user", "content": introspection_prefix(layer, num_positions) + question},
                {"role": "assistant", "content": "N/A"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, enable_thinking=False)
    full = list(out if isinstance(out, list) else out["input_ids"])
    return full[: len(prompt_ids(tokenizer, layer, num_positions, question))]
