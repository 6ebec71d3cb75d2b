"""Training an adapter against a frozen model.

The loop of Pepper et al. 2026 (`trainer.py` of the reference; docs/fidelity.md): AdamW with no
weight decay on the log-scale, a linear warm-up from 1e-6 then a cosine schedule, gradient
clipping at 0.5, per-token loss clamped at 100, validation loss each epoch, one seed for everything.
Every adapter kind trains with the same loop. The data order is a function of (seed, epoch),
so a run that resumes from a checkpoint takes exactly the steps an uninterrupted run would.
Checkpoints are safetensors + JSON, written atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, TypedDict

import torch

from .errors import ArtifactError
from .storage._files import (
    _step,
    load_safetensors,
    output_errors,
    read_json,
    save_safetensors,
    write_json,
    write_text_atomic,
)
from .storage._locks import DirectoryLock
from .storage._manifests import check_same_run, run_manifest
from .storage._paths import member, open_for_write
from .storage.validation import LossValue, Name, NonNegativeFloat, between, check_finite_tensors, validate

# public: optimizer_state / restore_optimizer save an optimiser's state as safetensors, for the
# plugins' own training loops (PEFT's epoch checkpoints) as for the core's checkpoints
# check_same_run (storage) refuses a resume with other settings; also here, where plugins found it first
# TrainHistory: the keys of the history Explainer.train returns, for code that reads it
__all__ = ["TrainConfig", "TrainHistory", "check_same_run", "optimizer_state", "restore_optimizer"]

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the reference's except batch size (80 there) and `lr`.

    `lr=None` picks by adapter size: the reference's 1e-2 for adapters of at most d_model + 1
    parameters (scale_only, bias_only, scalar_affine), 1e-3 for matrix adapters, where 1e-2 undoes
    a ridge initialisation (SmolLM2, layer 10, 640 topics: validation recall@1 0.30 at 1e-2 vs
    0.53 at 1e-3; docs/results.md).
    """

    epochs: int = 2
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    warmup_steps: int = 10
    seed: int = 42
    loss_clamp: float = 100.0
    # "paper": the adapter's own init; "ridge": closed-form fit first (UnsupportedInitError for a kind without one)
    init: str = "paper"
    ridge: float = 1.0
    checkpoint_every: int = 25
    max_steps: int | None = None
    # sort each window of 16 shuffled batches by label length before cutting batches: padding
    # waste on the 4,436 topic titles drops from 31% to 4% of computed positions (batch 32, echo)
    bucket_by_length: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class _HistoryAlways(TypedDict):
    train_loss: list[float]
    validation_loss: list[float]
    config: dict
    seconds: float
    steps: int


class TrainHistory(_HistoryAlways, total=False):
    """What `Explainer.train` returns (and a checkpoint's `state.json` keeps as `history`).

    Always: `train_loss` (one per optimiser step, in order), `validation_loss` (one per epoch, the
    mean loss over the validation set after it; empty without one), `config` (`TrainConfig.to_dict()`
    with `lr` resolved, never None), `seconds` (wall time of the steps, a resumed run's included)
    and `steps` (optimiser steps taken in all).
    Only with `init="ridge"` and a validation set: `validation_loss_at_init`, the validation loss
    of the ridge start before any step (it is the first number of docs/results.md's "val loss at
    init → end"; with `init="paper"` there is no closed-form start to measure, so the key is absent).
    """

    validation_loss_at_init: float


#: the smallest training set measured to work: docs/results.md, "Training-set size" (SmolLM2,
#: layer 10, echo, full_rank, ridge init, validation split): 300 topics gave recall@1 0.31, 640
#: gave 0.53, 1000 gave 0.71, the shipped 4,436 gave 0.53 on test. Below it nothing was measured
#: to work, and what was tried failed without a word: 96 words trained to 'gold' for every
#: vector, 53 words through TransformerLens to 'car' for six of them (issue 27). Each of those
#: sets had one label per row, so the same number bounds the distinct labels.
MIN_TRAIN_ROWS = 300


