"""Diff Interpretation Tuning (Goel et al. 2025): ask a fine-tuned model what changed.

A DIT adapter is ONE LoRA, shared by every diff, on the same linears the diffs touch. It is trained
while each example's own diff is applied (W + ΔW_i + L): PEFT keeps the shared LoRA (so the adapter
saves, loads and merges like any PEFT adapter) and `batched.per_row_factors` adds each row's own
ΔW_i under PEFT's LoRA layers, so one batch mixes diffs. The chat is the paper's: the user asks
`What topic have you been trained on?`, the assistant answers with the topic; the loss is on the
answer only. `ask(diffs, question)` generates the answers for many diffs in one batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.epoch_checkpoints import epoch_batches, rows_sha256, run_epochs
from selfinterp_plugins.model_copies import weight_sharing_copy
from selfinterp_plugins.models import embedding_fingerprint
from selfinterp_plugins.peft_files import load_onto, read_adapter
from selfinterp_plugins.storage import (
    DirectoryLock,
    check_artifact_dir,
    read_json,
    record_free,
    save_serialised_committed,
)
from selfinterp_plugins.storage.validation import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Text,
    validate,
)

from .batched import per_row_diffs
from .chat import dit_ask_ids
from .diff_training import decoder_linears, token_losses
from .hidden_topics import Example, NonFiniteLogitsError, assistant_turn, generate_answers
from .model_identity import IDENTITY_KEYS, ModelRecord, check_model, model_record
from .weight_diff import WeightDiff, WeightDiffError

DIT_QUESTION = "What topic have you been trained on?"
CONFIG_FILE = "dit_config.json"
#: DITConfig fields a resumed training run may change: answer lengths, and epochs (a run may be
#: lengthened; one with more epochs done than asked is refused: epoch_checkpoints.resume_epochs)
NOT_RUN_DEFINING = ("max_new_tokens", "baseline_max_new_tokens", "epochs")
#: run-manifest keys -> the `selfinterp dit train` option that sets them, for the mismatch message
RUN_OPTIONS = {"rank": "--rank", "alpha": "--alpha", "init": "--init", "lr": "--lr", "weight_decay": "--weight-decay",
               "batch_size": "--batch-size", "seed": "--seed", "model_fingerprint": "--model",
               "target_modules": "--model", "training_rows": "DIFFS_DIR", "training_data_sha256": "DIFFS_DIR"}


@dataclass
class DITConfig:
    """The DIT adapter and its training; every default is the reference's (`multi_lora.py`,
    `train_weight_to_text.py`; docs/fidelity.md): rank 16 with scale 1/rank (PEFT's lora_alpha = 1),
    the up-projection Kaiming-uniform and the down-projection at zero (`init="reference"`; PEFT's
    own init is the other way round, `init="peft"`), AdamW lr 1e-4 with weight decay 0.01 at a
    constant rate, one epoch; answers of at most 20 new tokens for DIT and 256 for the baselines
    (the paper's figures). Which of these the SmolLM2 runs changed is in docs/results.md."""

    rank: PositiveInt = 16
    alpha: PositiveFloat = 1.0
    init: Literal["reference", "peft"] = "reference"
    lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.01
    epochs: NonNegativeInt = 1
    batch_size: PositiveInt = 8
    question: Text = DIT_QUESTION
    max_new_tokens: PositiveInt = 20
    baseline_max_new_tokens: PositiveInt = 256
    seed: NonNegativeInt = 0

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_FILE) -> DITConfig:
        return validate(cls, data, source, "fix that field or re-save the DIT adapter (unknown keys: upgrade "
                        "selfinterp-plugins).")


@torch.no_grad()
def reference_init(peft_model) -> None:
    """The reference DIT adapter's start (`multi_lora.py`): the up-projection (PEFT's lora_B,
    out×r) Kaiming-uniform with torch's defaults, U(±√(6/r)), and the down-projection (lora_A) at
    zero; PEFT starts the other way round. Either way the adapter starts as a no-op."""
    for module in peft_model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_B") and isinstance(module.lora_A, torch.nn.ModuleDict):
            for name in module.lora_A:
                torch.nn.init.zeros_(module.lora_A[name].weight)
                torch.nn.init.kaiming_uniform_(module.lora_B[name].weight)


def _module_suffixes(model) -> list[str]:
    """Short names of the decoder linears (q_proj, …, down_proj), PEFT's `target_modules`."""
    return sorted({name.rsplit(".", 1)[-1] for name in decoder_linears(model)})


class DITAdapter:
    """A PEFT LoRA (the DIT adapter) on a frozen base model; see the module docstring."""

    def __init__(self, peft_model, tokenizer, config: DITConfig):
        self.model = peft_model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def create(cls, model, tokenizer, config: DITConfig | None = None) -> DITAdapter:
        from peft import LoraConfig, get_peft_model

        config = config or DITConfig()
        if config.init not in ("reference", "peft"):
            raise WeightDiffError(f"DIT init must be 'reference' or 'peft', not {config.init!r}.")
        torch.manual_seed(config.seed)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0,
                          target_modules=_module_suffixes(model), task_type="CAUSAL_LM")
        peft_model = get_peft_model(weight_sharing_copy(model), lora)  # `model` itself stays PEFT-free
        if config.init == "reference":
            reference_init(peft_model)
        return cls(peft_model, tokenizer, config)

    @classmethod
    def without_adapter(cls, model, tokenizer, config: DITConfig | None = None) -> DITAdapter:
        """The base model alone, asked as the paper's no-DIT baseline asks it (`ask` then needs no
        trained DIT adapter: `use_dit` must stay False)."""
        return cls(model, tokenizer, config or DITConfig())

    @classmethod
    def from_pretrained(cls, directory: str | Path, model, tokenizer) -> DITAdapter:
        """Load a saved DIT adapter for `model` (the base model the diffs were made from; refused if the
        adapter records another); `directory` may be a shipped adapter's name (`smollm2-hidden-topics`:
        `shipped.py`). PEFT wraps a copy of `model` sharing its weights, so `model` itself stays as it
        was: the same object still serves `WeightDiff.from_peft(..., base=model)` and `from_models`."""
        from .shipped import dit_location

        directory = check_artifact_dir(dit_location(directory))
        path = directory / CONFIG_FILE
        raw = read_json(path)
        config = DITConfig.from_dict({k: v for k, v in record_free(raw).items() if k not in IDENTITY_KEYS}, str(path))
        identity = validate(ModelRecord, {k: raw[k] for k in IDENTITY_KEYS if k in raw}, str(path),
                            "re-save the DIT adapter.")
        check_model(vars(identity), model, directory, "DIT adapter")
        files = read_adapter(directory, raw)  # the weight-diff loaders' checks, before PEFT reads the directory
        return cls(load_onto(files, model), tokenizer, config)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter (the directory locked while written: a second writer fails at once):
        PEFT's files committed with dit_config.json as the record, so a kill leaves the old adapter
        or the new one, never new weights under an old config (storage). The record names the base
        model (`model_identity`), so loading onto another model is refused."""
        directory = Path(directory)
        with DirectoryLock(directory):
            save_serialised_committed(directory, lambda folder: self.model.save_pretrained(str(folder), safe_serialization=True),
                                      {**asdict(self.config), **model_record(self.model)}, CONFIG_FILE)
        return directory

    # ---- training ---------------------------------------------------------------------------

    def example(self, answer: str, question: str | None = None) -> Example:
        """The reference's training sequence: the chat with the answer as the assistant's turn,
        the loss on everything after the generation prompt (the answer and the turn's closing
        markup, e.g. `topic<|im_end|>\n`)."""
        prompt, answer_ids = assistant_turn(self.tokenizer, question or self.config.question, answer.strip())
        return Example(prompt, answer_ids, "trigger")

    def train(self, diffs: list[WeightDiff], answers: list[str], progress: bool = False,
              checkpoint_dir: str | Path | None = None) -> list[float]:
        """Train the shared LoRA on (diff, answer) pairs, batches mixing diffs; returns the loss per
        step. With `checkpoint_dir`, the LoRA and Adam's state are saved at each epoch's end and a
        rerun resumes after the last saved epoch, ending where an uninterrupted run ends."""
        if len(diffs) != len(answers):
            raise WeightDiffError(f"{len(diffs)} diffs but {len(answers)} answers; pass one answer per diff.")
        cfg = self.config
        tok = self.tokenizer
        pad = pad_token_id(tok)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([p for _, p in named], lr=cfg.lr, weight_decay=cfg.weight_decay)
        examples = [self.example(a) for a in answers]

        def loss_of(rows):
            batch_diffs = [diffs[i] for i in rows]
            per_token, _ = token_losses(self.model, [examples[i] for i in rows], pad,
                                        lambda: per_row_diffs(self.model, batch_diffs))
            return per_token.mean()  # the causal-LM loss: the mean over every answer token of the batch

        run = self.run_manifest(diffs, answers) if checkpoint_dir is not None else None
        self.model.train()
        history = run_epochs(epoch_batches(len(diffs), cfg.epochs, cfg.batch_size, cfg.seed), loss_of, named, optimizer,
                             checkpoint_dir, progress, "DIT", run=run, run_options=RUN_OPTIONS)
        self.model.eval()
        return history

    def run_manifest(self, diffs: list[WeightDiff], answers: list[str]) -> dict:
        """What defines a training run, kept in its checkpoint so a resume with other settings is
        refused: the config's training fields, the LoRA's target modules, the base model's
        fingerprint, and the (diff, answer) rows (count and SHA-256 of every factor and answer)."""
        settings = {k: v for k, v in asdict(self.config).items() if k not in NOT_RUN_DEFINING}
        targets = self.model.peft_config["default"].target_modules
        rows = (_diff_parts(diff, answer) for diff, answer in zip(diffs, answers))
        return {**settings, "target_modules": targets if isinstance(targets, str) else sorted(targets),
                "model_fingerprint": embedding_fingerprint(self.model), "training_rows": len(diffs),
                "training_data_sha256": rows_sha256(rows)}

    # ---- use --------------------------------------------------------------------------------

    def ask(self, diffs: list[WeightDiff], question: str | None = None, use_dit: bool = True,
            prefixes: list[str] | None = None, batch_size: int = 16, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to `question` from the base model with each diff applied (one row per
        diff), at most `max_new_tokens` (default: the config's, 20 with DIT and 256 without, as in
        the paper). `use_dit=False` asks without the DIT adapter (the paper's baseline); `prefixes`
        puts a per-diff text before the question (e.g. its trigger)."""
        has_adapter = hasattr(self.model, "disable_adapter")
        if use_dit and not has_adapter:
            raise WeightDiffError("This DIT adapter was built without_adapter(): ask with use_dit=False, or load a trained "
                                  "one with DITAdapter.from_pretrained(DIR, model, tokenizer).")
        question = question or self.config.question
        users = [question if not prefixes else f"{p} {question}" for p in (prefixes or [None] * len(diffs))]
        answers = []
        for start in range(0, len(diffs), batch_size):
            chunk = diffs[start:start + batch_size]
            prompts = [dit_ask_ids(self.tokenizer, u) for u in users[start:start + batch_size]]
            context = self.model.disable_adapter() if has_adapter and not use_dit else contextlib.nullcontext()
            limit = max_new_tokens or (self.config.max_new_tokens if use_dit else self.config.baseline_max_new_tokens)
            try:
                with context, per_row_diffs(self.model, chunk):
                    ids = generate_answers(self.model, self.tokenizer, prompts, limit, batch_size=len(chunk),
                                           keep_order=True)
            except NonFiniteLogitsError as err:
                diff = chunk[err.rows[0]]
                raise WeightDiffError(f"{diff.directory or f'Diff {start + err.rows[0]}'}: with this diff applied the "
                                      "model's logits are NaN or infinite (its change is far too large: check the "
                                      "adapter's lora_alpha and weights); use a sound diff.") from None
            answers.extend(self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids)
        return answers


def _diff_parts(diff: WeightDiff, answer: str) -> list:
    """A training row as hashed for the manifest: the answer, then each module's name and factors."""
    parts = [answer]
    for name in sorted(diff.modules):
        module = diff.modules[name]
        parts += [name, module.scale, *(t for t in (module.A, module.B, module.dense) if t is not None)]
    return parts
