"""Epoch checkpoints, and the training loop that writes them (DIT, the LoRA explainer).

After each epoch the trainable weights and Adam's state go to epoch-named safetensors files, then
`state.json` (written last, atomically) names the epoch and holds the loss history; a kill at any
moment leaves the previous epoch's checkpoint intact, and a rerun resumes after it, ending exactly
where an uninterrupted run ends (the caller replays its seeded batch order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.serialization import load_safetensors, read_json, save_safetensors, write_json
from selfinterp_plugins.validation import LossValue, between, check_finite_tensors, validate

#: more epochs than any run has: a larger `epochs_done` is corruption
MAX_EPOCHS = 10**6


@dataclass
class EpochState:
    """The fields of an epoch checkpoint's `state.json`: the epochs done and the loss per step."""

    epochs_done: Annotated[int, between(0, MAX_EPOCHS)]
    history: list[LossValue] = field(default_factory=list)


def save_epoch(directory: Path, epochs_done: int, named, optimizer, history: list[float]) -> None:
    """Weights and Adam state in epoch-named files, then state.json (replaced atomically) names the
    epoch: a kill at any point leaves the previous epoch's checkpoint intact."""
    from selfinterp_plugins.training import optimizer_state

    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors({n: p.detach().clone() for n, p in named}, directory / f"adapter-{epochs_done}.safetensors")
    save_safetensors(optimizer_state(optimizer, named), directory / f"optimizer-{epochs_done}.safetensors")
    write_json({"epochs_done": epochs_done, "history": history}, directory / "state.json")
    for old in directory.glob("*-*.safetensors"):
        if not old.stem.endswith(f"-{epochs_done}"):
            old.unlink()


def resume_epochs(directory, named, optimizer) -> tuple[list[float], int]:
    from selfinterp_plugins.training import restore_optimizer

    if directory is None or not (Path(directory) / "state.json").exists():
        return [], 0
    directory = Path(directory)
    fix = f"delete {directory} to start over."
    state = validate(EpochState, read_json(directory / "state.json"), str(directory / "state.json"), fix, unknown="ignore")
    done = state.epochs_done
    weights = check_finite_tensors(load_safetensors(directory / f"adapter-{done}.safetensors"), directory, fix)
    with torch.no_grad():
        for name, param in named:
            if name not in weights:
                raise ArtifactError(f"Checkpoint {directory} lacks {name}; it is from another configuration. Delete it to start over.")
            param.copy_(weights[name])
    restore_optimizer(optimizer, named, load_safetensors(directory / f"optimizer-{done}.safetensors"))
    return list(state.history), done


def epoch_batches(n: int, epochs: int, batch_size: int, seed: int, shuffle: bool = True) -> list[list[list[int]]]:
    """Per epoch, the batches of row indices, shuffled (drawn all at once from `seed`, so a resumed
    run sees exactly the batches an uninterrupted one would) or in data order."""
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = list(range(n))
        if shuffle:
            rng.shuffle(order)
        out.append([order[i : i + batch_size] for i in range(0, len(order), batch_size)])
    return out


def run_epochs(batches: list[list[list[int]]], loss_of, named, optimizer, checkpoint_dir=None, progress: bool = False,
               desc: str = "train", reseed: int | None = None, grad_clip: float | None = None) -> list[float]:
    """Optimise `loss_of(rows)` over `batches` (from `epoch_batches`), resuming after the last
    saved epoch in `checkpoint_dir` and saving after each one; returns the loss per step.
    `reseed`: seed torch with `reseed + epoch` at each epoch's start (dropout draws that a resumed
    run repeats). `grad_clip`: the global gradient norm is clipped to it before each step."""
    from tqdm.auto import tqdm

    history, first = resume_epochs(checkpoint_dir, named, optimizer)
    bar = tqdm(total=sum(map(len, batches)), initial=sum(map(len, batches[:first])), disable=not progress, desc=desc)
    for epoch in range(first, len(batches)):
        if reseed is not None:
            torch.manual_seed(reseed + epoch)
        for rows in batches[epoch]:
            loss = loss_of(rows)
            optimizer.zero_grad()
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], grad_clip)
            optimizer.step()
            history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        if checkpoint_dir is not None:
            save_epoch(Path(checkpoint_dir), epoch + 1, named, optimizer, history)
    bar.close()
    return history
