"""Epoch checkpoints, and the training loop that writes them (DIT, the LoRA explainer).

After each epoch the trainable weights and Adam's state go to epoch-named safetensors files, then
`state.json` (written last, atomically) names the epoch and holds the loss history; a kill at any
moment leaves the previous epoch's checkpoint intact, and a rerun resumes after it, ending exactly
where an uninterrupted run ends (the caller replays its seeded batch order).

The checkpoint directory is locked while a run writes it (a second run into it fails at once),
and `state.json` holds the run's manifest (the caller's settings, the data's count and SHA-256,
the base model's fingerprint): a resume with another setting is refused by
`selfinterp_plugins.storage.check_same_run`, naming it, before any weight is loaded; only the
number of epochs may grow (these loops have no schedule tied to it). A checkpoint written before
manifests were recorded resumes as before.

In the core's public API because every trainer that resumes by epoch (DIT in the PEFT plugin,
Li et al.'s explainer in the introspective plugin) needs the same checkpoints, and a plugin never
imports another plugin."""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from selfinterp_plugins.errors import ArtifactError, RunMismatchError
from selfinterp_plugins.storage import (
    DirectoryLock,
    load_safetensors,
    output_errors,
    read_json,
    save_safetensors,
    sha256_hex,
    write_json,
)
from selfinterp_plugins.storage.validation import LossValue, between, check_finite_tensors, validate

__all__ = ["MAX_EPOCHS", "EpochState", "epoch_batches", "normalised", "resume_epochs", "rows_sha256", "run_epochs", "save_epoch"]

#: more epochs than any run has: a larger `epochs_done` is corruption
MAX_EPOCHS = 10**6


@dataclass
class EpochState:
    """The fields of an epoch checkpoint's `state.json`: the epochs done, the loss per step and the
    run's manifest (absent before manifests were recorded)."""

    epochs_done: Annotated[int, between(0, MAX_EPOCHS)]
    history: list[LossValue] = field(default_factory=list)
    run: dict | None = None


def rows_sha256(rows) -> str:
    """SHA-256 of training rows, each a sequence of parts: tensors (dtype, shape and values) or
    JSON values (None included). For the run manifest: a resume on other data is refused."""

    def parts():
        for row in rows:
            yield b"\x1erow"
            for part in row:
                if isinstance(part, torch.Tensor):
                    yield json.dumps(["tensor", str(part.dtype), list(part.shape)])
                    yield part  # floating point as float32, as the stored digests were made
                else:
                    yield json.dumps(["json", part], sort_keys=True, ensure_ascii=False)

    return sha256_hex(parts())


def normalised(manifest: dict) -> dict:
    """The manifest as state.json gives it back (tuples as lists, sets refused), so it compares equal."""
    return json.loads(json.dumps(manifest))


def save_epoch(directory: Path, epochs_done: int, named, optimizer, history: list[float], run: dict | None = None) -> None:
    """Weights and Adam state in epoch-named files, then state.json (replaced atomically) names the
    epoch (and holds the run's manifest): a kill at any point leaves the previous epoch's
    checkpoint intact."""
    from selfinterp_plugins.training import optimizer_state

    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    save_safetensors({n: p.detach().clone() for n, p in named}, directory / f"adapter-{epochs_done}.safetensors")
    save_safetensors(optimizer_state(optimizer, named), directory / f"optimizer-{epochs_done}.safetensors")
    state = {"epochs_done": epochs_done, "history": history}
    if run is not None:
        state["run"] = run
    write_json(state, directory / "state.json")
    for old in directory.glob("*-*.safetensors"):
        if not old.stem.endswith(f"-{epochs_done}"):
            with output_errors(old):
                old.unlink()


def resume_epochs(directory, named, optimizer, run: dict | None = None, run_options: dict[str, str] | None = None,
                  epochs: int | None = None) -> tuple[list[float], int]:
    """(loss history, epochs done) of the checkpoint in `directory`, its weights and Adam state
    loaded, or ([], 0) without one. `run`: this run's manifest, refused (RunMismatchError naming
    the setting and, from `run_options`, its CLI option) if the checkpoint's differs. `epochs`:
    the run's length, refused if the checkpoint has more done. A run may be lengthened: epoch k's
    batches and learning rate do not depend on the total (see `epoch_batches`), so it ends where
    an uninterrupted run of the new length ends; the manifests leave `epochs` out."""
    from selfinterp_plugins.storage import check_same_run
    from selfinterp_plugins.training import restore_optimizer

    if directory is None or not (Path(directory) / "state.json").exists():
        return [], 0
    directory = Path(directory)
    fix = f"delete {directory} to start over."
    state = validate(EpochState, read_json(directory / "state.json"), str(directory / "state.json"), fix, unknown="ignore")
    check_same_run(directory, state.run, run, run_options or {})  # before any weight is loaded
    done = state.epochs_done
    if epochs is not None and done > epochs:
        raise RunMismatchError(f"{directory} holds {done} epochs of training, more than the {epochs} this run asks for; "
                               f"rerun with --epochs {done} or more to resume, or to start afresh delete {directory} "
                               "or choose another --out.")
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
               desc: str = "train", reseed: int | None = None, grad_clip: float | None = None, run: dict | None = None,
               run_options: dict[str, str] | None = None, on_epoch=None) -> list[float]:
    """Optimise `loss_of(rows)` over `batches` (from `epoch_batches`), resuming after the last
    saved epoch in `checkpoint_dir` and saving after each one; returns the loss per step.
    `reseed`: seed torch with `reseed + epoch` at each epoch's start (dropout draws that a resumed
    run repeats). `grad_clip`: the global gradient norm is clipped to it before each step.
    `run` / `run_options`: the run's manifest, kept in the checkpoint, see `resume_epochs`.
    `on_epoch(epoch)`: called at each epoch's start, resumed ones included (per-pass data draws)."""
    from tqdm.auto import tqdm

    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    run = None if run is None else normalised(run)
    with contextlib.nullcontext() if checkpoint_dir is None else DirectoryLock(checkpoint_dir):
        history, first = resume_epochs(checkpoint_dir, named, optimizer, run, run_options, len(batches))
        bar = tqdm(total=sum(map(len, batches)), initial=sum(map(len, batches[:first])), disable=not progress, desc=desc)
        for epoch in range(first, len(batches)):
            if reseed is not None:
                torch.manual_seed(reseed + epoch)
            if on_epoch is not None:
                on_epoch(epoch)
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
                save_epoch(checkpoint_dir, epoch + 1, named, optimizer, history, run)
        bar.close()
    return history
