"""Train an SAE with SAE-Lens's own trainer on residual activations captured by any backend.

SAE-Lens's `SAETrainer` takes an iterator of activation batches. Its usual source, the
`ActivationsStore`, expects a HookedTransformer and a Hugging Face dataset; here the activations
come from a selfinterp backend (so SmolLM2 loaded offline works) over token windows of a local
corpus, with the first token of each window left out (BOS or an attention sink whose outlier norm
would dominate the reconstruction loss). The trained SAE is saved with `save_inference_model`
and loaded back as a plain SAE-Lens `SAE`, hook name and model name in its metadata.
"""

from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.sites import Site
from selfinterp_plugins.storage import (
    DirectoryLock,
    foreign_read_errors,
    read_json,
    save_serialised_committed,
    usual_names,
)

#: the training settings beside SAE-Lens's files, and the commit record of a saved SAE (storage)
TRAIN_FILE = "selfinterp_sae_train.json"


@dataclass
class SAETrainConfig:
    """A TopK SAE (simple to train without tuning an L1 coefficient) and its schedule."""

    d_sae: int = 4608
    k: int = 32
    total_tokens: int = 400_000
    batch_tokens: int = 1024
    lr: float = 3e-4
    windows_per_chunk: int = 128  # windows whose activations are shuffled together (~8k tokens at 64 per window)
    seed: int = 0


def site_hook_name(site: Site) -> str:
    """The TransformerLens hook name of a residual site (what SAE-Lens records)."""
    return "hook_embed" if site.kind == "embed" else f"blocks.{site.layer}.hook_{site.kind}"


def activation_batches(backend, windows: list[list[int]], site: Site, batch_tokens: int, windows_per_chunk: int = 128,
                       seed: int = 0):
    """An endless iterator of (batch_tokens, d_model) activation batches, shuffled within chunks
    of windows, windows reshuffled each pass."""
    from .latents import pad_batch

    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    pad = pad_token_id(backend.tokenizer)
    carry = None
    while True:
        order = list(range(len(windows)))
        rng.shuffle(order)
        for start in range(0, len(order), windows_per_chunk):
            chunk = [windows[i] for i in order[start : start + windows_per_chunk]]
            ids, mask = pad_batch(chunk, pad)
            with torch.no_grad():
                acts = backend.capture_all(ids, site)
            mask[:, 0] = False
            acts = acts[mask]
            acts = acts[torch.randperm(len(acts), generator=generator)]
            if carry is not None:
                acts = torch.cat([carry, acts])
            n = len(acts) // batch_tokens * batch_tokens
            for b in range(0, n, batch_tokens):
                yield acts[b : b + batch_tokens]
            carry = acts[n:]


NORM_ESTIMATE_BATCHES = 20  # batches SAE-Lens reads to estimate the activation norm before training
RECONSTRUCTION_BATCHES = 8  # batches the finished SAE's reconstruction is measured on


def reconstruction_metrics(acts: torch.Tensor, recon: torch.Tensor) -> dict:
    """MSE (mean over tokens and dimensions) and explained variance, 1 - sum |x - x_hat|^2 /
    sum |x - mean x|^2 over the tokens given (the fraction of the activations' variance around their
    mean that the SAE reproduces; 0 for an SAE that outputs the mean, negative for a worse one)."""
    acts, recon = acts.double(), recon.double()
    residual = ((acts - recon) ** 2).sum()
    total = ((acts - acts.mean(0)) ** 2).sum()
    return {"mse": float(residual / acts.numel()), "explained_variance": float(1 - residual / total),
            "tokens": int(acts.shape[0])}


@torch.no_grad()
def measure_reconstruction(sae, batches) -> dict:
    """`reconstruction_metrics` of `sae.decode(sae.encode(x))` over the activation batches given."""
    acts = torch.cat(list(batches))
    return reconstruction_metrics(acts, sae.decode(sae.encode(acts.to(sae.W_dec.dtype))).float())


