"""A run's manifest: what makes a run's output what it is, recorded beside that output, and the
one-line refusal to resume a different run into it.

Two kinds of output are resumed. Training checkpoints (the core's `state.json`, and the plugins'
epoch checkpoints) hold the run's manifest; `check_same_run` compares it. An explain output holds
its run (the explainer's digest, the model and its dtype, what was read: a digest of the vectors
and ids, the scales and samples, and the sampling) in `<output>.run.json`; `check_output_run`
compares it. Both find the difference with `first_difference`, so "the same run" means one thing;
their messages differ only in what to rerun with or delete.

What a manifest cannot hold as JSON (weights, vectors) it holds as a digest built with
`sha256_hex`. Each digest's byte layout is the one of the values already stored in users'
checkpoints and outputs: changing it would refuse their resumes, so the layouts stay as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import RunMismatchError
from ._files import read_json, write_json

# public: the plugins' epoch checkpoints hash their rows with sha256_hex and refuse another run's
# checkpoint with check_same_run; their resumable outputs (make-data splits, scoring files) record
# their run with check_output_run, the frozen weights' dtype as model_dtype gives it
__all__ = ["check_output_run", "check_same_run", "model_dtype", "sha256_hex"]

#: manifest keys added after manifests were first stored: a saved manifest without one was written
#: before it was recorded, so it is compared without it (and, for an output, recorded from then on)
LATER_KEYS = ("model_dtype", "model_fingerprint", "inputs")

#: TrainConfig fields a resume may change: how often the run is saved, and `max_steps`, where it
#: stops (stopping within the warm-up and resuming with the full config is a supported way to
#: split a run; tests/test_training.py checks it replays the uninterrupted run)
NOT_RUN_DEFINING = ("checkpoint_every", "max_steps")

#: run-manifest keys -> the `selfinterp train` option that sets them, for the mismatch message
RUN_OPTIONS = {"adapter": "--adapter", "adapter.kind": "--adapter", "model_fingerprint": "--model", "model_dtype": "--dtype",
               "template": "--template", "site": "--site", "training_rows": "--limit or the dataset",
               "training_data_sha256": "the dataset", "epochs": "--epochs", "batch_size": "--batch-size",
               "lr": "--lr", "seed": "--seed", "init": "--init", "bucket_by_length": "--bucket/--no-bucket"}

#: the explain options behind each sampling field, for the one-line refusal
SAMPLING_FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "max_new_tokens": "--max-new-tokens",
                  "samples": "--samples"}


def sha256_hex(parts: Iterable) -> str:
    """SHA-256 (hex) of `parts` fed in order: bytes as they are, a str as UTF-8, a tensor as its
    values' bytes (on the CPU, contiguous; floating point as float32, other dtypes as they are).
    The caller lays out what is hashed (shapes, names, separators): that layout is the digest."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            tensor = part.detach().cpu()
            tensor = tensor.float() if tensor.is_floating_point() else tensor
            part = tensor.contiguous().numpy().tobytes()
        elif isinstance(part, str):
            part = part.encode()
        digest.update(part)
    return digest.hexdigest()


def first_difference(old, new, key: str = ""):
    """(key, old, new) of the first setting that differs, descending into dicts; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*new, *(k for k in old if k not in new)]
        # a kind or a name says more than the first field that differs (a template's whole prompt)
        for sub in sorted(keys, key=lambda k: k not in ("kind", "name")):
            found = first_difference(old.get(sub), new.get(sub), f"{key}.{sub}" if key else sub)
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def _without_later_keys(saved, current):
    """`current` less the LATER_KEYS that `saved` (a manifest written before them) lacks."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return current
    return {k: v for k, v in current.items() if k in saved or k not in LATER_KEYS}


def model_dtype(backend) -> str:
    """The frozen weights' dtype as a word (`float32`, `bfloat16`): what `--dtype` loaded."""
    return str(backend.dtype).removeprefix("torch.")