def training_set_problem(labels: list[str]) -> str | None:
    """Why a training set with these labels is smaller than any measured to work, or None. A
    warning, not an error: a larger model or an easier mapping may need less, but below these
    sizes the failure seen was silent (every vector the same fluent label)."""
    measured = (f"docs/results.md's training-set-size rows: {MIN_TRAIN_ROWS} topics gave validation recall@1 "
                "0.31, 1000 gave 0.71; 96 words gave 'gold' for every vector")
    distinct = len({label.strip().lower() for label in labels})
    if len(labels) < MIN_TRAIN_ROWS:
        return (f"Training on {len(labels)} rows, fewer than the {MIN_TRAIN_ROWS} measured to work ({measured}); "
                "add rows, and check the labels of held-out vectors before trusting them.")
    if distinct < MIN_TRAIN_ROWS:
        return (f"The {len(labels)} training rows hold only {distinct} distinct labels, fewer than the "
                f"{MIN_TRAIN_ROWS} measured to work ({measured}); add rows with other labels, and check the "
                "labels of held-out vectors before trusting them.")
    return None


def first_token_embeddings(explainer, labels: list[str]) -> torch.Tensor:
    """Input embedding of each label's first target token: the ridge init's regression target."""
    tok = explainer.backend.tokenizer
    first = torch.tensor([explainer.template.target_ids(tok, label)[0] for label in labels])
    return explainer.backend.embed_tokens(first).float().cpu()


def default_lr(adapter) -> float:
    """1e-2 for scalar/bias adapters (the reference), 1e-3 for adapters with a matrix."""
    return 1e-2 if adapter.num_trainable() <= adapter.d_model + 1 else 1e-3


def _order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=generator).tolist()


BUCKET_WINDOW = 16


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: bool) -> list[list[int]]:
    """The batches (row indices) of one epoch, a pure function of the seed so a resumed run sees
    the same ones. With `bucket`, rows of similar length share a batch (windows of
    `BUCKET_WINDOW` batches sorted by length, then the batch order shuffled), so little padding
    is computed while every batch still comes from a random region of the data."""
    order = _order(len(lengths), seed, epoch)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * BUCKET_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1000 + epoch + 1)).tolist()
    return [batches[i] for i in shuffle]


#: the warm-up's starting factor: the reference's LinearLR(start_factor=1e-6, end_factor=1, total_iters=warmup)
WARMUP_START = 1e-6


def _lr_lambda(total: int, warmup: int):
    """The reference's schedule (`trainer.py`), as the factor applied at optimiser step k (from 0):
    a linear warm-up from 1e-6 reaching 1 at step `warmup`, then a cosine to 0 with
    T_max = total − warmup (torch's LinearLR then CosineAnnealingLR, each stepped after the
    optimiser; tests/reference checks it against them)."""
    def factor(step: int) -> float:
        if step < warmup:
            return WARMUP_START + (1 - WARMUP_START) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


#: parameters the reference never decays (`trainer.py`: the log-scale group has weight_decay 0)
NO_DECAY = ("log_scale",)


