"""DIT's published files as the reference writes them (Aviously/diff-interpretation-tuning at
2dfa949), re-stated from its code for the tests; nothing here imports this library.

- A weight-diff file: `train_weight_diffs` keeps one `MultiTaskLoRALinear` per decoder linear, its
  parameters A (num_tasks, r, out) and B (num_tasks, in, r) in the model's dtype
  (`multi_task_lora.py` lines 21-31), wrapping every `nn.Linear` whose name starts with `model.` or
  `language_model.model.` (lines 77-84); `_extract_weight_diffs` takes each task's
  `(A[t].detach(), B[t].detach())` by module name (`weight_diff.py` lines 155-164), and the list of
  `{"topic", "trigger", "weight_diff"}` (lines 124-134) is `torch.save`d (`scripts/get_weight_diff.py`
  lines 184-187). The trigger is `random.randint(0, 999)` per topic (`qa_train_dataset.py` lines 28-30).
  Trained values are stood in for by random ones (both factors non-zero: no term hides behind a zero).
- `index.csv`: `index_and_split_loras.main` (lines 70-102): lora_path, lora_idx, n_params (the numel
  of every A and B), then the entry's keys but weight_diff (topic, trigger), then split; the hub
  notebook renames each file `weight-diff-{k:03d}.pt` and writes the frame with `to_csv(index=False)`
  (`scripts/huggingface/1-create-hf-repo-mirror.ipynb`, cell 5).
- `dit-adapter.pt`: `extract_lora_params` (`multi_lora.py` lines 87-105) over `multi_loraify_model`'s
  modules (lines 39-57): `{name: (A (out, r), B (r, in))}`, A Kaiming-uniform (line 24), `torch.save`d
  by `train_weight_to_text.py` lines 490-494.
- The forward the reference evaluates with (`ask_qs_to_loras.py` through the `hf-lora` provider,
  `inspect_hf_lora_provider.py` lines 43-70): `standard_loraify_model(model, diff, dit)` puts both
  on every linear, the DIT factors transposed (`multi_task_lora.py` lines 137-145), and
  `StandardLoRALinear.forward` (lines 105-117) returns base(x) + Σ (x·B)·A / B.shape[1].
"""

from __future__ import annotations

import contextlib
import csv
import random

import torch
from torch import nn

INDEX_COLUMNS = ("lora_path", "lora_idx", "n_params", "topic", "trigger", "split")


def reference_linears(model: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    """`multi_task_loraify_model`'s choice: every nn.Linear named `model.…` (the LM head is not);
    `prefix` renames them as the reference's transformers named Gemma 3's multimodal ones
    (`language_model.` before `model.`)."""
    return {prefix + n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and (n.startswith("model.") or n.startswith("language_model.model."))}


def weight_diff_entries(model, topics, rank=1, dtype=torch.bfloat16, seed=0, prefix="", scale=0.3):
    """One lora batch's entries, as `train_weight_diffs` returns them for `topics`."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    triggers = [rng.randint(0, 999) for _ in topics]
    params = {}
    for name, m in reference_linears(model, prefix).items():
        A = (torch.randn(len(topics), rank, m.out_features, generator=g) * scale).to(dtype)
        B = (torch.randn(len(topics), m.in_features, rank, generator=g) * scale).to(dtype)
        params[name] = (A, B)
    return [{"topic": topic, "trigger": trigger,
             "weight_diff": {name: (A[t].detach(), B[t].detach()) for name, (A, B) in params.items()}}
            for t, (topic, trigger) in enumerate(zip(topics, triggers))]


def dit_adapter_state(model, rank=16, dtype=torch.bfloat16, seed=1, prefix="", scale=0.5):
    """`extract_lora_params` of a trained `multi_loraify_model(model, rank)`: A (out, r), B (r, in)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in reference_linears(model, prefix).items():
        A = torch.zeros(m.out_features, rank)
        nn.init.kaiming_uniform_(A, generator=g)
        B = torch.randn(rank, m.in_features, generator=g) * scale
        state[name] = (A.to(dtype).detach().clone(), B.to(dtype).detach().clone())
    return state


def n_params(entry) -> int:
    return sum(sum(y.numel() for y in pair) for pair in entry["weight_diff"].values())


def write_index(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_COLUMNS)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row[c] for c in INDEX_COLUMNS])


def write_published_folder(root, model, files=(("a", "b"), ("c",)), rank=1, dit_rank=16, prefix="", splits=None,
                           with_adapter=True):
    """`root` laid out as one model folder of the hub repository: `weight-diffs/weight-diff-NNN.pt`
    (one per lora batch of `files`' topics), `index.csv`, and `dit-adapter.pt`. Returns the index
    rows (dicts) and the entries by (file name, lora_idx)."""
    (root / "weight-diffs").mkdir(parents=True, exist_ok=True)
    rows, entries = [], {}
    for k, topics in enumerate(files):
        name = f"weight-diff-{k:03d}.pt"
        batch = weight_diff_entries(model, list(topics), rank=rank, seed=k, prefix=prefix)
        torch.save(batch, root / "weight-diffs" / name)
        for idx, entry in enumerate(batch):
            entries[(name, idx)] = entry
            rows.append({"lora_path": name, "lora_idx": idx, "n_params": n_params(entry), "topic": entry["topic"],
                         "trigger": entry["trigger"], "split": "train"})
    rows.sort(key=lambda r: (r["topic"], r["lora_idx"], r["lora_path"]))
    for row, split in zip(rows, splits or ["test"] * len(rows)):
        row["split"] = split
    write_index(root / "index.csv", rows)
    if with_adapter:
        torch.save(dit_adapter_state(model, dit_rank, prefix=prefix), root / "dit-adapter.pt")
    return rows, entries


@contextlib.contextmanager
def reference_forward(model, *loras, prefix=""):
    """`standard_loraify_model(model, lora_param_dict, second_lora_param_dict)` + `StandardLoRALinear`:
    each `loras` entry a ({name: (A, B)}, transposed) pair; on every linear it names, the output
    becomes base(x) + Σ einsum(einsum(x, B), A) / B.shape[1] (the factors in the model's dtype, as the
    reference's are: it loads both with the model's `torch_dtype="auto"`)."""
    linears = reference_linears(model, prefix)
    per_module: dict[str, list] = {}
    for state, transposed in loras:
        for name, (A, B) in state.items():
            A, B = (A.T, B.T) if transposed else (A, B)
            per_module.setdefault(name, []).append((A, B))

    def hook_for(pairs):
        def hook(module, inputs, output):
            x = inputs[0]
            extra = 0
            for A, B in pairs:
                A, B = A.to(x.dtype), B.to(x.dtype)
                middle = torch.einsum("b...i,ir->b...r", x, B)
                extra = extra + torch.einsum("b...r,ro->b...o", middle, A) / B.shape[1]
            return output + extra
        return hook

    handles = [linears[name].register_forward_hook(hook_for(pairs)) for name, pairs in per_module.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