# ---- training runs ------------------------------------------------------------------------

def data_sha256(data) -> str:
    """SHA-256 of the training rows: their vectors (float32 bytes, shape included) and labels."""
    vectors = data.vectors.detach().to("cpu", torch.float32)
    return sha256_hex([json.dumps(list(vectors.shape)), vectors, json.dumps(list(data.labels), ensure_ascii=False)])


def run_manifest(explainer, data, config, base_lr: float) -> dict:
    """What defines a training run, recorded in its checkpoint so a resume with other settings is
    refused: the adapter's config (kind included), the model's embedding fingerprint and the dtype
    its frozen weights compute in (bfloat16 weights give another adapter than float32 ones; the
    fingerprint rounds to bfloat16, so it cannot tell them apart), template, site, the training
    rows (count and hash) and every TrainConfig field that changes the result, with `lr` as
    resolved. Not the device nor the backend: the same weights in the same dtype give the same
    steps up to float rounding, and moving a run to another machine is why it resumes.
    JSON-normalised, so it compares equal to what state.json gives back."""
    settings = {key: value for key, value in config.to_dict().items() if key not in NOT_RUN_DEFINING}
    manifest = {"adapter": explainer.adapter.config.to_dict(), "model_fingerprint": explainer.backend.fingerprint(),
                "model_dtype": model_dtype(explainer.backend), "template": explainer.template.to_dict(),
                "site": explainer.site.to_dict(), "training_rows": len(data), "training_data_sha256": data_sha256(data),
                **settings, "lr": base_lr}
    return json.loads(json.dumps(manifest))


def check_same_run(ckpt: Path, saved, current, options: dict[str, str] | None = None) -> None:
    """Refuse to resume a checkpoint written with other settings (one line: which, old vs new, and
    how to start afresh). `saved` / `current`: the run manifests (JSON objects) of the checkpoint
    and of the run resuming it; `options`: manifest key (or its first part) -> the CLI option that
    sets it, named in the message (default: `selfinterp train`'s). A checkpoint from before
    manifests were recorded (`saved` None) resumes."""
    if saved is None or current is None:
        return
    found = first_difference(saved, _without_later_keys(saved, current))
    if found:
        key, old, new = found
        options = RUN_OPTIONS if options is None else options
        option = options.get(key) or options.get(key.split(".")[0])
        setting = f"{key} ({option})" if option else key
        raise RunMismatchError(
            f"{ckpt} is the checkpoint of a run with other settings: {setting} was {json.dumps(old)}, "
            f"this run has {json.dumps(new)}; to start afresh delete {ckpt} or choose another --out "
            f"(or rerun with the old settings to resume).")


# ---- explain runs -------------------------------------------------------------------------

def explainer_digest(explainer) -> str:
    """SHA-256 of what decides an explainer's labels here: its adapter (kind and weights), template,
    site and prompt ids, and the change it makes to the model while it runs (an Activation Oracle's
    LoRA: two oracles share a prompt and a parameterless adapter, and differ only there)."""
    identity = {"kind": explainer.adapter.config.kind, "template": explainer.template.to_dict(),
                "site": explainer.site.to_dict(), "prompt_ids": explainer.prompt_ids.tolist()}
    patch = getattr(explainer, "model_patch", None)

    def parts():
        yield json.dumps(identity, sort_keys=True)
        for name, tensor in sorted(explainer.adapter.state_dict().items()):
            yield name
            yield tensor.detach().float()  # every dtype as float32, as the stored digests were made
        for name, (a, b, scale) in sorted((patch.modules if patch is not None else {}).items()):
            yield f"patch {name} {float(scale)!r}"
            yield a.detach().float()
            yield b.detach().float()

    return sha256_hex(parts())


def inputs_sha256(vectors, ids) -> str:
    """SHA-256 of what an explain run reads: the vectors (float32 bytes, shape included) and their ids."""
    vectors = torch.as_tensor(vectors).detach().to("cpu", torch.float32)
    return sha256_hex([json.dumps(list(vectors.shape)), json.dumps([str(i) for i in ids], ensure_ascii=False), vectors])