def train_sae(backend, windows: list[list[int]], site, config: SAETrainConfig | None = None, out=None,
              model_name: str = "", progress: bool = True) -> object:
    """A TopK SAE trained on `windows` at `site`; saved to `out` (if given) and returned as an
    inference `sae_lens.SAE`.

    Progress is one bar per activation batch drawn (the norm estimate's, then each training
    step's): SAE-Lens's own bar moves every 100 steps, so a short run's sat at 0 until the end;
    it is silenced while ours runs. The bar's total is the batches SAE-Lens draws: it steps while
    fewer than `total_tokens` were seen, so a total that is not a whole number of batches takes one
    batch more than the quotient.

    The finished SAE's reconstruction (`reconstruction_metrics`: MSE, explained variance) is measured
    on RECONSTRUCTION_BATCHES batches of the training windows drawn in another order, and kept in
    `sae.cfg.metadata.reconstruction` (saved with its cfg.json): an SAE that does not reconstruct
    shows it before any latent is labelled."""
    import tempfile

    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm.auto import tqdm

    config = config or SAETrainConfig()
    site = Site.parse(site)
    torch.manual_seed(config.seed)
    sae_config = TopKTrainingSAEConfig(d_in=backend.d_model, d_sae=config.d_sae, k=config.k, dtype="float32", device="cpu",
                                       normalize_activations="expected_average_only_in")
    sae_config.metadata.hook_name = site_hook_name(site)
    sae_config.metadata.model_name = model_name
    sae = TopKTrainingSAE(sae_config)
    trainer_config = SAETrainerConfig(total_training_samples=config.total_tokens, train_batch_size_samples=config.batch_tokens,
                                      lr=config.lr, lr_end=config.lr, lr_warm_up_steps=0, device="cpu",
                                      n_batches_for_norm_estimate=NORM_ESTIMATE_BATCHES,
                                      dead_feature_window=200, feature_sampling_window=500)
    provider = activation_batches(backend, windows, site, config.batch_tokens, config.windows_per_chunk, config.seed)
    steps = -(-config.total_tokens // config.batch_tokens) + NORM_ESTIMATE_BATCHES
    bar = tqdm(total=steps, disable=not progress, desc="SAE training (activation batches)", unit="batch")
    with bar, _quiet_sae_lens_bar() if progress else contextlib.nullcontext():
        trained = SAETrainer(trainer_config, sae, _counted(provider, bar)).fit()
    held = activation_batches(backend, windows, site, config.batch_tokens, config.windows_per_chunk, config.seed + 1)
    trained.cfg.metadata.reconstruction = measure_reconstruction(
        trained, (next(held) for _ in range(RECONSTRUCTION_BATCHES)))
    target = Path(out) if out else Path(tempfile.mkdtemp(prefix="sae-"))
    save_trained_sae(trained, config, target)
    return load_saved_sae(target)


def save_trained_sae(trained, config: SAETrainConfig, out: str | Path) -> Path:
    """SAE-Lens's `save_inference_model` files committed with selfinterp_sae_train.json as the
    record (the directory locked while written): a kill leaves the old SAE or the new one, never
    new weights under an old cfg.json."""
    out = Path(out)
    with DirectoryLock(out):
        save_serialised_committed(out, trained.save_inference_model, asdict(config), TRAIN_FILE)
    return out


def load_saved_sae(directory: str | Path, device: str = "cpu"):
    """`SAE.load_from_disk` on the files a save committed (a directory without selfinterp_sae_train.json,
    saved by SAE-Lens itself or before the record: its own files)."""
    from sae_lens import SAE

    directory = Path(directory)
    record = read_json(directory / TRAIN_FILE) if (directory / TRAIN_FILE).is_file() else {}
    with usual_names(directory, record) as files, foreign_read_errors(directory, "SAE-Lens"):
        return SAE.load_from_disk(files, device=device)


def _counted(batches, bar):
    for batch in batches:
        bar.update(1)
        yield batch


@contextlib.contextmanager
def _quiet_sae_lens_bar():
    """SAE-Lens's trainer makes its bar from the `tqdm` its module imported; while ours counts
    batches, that name gives a disabled bar (restored on exit)."""
    from sae_lens.training import sae_trainer
    from tqdm.auto import tqdm

    original = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        sae_trainer.tqdm = original
