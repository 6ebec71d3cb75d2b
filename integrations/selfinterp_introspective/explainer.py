"""An explainer fine-tuned to explain its own computations (Li et al. 2025, Transluce).

Unlike the frozen-model adapters, the explainer's weights change: a PEFT LoRA on q, k, v, o, gate,
up, down (r 128, alpha 16, dropout 0.1) or, with `finetune="full"`, every weight, as the
reference's configs choose per task (full for feature descriptions and input ablation, LoRA for
activation patching; `tasks.TASK_DEFAULTS`); AdamW at a constant rate with weight decay 0.01 (not on biases and norm weights),
gradients clipped at 1.0 (the Hugging Face Trainer's defaults the reference runs with), each row's
loss the sum of its answer tokens' cross-entropy over the padded length (the reference's
`fixed_cross_entropy_batchwise`). A vector enters as ONE soft token replacing the input
embedding between begin / end marker tokens, `{begin}{feature}{end}`, unscaled when its size is
the explainer's d_model, else through a bias-free linear projection, one per subject layer, trained
with the explainer. Prompts are chat turns, or raw strings ending in a newline with the answer
written straight after them and no end-of-turn (`prompt_format="raw"`, the reference's form for
base-model explainers); generation is greedy and stops at the reference's stop strings.
`projection="ridge"` (not Transluce's; added because the unprojected vector fails on
SmolLM2's topic vectors, docs/results.md) gives every subject layer a projection with bias, even when
sizes match, started from the ridge-regression map from the training vectors to their answers'
first-token embeddings (the start that makes the frozen-model adapters work), then trained with
the LoRA. Loss on the answer tokens only (the soft position never has a label); greedy decoding.

Three tasks feed it (`TaskExample`s): feature descriptions (a `VectorLabelDataset`, one of the
paraphrased prompts per example, drawn anew per training epoch: `optimisation`), activation patching and input ablation (rows of
`act_patch_task` / `input_ablation_task`, ours or the published ones).
"""

from __future__ import annotations

import random
from dataclasses import asdict
from fnmatch import fnmatch
from pathlib import Path

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.errors import ArtifactError, TemplateError, VectorError
from selfinterp_plugins.model_copies import weight_sharing_copy
from selfinterp_plugins.models import embedding_fingerprint
from selfinterp_plugins.peft_files import load_onto, read_adapter
from selfinterp_plugins.storage import (
    DirectoryLock,
    check_artifact_dir,
    committed_files,
    load_safetensors,
    read_json,
    record_free,
    save_safetensors,
    save_serialised_committed,
)

from .config import (
    CONFIG_FILE,
    FEATURE_PROMPTS,
    FEATURE_PROMPTS_RAW,
    PROJECTIONS_FILE,
    LoRAExplainerConfig,
    TaskExample,
    cut_at_stop,
    pick_markers,
    stop_strings,
)
from .optimisation import decay_groups, paraphrases_of_epoch

#: config fields a resumed training run may change: answer length, and epochs (a run may be
#: lengthened; one with more epochs done than asked is refused: epoch_checkpoints.resume_epochs);
#: then the LoRA's own, left out of a full fine-tune's manifest
NOT_RUN_DEFINING = ("max_new_tokens", "epochs")
LORA_ONLY = ("rank", "alpha", "dropout", "target_modules")
DERIVED = ("target_modules", "markers", "subject_d_model", "subject_layers")
#: run-manifest keys -> the `selfinterp lora-explainer train` option that sets them, for the mismatch message
RUN_OPTIONS = {"finetune": "--finetune", "rank": "--rank", "lr": "--lr", "batch_size": "--batch-size",
               "shuffle": "--shuffle/--no-shuffle", "loss_reduction": "--loss-reduction", "prompt_format": "--prompt-format",
               "chat_prompt": "--chat-prompt", "paraphrases": "--paraphrases",
               "seed": "--seed", "projection": "--projection", "model_fingerprint": "--model", "markers": "--model",
               "target_modules": "--model", "subject_d_model": "--data", "subject_layers": "--data",
               "training_rows": "--limit or --data", "training_data_sha256": "--data"}