def explain_run(explainer, sampling, vectors, ids, scales, samples: int) -> dict:
    """What makes an explain output's labels what they are: the explainer's digest, the model (its
    embedding fingerprint) and its dtype, what was read (the vectors and ids as one digest, their
    count, the scales and samples) and the sampling."""
    from dataclasses import asdict

    inputs = {"vectors": len(ids), "vectors_sha256": inputs_sha256(vectors, ids),
              "scales": [float(s) for s in scales], "samples": int(samples)}
    return json.loads(json.dumps({"explainer": explainer_digest(explainer),
                                  "model_fingerprint": explainer.backend.fingerprint(),
                                  "model_dtype": model_dtype(explainer.backend), "inputs": inputs,
                                  "sampling": asdict(sampling)}))


def _output_mismatch(path: Path, key: str, old, new, flags: dict[str, str]) -> str:
    """The one line refusing to resume `path`: what differs, and the fix."""
    start_over = f"choose another output (or delete {path} and {path.name}.run.json)"
    if key == "explainer":
        return (f"{path} holds labels of another explainer (its weights, template or site differ); "
                f"resume it with that explainer, or {start_over}.")
    if key.endswith("model_fingerprint"):
        option = flags.get(key, "--model")
        return (f"{path} holds results made with another model{' at ' + key if '.' in key else ''} (embedding "
                f"fingerprint {old}, this one's {new}); resume it with that model ({option}), or {start_over}.")
    if key == "model_dtype":
        return (f"{path} was written with the frozen weights in {old}, this run holds them in {new}; rerun "
                f"with --dtype {old} (or load the model in {old}), or {start_over}.")
    if key == "inputs.vectors":
        return (f"{path} holds labels of {old} vectors, this run gives {new}; resume it with the vectors it was "
                f"written from, or {start_over}.")
    if key == "inputs.vectors_sha256":
        return (f"{path} holds labels of other vectors or ids (their SHA-256 differs: another dataset, split or "
                f"selection); resume it with the vectors it was written from, or {start_over}.")
    if key == "inputs.scales":
        old_flags = " ".join(f"--scale {s:g}" for s in old) if isinstance(old, list) else old
        return (f"{path} was written with scales {old}, this run asks {new}; rerun with {old_flags}, or {start_over}.")
    if key.endswith("_sha256"):
        what = key.removesuffix("_sha256").rsplit(".", 1)[-1]
        return (f"{path} was written from another {what} (its SHA-256 differs); resume it with the {what} it was "
                f"written from, or {start_over}.")
    name = key.rsplit(".", 1)[-1]
    setting = f"sampling {name}" if key.startswith("sampling.") else key
    flag = f" ({flags[name]} {old})" if name in flags else ""
    return f"{path} was written with {setting}={old!r}, this run asks {new!r}; rerun with {name}={old!r}{flag}, or {start_over}."


def check_output_run(path: Path, run: dict, has_records: bool = True, flags: dict[str, str] | None = None) -> None:
    """Refuse to resume `path` when its recorded run differs from `run` (one line: what differs and
    the fix; `flags`: a setting's name -> its CLI option, default explain's); record `run` when
    there is none yet (an output written before manifests resumes as before), when the output
    holds no record (a deleted output's leftover manifest describes nothing), or when the saved one
    predates some of its keys (LATER_KEYS) and agrees on the rest."""
    manifest = path.with_name(path.name + ".run.json")
    if not (manifest.exists() and has_records):
        write_json(run, manifest)
        return
    saved = read_json(manifest)
    current = _without_later_keys(saved, run)
    found = first_difference(saved, current)
    if found is not None:
        raise RunMismatchError(_output_mismatch(path, *found, SAMPLING_FLAGS if flags is None else flags))
    if current != run:
        write_json(run, manifest)