def param_groups(named, weight_decay: float) -> list[dict]:
    """AdamW groups as the reference builds them: weight decay on every parameter except the
    scale, stored as a log (decaying log s would pull s towards 1, not 0)."""
    decay = [p for n, p in named if n.rsplit(".", 1)[-1] not in NO_DECAY]
    no_decay = [p for n, p in named if n.rsplit(".", 1)[-1] in NO_DECAY]
    return [g for g in ({"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay})
            if g["params"]]


def optimizer_state(optimizer, named) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat named tensors (`{param}::{key}`), so checkpoints
    are safetensors, never pickles; used by the core's and the plugins' training loops."""
    tensors = {}
    for name, param in named:
        state = optimizer.state.get(param, {})
        for key, value in state.items():
            tensors[f"{name}::{key}"] = torch.as_tensor(value).detach().clone()
    return tensors


def restore_optimizer(optimizer, named, tensors) -> None:
    """The inverse of `optimizer_state`."""
    for name, param in named:
        state = {key.split("::", 1)[1]: value for key, value in tensors.items() if key.startswith(name + "::")}
        if state:
            optimizer.state[param] = state


@torch.no_grad()
def evaluate_loss(explainer, data, batch_size: int = 64, clamp: float = 100.0) -> float:
    """Mean loss over a dataset (rows weighted equally)."""
    total = 0.0
    for start in range(0, len(data), batch_size):
        rows = range(start, min(start + batch_size, len(data)))
        loss = explainer.loss(data.vectors[list(rows)], [data.labels[i] for i in rows], clamp)
        total += float(loss) * len(rows)
    return total / len(data)


def train(explainer, data, validation, config: TrainConfig, output_dir=None, progress: bool = True) -> TrainHistory:
    """Train `explainer.adapter` on `data` (a VectorLabelDataset). Resumes from `output_dir` if a
    checkpoint is there; writes `train_log.jsonl` there as it goes, the directory locked meanwhile
    (a second run into it fails at once). Returns the history (`TrainHistory`: its keys)."""
    if output_dir is None:
        return _train(explainer, data, validation, config, None, progress)
    with DirectoryLock(output_dir):
        return _train(explainer, data, validation, config, output_dir, progress)


def _train(explainer, data, validation, config: TrainConfig, output_dir, progress: bool) -> TrainHistory:
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    adapter = explainer.adapter
    named = [(n, p) for n, p in adapter.named_parameters() if p.requires_grad]
    base_lr = config.lr if config.lr is not None else default_lr(adapter)
    optimizer = torch.optim.AdamW(param_groups(named, config.weight_decay), lr=base_lr)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    schedule = _lr_lambda(total, config.warmup_steps)

    out = Path(output_dir) if output_dir else None
    ckpt = member(out, CHECKPOINT_DIR, what="checkpoint folder") if out else None  # never a link out of --out
    step, history = 0, {"train_loss": [], "validation_loss": [], "config": dict(config.to_dict(), lr=base_lr)}
    run = run_manifest(explainer, data, config, base_lr) if ckpt else None
    if ckpt and (ckpt / "state.json").exists():
        state = _read_state(ckpt)
        files = _checkpoint_files(ckpt, state)
        check_same_run(ckpt, state.run, run)  # before any weight is loaded into the adapter
        fix = f"delete {ckpt} to restart training."
        adapter.load_state_dict(check_finite_tensors(load_safetensors(files["adapter"]), files["adapter"], fix))
        restore_optimizer(optimizer, named, load_safetensors(files["optimizer"]))
        step, history = state.step, state.history
    elif config.init == "ridge":
        adapter.ridge_init(data.vectors, first_token_embeddings(explainer, data.labels), config.ridge)
        if validation is not None:
            history["validation_loss_at_init"] = evaluate_loss(explainer, validation, clamp=config.loss_clamp)

    if out:  # made by train's DirectoryLock
        log_path = member(out, "train_log.jsonl", what="training log")
        if log_path.exists():  # steps after the checkpoint (or all, without one) are replayed
            _truncate_log(log_path, step)
        with output_errors(log_path):
            _step("open", log_path)
            log = _open_log(log_path)
    else:
        log = None
    lengths = [len(explainer.template.target_ids(explainer.backend.tokenizer, label)) for label in data.labels] \
        if config.bucket_by_length else [0] * len(data)
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", unit="step")
    # the time of the steps before a resume comes from the checkpoint, which must carry it
    prior_seconds, started = history.get("seconds", 0.0), time.time()
    batches, batches_epoch = [], None
    try:
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            if batches_epoch != epoch:
                batches = epoch_batches(lengths, config.batch_size, config.seed, epoch, config.bucket_by_length)
                batches_epoch = epoch
            rows = batches[index]
            adapter.train()
            loss = explainer.loss(data.vectors[rows], [data.labels[i] for i in rows], config.loss_clamp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], config.grad_clip)
            lr = base_lr * schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            step += 1
            history["train_loss"].append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            end_of_epoch = step % steps_per_epoch == 0 or step == total
            if end_of_epoch and validation is not None:
                history["validation_loss"].append(evaluate_loss(explainer, validation, clamp=config.loss_clamp))
            if log:
                record = {"step": step, "loss": float(loss.detach()), "lr": lr}
                if end_of_epoch and validation is not None:
                    record["validation_loss"] = history["validation_loss"][-1]
                with output_errors(log_path):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
            if ckpt and (step % config.checkpoint_every == 0 or end_of_epoch):
                history["seconds"] = prior_seconds + time.time() - started
                _save_checkpoint(ckpt, adapter, optimizer, named, step, history, run)
    finally:
        bar.close()
        if log:
            with output_errors(log_path):
                log.close()
    history["seconds"] = prior_seconds + time.time() - started
    history["steps"] = step
    adapter.eval()
    return history


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log's records up to the checkpoint's step: the steps after it are replayed, and
    logging them twice would make the log disagree with the run."""
    from .storage._files import read_jsonl

    kept = [r for r in read_jsonl(path, tolerate_torn_tail=True) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _save_checkpoint(ckpt: Path, adapter, optimizer, named, step: int, history: dict, run: dict | None = None) -> None:
    """Weights go to files named by their step; `state.json`, replaced atomically last, commits them.
    A kill at any moment leaves a state.json naming a complete adapter + optimizer pair of one step
    (writing fixed names in place let a kill between files pair step N's adapter with step N-k's
    state; a CI run under load caught it)."""
    with output_errors(ckpt):
        ckpt.mkdir(parents=True, exist_ok=True)
    files = {"adapter": f"adapter-{step}.safetensors", "optimizer": f"optimizer-{step}.safetensors"}
    save_safetensors(dict(adapter.state_dict()), ckpt / files["adapter"])
    save_safetensors(optimizer_state(optimizer, named), ckpt / files["optimizer"])
    state = {"step": step, "history": history, "files": files}
    if run is not None:
        state["run"] = run
    write_json(state, ckpt / "state.json")
    for stale in ckpt.glob("*.safetensors"):
        if stale.name not in files.values():
            with output_errors(stale):
                _step("unlink", stale)
                stale.unlink()


#: a checkpoint's step: beyond this it is corruption (a run of a trillion steps does not exist)
MAX_STEP = 10**12


@dataclass
class CheckpointState:
    """The fields of a training checkpoint's `state.json`: the step it was taken at, the history so
    far, the weight files it commits (absent in checkpoints of earlier versions: fixed names) and
    the run manifest (absent before manifests were recorded)."""

    step: Annotated[int, between(0, MAX_STEP)]
    history: dict
    files: dict[str, Name] | None = None
    run: dict | None = None


@dataclass
class History:
    """The parts of a checkpoint's history the loop extends (other keys are kept as written)."""

    train_loss: list[LossValue]
    validation_loss: list[LossValue] = field(default_factory=list)
    seconds: NonNegativeFloat = 0.0


def _open_log(path: Path):
    """The training log, opened to append, never through a link (a text handle the loop writes)."""
    return os.fdopen(open_for_write(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a")


def _read_state(ckpt: Path) -> CheckpointState:
    path, fix = ckpt / "state.json", f"delete {ckpt} to restart training."
    state = validate(CheckpointState, read_json(path), str(path), fix, unknown="ignore")
    validate(History, state.history, str(path), fix, prefix="history", unknown="ignore")
    state.history.setdefault("validation_loss", [])
    return state


def _checkpoint_files(ckpt: Path, state: CheckpointState) -> dict[str, Path]:
    """The weight files state.json commits (plain names inside the checkpoint directory only)."""
    files = state.files or {"adapter": "adapter.safetensors", "optimizer": "optimizer.safetensors"}
    if set(files) != {"adapter", "optimizer"}:
        raise ArtifactError(f"{ckpt / 'state.json'} names bad checkpoint files; delete {ckpt} to restart training.")
    try:
        return {key: member(ckpt, name, source=ckpt / "state.json", what=f"{key} checkpoint") for key, name in files.items()}
    except ArtifactError as err:  # not a bare name inside the checkpoint: the checkpoint's fix, not a re-save
        why = str(err).split(": ", 1)[-1].split("; ", 1)[0]
        raise ArtifactError(f"{ckpt / 'state.json'} names bad checkpoint files ({why}); delete {ckpt} to restart "
                            "training.") from None