def _load_full(directory: Path, model, committed: dict[str, Path]):
    """The fully fine-tuned weights in `directory` loaded into `model` (same architecture): only the
    safetensors files save_pretrained wrote (the committed ones: `committed`, or for an explainer
    saved before the commit record, the directory's) are read, and tied weights stay tied."""
    files = (sorted(path for name, path in committed.items() if fnmatch(name, "model*.safetensors")) if committed
             else sorted(directory.glob("model*.safetensors")))
    if not files:
        raise ArtifactError(f"No fine-tuned weights (model*.safetensors) in {directory}; save the explainer again.")
    state = {}
    for path in files:
        state.update(load_safetensors(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {name for name, _ in model.named_parameters()}
    if unexpected or set(missing) - tied:
        raise ArtifactError(f"{directory} does not hold weights of this model (missing {sorted(set(missing) - tied)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]}); load it onto the model it was fine-tuned from.")
    return model


class LoRAExplainer:
    """A PEFT LoRA explainer plus the projections of foreign-sized vectors; see the module docstring."""

    def __init__(self, peft_model, tokenizer, config: LoRAExplainerConfig, projections: torch.nn.ModuleDict):
        self.model = peft_model
        self.tokenizer = tokenizer
        self.config = config
        self.projections = projections
        ids = [tokenizer(m, add_special_tokens=False)["input_ids"] for m in config.markers]
        if any(len(i) != 1 for i in ids):
            raise TemplateError(f"Markers {config.markers} must each be one token for this tokenizer.")
        self.begin_id, self.feature_id, self.end_id = (i[0] for i in ids)
        self._closing: str | None = None

    # ---- construction and artifacts ------------------------------------------------------------

    @classmethod
    def create(cls, model, tokenizer, config: LoRAExplainerConfig | None = None) -> LoRAExplainer:
        from peft import LoraConfig, get_peft_model

        config = config or LoRAExplainerConfig()
        config.validate()
        config.markers = config.markers or pick_markers(tokenizer)
        torch.manual_seed(config.seed)
        if config.finetune == "full":  # every weight trains, embeddings included, as the reference's full fine-tunes
            for p in model.parameters():
                p.requires_grad_(True)
            return cls(model, tokenizer, config, cls._projections(config, model.config.hidden_size))
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in config.target_modules if t in present]
        if not targets:
            raise ArtifactError(f"None of {config.target_modules} is a module of this model; set target_modules.")
        config.target_modules = targets
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                          task_type="CAUSAL_LM")
        peft_model = get_peft_model(weight_sharing_copy(model), lora)  # `model` itself stays PEFT-free (model_copies)
        return cls(peft_model, tokenizer, config, cls._projections(config, model.config.hidden_size))

    @staticmethod
    def _projections(config: LoRAExplainerConfig, d_model: int) -> torch.nn.ModuleDict:
        if config.projection == "ridge":  # made by train() from the training vectors, or loaded
            return torch.nn.ModuleDict({str(layer): torch.nn.Linear(config.subject_d_model or d_model, d_model)
                                        for layer in config.subject_layers})
        if config.subject_d_model in (None, d_model):
            return torch.nn.ModuleDict()
        if not config.subject_layers:
            raise ArtifactError("Vectors of another size need projections: set subject_layers (the layers they come from).")
        return torch.nn.ModuleDict({str(layer): torch.nn.Linear(config.subject_d_model, d_model, bias=False)
                                    for layer in config.subject_layers})

    def save_pretrained(self, directory: str | Path) -> Path:
        """A PEFT adapter directory, or (full fine-tune) the model's own safetensors and config; the
        projections beside them. All committed with lora_explainer_config.json as the record, so a
        kill leaves the old explainer or the new one, never new weights with old projections."""
        directory = Path(directory)

        def serialise(folder: Path) -> None:
            self.model.save_pretrained(str(folder), safe_serialization=True)
            if len(self.projections):
                save_safetensors({k: v.detach().contiguous() for k, v in self.projections.state_dict().items()},
                                 folder / PROJECTIONS_FILE)

        with DirectoryLock(directory):  # a second writer fails at once instead of mixing two explainers' files
            save_serialised_committed(directory, serialise, asdict(self.config), CONFIG_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, model, tokenizer) -> LoRAExplainer:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise ArtifactError(f"No LoRA explainer at {directory} ({CONFIG_FILE} missing); train one with `selfinterp lora-explainer train`.")
        check_artifact_dir(directory)
        raw = read_json(directory / CONFIG_FILE)
        config = LoRAExplainerConfig.from_dict(record_free(raw), str(directory / CONFIG_FILE))
        config.markers = config.markers or pick_markers(tokenizer)  # what create() picks for this tokenizer
        committed = committed_files(directory, raw)  # the files the config commits to (storage)
        projections = cls._projections(config, model.config.hidden_size)
        if len(projections):
            projections.load_state_dict(load_safetensors(committed.get(PROJECTIONS_FILE, directory / PROJECTIONS_FILE)))
        if config.finetune == "full":
            tuned = _load_full(directory, model, committed)
            tuned.eval()
            return cls(tuned, tokenizer, config, projections)
        # the weight diffs' and DIT's checks before PEFT reads the directory; PEFT wraps a copy of `model`
        peft_model = load_onto(read_adapter(directory, raw), model)
        peft_model.eval()
        return cls(peft_model, tokenizer, config, projections)

    # ---- examples -----------------------------------------------------------------------------

    @property
    def feature_text(self) -> str:
        begin, feature, end = self.config.markers
        return f"{begin}{feature}{end}"

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """The prompt ids: a chat as the reference renders it (`chat_prompt="template"`: the
        template's own turns, Qwen3's empty think block, Llama 3.1's system header; or one
        written-out user turn, `"user_turn"`), or with `prompt_format="raw"` the text exactly as
        given (the caller writes the reference's ending), tokenised as the reference tokenises its strings."""
        if self.config.prompt_format == "raw":
            return self.tokenizer((f"{system}\n\n" if system else "") + user)["input_ids"]
        if self.config.chat_prompt == "template":
            from .chat_prompts import reference_chat_ids

            return reference_chat_ids(self.tokenizer, user, system)
        from selfinterp_plugins.chat import chat_ids

        return chat_ids(self.tokenizer, user, system)

    def _vector_prompt(self, user: str, system: str | None) -> tuple[list[int], int]:
        """The prompt ids of a text holding `{feature}` once, and the soft token's position."""
        if user.count("{feature}") != 1:
            raise TemplateError("A vector prompt needs exactly one {feature} slot.")
        ids = self.chat_prompt(user.replace("{feature}", self.feature_text), system)  # replace: the text may hold braces
        return ids, [i for i, t in enumerate(ids) if t == self.feature_id][0]

    def vector_example(self, user: str, vector, answer: str, layer: int | None, system: str | None = None,
                       paraphrases: tuple[str, ...] = (), **meta) -> TaskExample:
        """An example whose prompt holds `{feature}` once: the soft token goes there. `paraphrases`:
        every wording of the question (`user` among them), one drawn per training epoch with
        `paraphrases="per_pass"`."""
        ids, pos = self._vector_prompt(user, system)
        vector = torch.as_tensor(vector, dtype=torch.float32).flatten()
        if not torch.isfinite(vector).all():
            raise VectorError("The vector holds NaN or infinite values; fix it before explaining it.")
        drawn = tuple(self._vector_prompt(p, system) for p in paraphrases) if len(paraphrases) > 1 else ()
        return TaskExample(ids, answer, vector, pos, layer, meta, drawn)

    def feature_example(self, vector, label: str, layer: int, rng: random.Random, **meta) -> TaskExample:
        """Task 1: a feature description, with one of the paraphrased prompts at random (the
        reference's chat prompts, or its base-model ones for `prompt_format="raw"`)."""
        prompts = [p.replace("{layer}", str(layer)) for p in
                   (FEATURE_PROMPTS_RAW if self.config.prompt_format == "raw" else FEATURE_PROMPTS)]
        return self.vector_example(rng.choice(prompts), vector, label, layer, paraphrases=tuple(prompts), **meta)

    def text_example(self, user: str, answer: str, system: str | None = None, **meta) -> TaskExample:
        """An example with no soft token (input ablation; a raw prompt ends in a newline, not the reference's)."""
        return TaskExample(self.chat_prompt(user + ("\n" if self.config.prompt_format == "raw" else ""), system), answer,
                           meta=meta)

    # ---- the computation ----------------------------------------------------------------------

    def _soft(self, example: TaskExample) -> torch.Tensor:
        vector = example.vector
        d_model = self.model.config.hidden_size
        if vector.shape[-1] == d_model and self.config.projection == "auto" and not len(self.projections):
            return vector
        key = str(example.subject_layer)
        if key not in self.projections:
            raise VectorError(f"A vector of size {vector.shape[-1]} from layer {example.subject_layer} has no projection "
                              f"(this explainer projects layers {sorted(self.projections)} of size {self.config.subject_d_model}).")
        return self.projections[key](vector)

    def _embeds(self, sequences: list[list[int]], examples: list[TaskExample], left_pad: bool):
        """Padded input embeddings with each example's soft token in place, and the attention mask."""
        embed = self.model.get_input_embeddings()
        pad = pad_token_id(self.tokenizer)
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        offsets = []
        for i, seq in enumerate(sequences):
            start = width - len(seq) if left_pad else 0
            ids[i, start : start + len(seq)] = torch.tensor(seq)
            mask[i, start : start + len(seq)] = 1
            offsets.append(start)
        embeds = embed(ids.to(embed.weight.device))
        rows, cols, values = [], [], []
        for i, ex in enumerate(examples):
            if ex.vector is not None:
                rows.append(i)
                cols.append(offsets[i] + ex.feature_pos)
                values.append(self._soft(ex).to(embeds.dtype))
        if rows:
            embeds = embeds.index_put((torch.tensor(rows), torch.tensor(cols)), torch.stack(values).to(embeds.device))
        return embeds, mask, offsets

    def _answer_ids(self, answer: str) -> list[int]:
        """The answer's ids: followed by the turn's closing markup as the chat template writes it
        (`<|im_end|>\n`) in a chat, alone after a raw prompt (the reference trains no end there)."""
        if self.config.prompt_format == "raw":
            return self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if self._closing is None:
            from selfinterp_plugins.chat import turn_closing

            self._closing = turn_closing(self.tokenizer)
        return self.tokenizer(answer + self._closing, add_special_tokens=False)["input_ids"]

    def training_batch(self, examples: list[TaskExample]):
        """Prompt + answer, right-padded: input embeddings (soft tokens in place), attention mask and
        next-token targets (-100 on prompt, soft and padding positions)."""
        sequences = [ex.prompt_ids + self._answer_ids(ex.answer) for ex in examples]
        embeds, mask, _ = self._embeds(sequences, examples, left_pad=False)
        target = torch.full(mask.shape, -100, dtype=torch.long)
        for i, (ex, seq) in enumerate(zip(examples, sequences)):
            target[i, len(ex.prompt_ids) : len(seq)] = torch.tensor(seq[len(ex.prompt_ids) :])
        return embeds, mask, target

    def loss(self, examples: list[TaskExample]) -> torch.Tensor:
        """The batch's loss over the answer tokens (prompt and soft position unlabelled): by default
        the reference's, each row's summed cross-entropy divided by the padded length, averaged
        over rows; with `loss_reduction="token"`, the mean over every answer token of the batch."""
        embeds, mask, target = self.training_batch(examples)
        # the head runs only from the shortest prompt's last token on: prompt positions carry no label
        # and the vocabulary projection over them was most of a step's work
        keep = torch.arange(min(len(ex.prompt_ids) for ex in examples) - 1, mask.shape[1] - 1)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask.to(embeds.device),
                            logits_to_keep=keep.to(embeds.device)).logits
        gold = target[:, keep + 1].to(logits.device)
        per_token = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), gold, ignore_index=-100,
                                                      reduction="none")
        if self.config.loss_reduction == "token":
            return per_token.sum() / (gold != -100).sum().clamp(min=1)
        return (per_token.sum(1) / mask.shape[1]).mean()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.projections.parameters())

    def train(self, examples: list[TaskExample], progress: bool = False, checkpoint_dir=None) -> list[float]:
        """AdamW at a constant learning rate, gradients clipped, over batches in data order (or
        shuffled with `shuffle=True`); returns the loss per step. With `checkpoint_dir`, the trained
        weights, projections and AdamW state are saved after every epoch and a rerun resumes after
        the last saved one."""
        from selfinterp_plugins.epoch_checkpoints import epoch_batches, run_epochs

        cfg = self.config
        if cfg.projection == "ridge" and not len(self.projections):
            self.ridge_projections(examples)
        named = [(f"{cfg.finetune}.{n}", p) for n, p in self.model.named_parameters() if p.requires_grad]
        named += [(f"projection.{n}", p) for n, p in self.projections.named_parameters()]
        modules = [*self.model.modules(), *self.projections.modules()]
        optimizer = torch.optim.AdamW(decay_groups(named, modules, cfg.weight_decay), lr=cfg.lr)
        run = self.run_manifest(examples) if checkpoint_dir is not None else None
        drawn = list(examples)

        def draw(epoch: int) -> None:  # seeded by epoch, so a resumed run draws what an uninterrupted one would
            if cfg.paraphrases == "per_pass":
                drawn[:] = paraphrases_of_epoch(examples, cfg.seed, epoch)

        self.model.train()
        history = run_epochs(epoch_batches(len(examples), cfg.epochs, cfg.batch_size, cfg.seed, shuffle=cfg.shuffle),
                             lambda rows: self.loss([drawn[i] for i in rows]), named, optimizer, checkpoint_dir,
                             progress, f"{cfg.finetune} explainer", reseed=cfg.seed, grad_clip=cfg.grad_clip,
                             run=run, run_options=RUN_OPTIONS, on_epoch=draw)
        self.model.eval()
        return history

    def run_manifest(self, examples: list[TaskExample]) -> dict:
        """What defines a training run, kept in its checkpoint so a resume with other settings is
        refused: the config's training fields (the LoRA's only for a LoRA), the model's
        fingerprint (taken before training: a full fine-tune changes the embeddings), and the
        examples (count and SHA-256 of prompt ids, answers, vectors and their positions)."""
        from selfinterp_plugins.epoch_checkpoints import rows_sha256

        skip = NOT_RUN_DEFINING + (LORA_ONLY if self.config.finetune == "full" else ())
        settings = {k: v for k, v in asdict(self.config).items() if k not in skip}
        # what the options set first, what follows from the model and data after: the first
        # difference names the option changed (--projection ridge also fills subject_layers)
        settings = {**{k: v for k, v in settings.items() if k not in DERIVED},
                    **{k: v for k, v in settings.items() if k in DERIVED}}
        # the paraphrases shape training only when each pass draws one; left out otherwise, so a
        # checkpoint from before they were kept still resumes with --paraphrases per_example
        drawn = self.config.paraphrases == "per_pass"
        rows = ([ex.prompt_ids, ex.answer, ex.vector, ex.feature_pos, ex.subject_layer, *([ex.paraphrases] if drawn else [])]
                for ex in examples)
        return {**settings, "model_fingerprint": embedding_fingerprint(self.model), "training_rows": len(examples),
                "training_data_sha256": rows_sha256(rows)}

    @torch.no_grad()
    def ridge_projections(self, examples: list[TaskExample]) -> None:
        """One projection (with bias) per subject layer of `examples`, each the ridge-regression map
        from that layer's vectors to the input embeddings of their answers' first tokens: the soft
        token starts as the word it should name, and the LoRA trains on from there."""
        embed = self.model.get_input_embeddings().weight
        by_layer: dict = {}
        for ex in examples:
            if ex.vector is not None:
                by_layer.setdefault(ex.subject_layer, []).append(ex)
        if any(not isinstance(layer, int) for layer in by_layer):
            raise VectorError("projection='ridge' needs each vector's subject layer (an integer) to pick its projection.")
        if not by_layer:
            raise VectorError("projection='ridge' needs training examples with vectors to fit the projections on.")
        d_in = {ex.vector.shape[-1] for group in by_layer.values() for ex in group}
        if len(d_in) != 1:
            raise VectorError(f"Training vectors have several sizes {sorted(d_in)}; one explainer reads one subject model.")
        d_in = d_in.pop()
        from selfinterp_plugins.adapters import ridge_fit

        for layer, group in sorted(by_layer.items()):
            w, b = ridge_fit(torch.stack([ex.vector for ex in group]),
                             embed[[self._answer_ids(ex.answer)[0] for ex in group]], self.config.ridge)
            linear = torch.nn.Linear(d_in, embed.shape[1]).to(embed.device)
            linear.weight.copy_(w.T.to(linear.weight.dtype))
            linear.bias.copy_(b.to(linear.bias.dtype))
            self.projections[str(layer)] = linear
        self.config.subject_layers = sorted(int(k) for k in self.projections)
        self.config.subject_d_model = d_in

    @torch.no_grad()
    def generate(self, examples: list[TaskExample], batch_size: int = 16, max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, batched (left-padded prompts, the soft token at its place), ending at the
        end of turn, the end of sequence or (not for a Qwen3 explainer) one of the reference's stop strings."""
        self.model.eval()
        tok = self.tokenizer
        pad = pad_token_id(tok)
        from selfinterp_plugins.chat import end_of_answer_ids

        stop = end_of_answer_ids(tok)
        stops = stop_strings(self.model)
        answers = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            embeds, mask, _ = self._embeds([ex.prompt_ids for ex in chunk], chunk, left_pad=True)
            out = self.model.generate(inputs_embeds=embeds, attention_mask=mask.to(embeds.device), do_sample=False,
                                      max_new_tokens=max_new_tokens or self.config.max_new_tokens, pad_token_id=pad,
                                      eos_token_id=(stop + [tok.eos_token_id]) if tok.eos_token_id is not None else stop or None,
                                      stop_strings=list(stops) or None, tokenizer=tok)
            for row in out.tolist():
                ends = [row.index(t) for t in stop if t in row]
                if ends:
                    row = row[: min(ends)]
                answers.append(cut_at_stop(tok.decode(row, skip_special_tokens=True), stops).strip())
        return answers
