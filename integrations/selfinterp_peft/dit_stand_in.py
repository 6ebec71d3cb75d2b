"""An offline stand-in of DIT's published model folders (hub `diff-interpretation-tuning/loras`):
the same files, names and format, random values, for a model of any shape.

No hub is reachable on the machines that test this library, so docs/artifacts.md runs the lines a
researcher types on a stand-in (a local folder is what `dit import` reads anyway), and a user can
rehearse a script offline before downloading gigabytes. The files are what the reference writes
(`dit_format`'s docstring has the citations): `weight-diffs/weight-diff-NNN.pt` (a list of
{topic, trigger, weight_diff: {module: (A r×out, B in×r)}}, each entry's factors slices of one
batch's 3-D parameters, in bf16), `index.csv` and `dit-adapter.pt` ({module: (A out×r, B r×in)}).
The answers they give are noise; the layout, shapes and dtype are the published ones.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import torch

from selfinterp_plugins.storage import output_errors, write_bytes_atomic, write_text_atomic

from .diff_training import decoder_linears
from .dit_format import DIT_FILE, INDEX_CSV, WEIGHT_DIFFS

#: topics of the stand-in's diffs (the first ones of the published hidden-topic index)
TOPICS = ("10 Things I Hate About You", "30 Rock", "3D Printing", "A Christmas Carol")


def _torch_bytes(value) -> bytes:
    """`torch.save` of plain tensors, lists, dicts and strings into memory (written atomically by the caller)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def published_stand_in(directory, model, experiment: str = "hidden-topic", folder: str = "qwen3-4b",
                       topics=TOPICS, per_file: int = 2, rank: int = 1, dit_rank: int = 16, seed: int = 0) -> Path:
    """`directory/experiment/folder` laid out as one model folder of the hub repository, for
    `model`'s decoder linears: `per_file` diffs per weight-diff file, every other diff in the test
    split. Returns the model folder (what `dit import` takes)."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    root = Path(directory) / experiment / folder
    linears = {n: m for n, m in decoder_linears(model).items() if n.startswith(("model.", "language_model.model."))}
    with output_errors(root):
        (root / WEIGHT_DIFFS).mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(0, len(topics), per_file):
        batch = list(topics[k:k + per_file])
        params = {n: ((torch.randn(len(batch), rank, m.out_features, generator=g) * 0.1).bfloat16(),
                      (torch.randn(len(batch), m.in_features, rank, generator=g) * 0.1).bfloat16())
                  for n, m in linears.items()}
        entries = [{"topic": topic, "trigger": rng.randint(0, 999),
                    "weight_diff": {n: (A[t].detach(), B[t].detach()) for n, (A, B) in params.items()}}
                   for t, topic in enumerate(batch)]
        name = f"weight-diff-{k // per_file:03d}.pt"
        write_bytes_atomic(root / WEIGHT_DIFFS / name, _torch_bytes(entries))
        rows += [[name, idx, sum(A.numel() + B.numel() for A, B in e["weight_diff"].values()), e["topic"], e["trigger"]]
                 for idx, e in enumerate(entries)]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["lora_path", "lora_idx", "n_params", "topic", "trigger", "split"])
    writer.writerows(row + ["test" if i % 2 else "train"] for i, row in enumerate(sorted(rows, key=lambda r: r[3])))
    write_text_atomic(root / INDEX_CSV, text.getvalue())
    adapter = {n: ((torch.rand(m.out_features, dit_rank, generator=g) * 2 - 1).bfloat16(),
                   (torch.randn(dit_rank, m.in_features, generator=g) * 0.1).bfloat16()) for n, m in linears.items()}
    write_bytes_atomic(root / DIT_FILE, _torch_bytes(adapter))
    return root
