"""Epoch checkpoints of a training loop over named parameters (DIT, the LoRA explainer).

After each epoch the trainable weights and Adam's state go to epoch-named safetensors files, then
`state.json` (written last, atomically) names the epoch and holds the loss history; a kill at any
moment leaves the previous epoch's checkpoint intact, and a rerun resumes after it, ending exactly
where an uninterrupted run ends (the caller replays its seeded batch order).
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.serialization import load_safetensors, read_json, save_safetensors, write_json


def save_epoch(directory: Path, epochs_done: int, named, optimizer, history: list[float]) -> None:
    """Weights and Adam state in epoch-named files, then state.json (replaced atomically) names the
    epoch: a kill at any point leaves the previous epoch's checkpoint intact."""
    from selfinterp_plugins.training import _optimizer_state

    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors({n: p.detach().clone() for n, p in named}, directory / f"adapter-{epochs_done}.safetensors")
    save_safetensors(_optimizer_state(optimizer, named), directory / f"optimizer-{epochs_done}.safetensors")
    write_json({"epochs_done": epochs_done, "history": history}, directory / "state.json")
    for old in directory.glob("*-*.safetensors"):
        if not old.stem.endswith(f"-{epochs_done}"):
            old.unlink()


def resume_epochs(directory, named, optimizer) -> tuple[list[float], int]:
    from selfinterp_plugins.training import _restore_optimizer

    if directory is None or not (Path(directory) / "state.json").exists():
        return [], 0
    directory = Path(directory)
    state = read_json(directory / "state.json")
    done = state.get("epochs_done")
    if not isinstance(done, int) or done < 0:
        raise ArtifactError(f"{directory / 'state.json'} has no valid 'epochs_done'; delete {directory} to start over.")
    weights = load_safetensors(directory / f"adapter-{done}.safetensors")
    with torch.no_grad():
        for name, param in named:
            if name not in weights:
                raise ArtifactError(f"Checkpoint {directory} lacks {name}; it is from another configuration. Delete it to start over.")
            param.copy_(weights[name])
    _restore_optimizer(optimizer, named, load_safetensors(directory / f"optimizer-{done}.safetensors"))
    return list(state.get("history", [])), done
