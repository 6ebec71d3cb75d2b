"""Explainer = prompt template + adapter + site + backend.

The object a researcher holds: `Explainer.create(model, adapter="full_rank", template="echo")`,
`.train(dataset)`, `.explain(vectors)`, `.save_pretrained(dir)` and
`Explainer.from_pretrained(dir, model=...)`, where `model` is any model object an installed
backend recognises (a transformers model here; nnsight and TransformerLens through plugins).

The artifact is a directory with `explainer_config.json` and `adapter.safetensors`; the config
records the model's embedding fingerprint, so loading onto another model is refused.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ._version import __version__
from .adapters import Adapter, AdapterConfig, check_vectors, make_adapter
from .backends.base import AdapterInput, Backend, Sampling
from .backends.inputs import IGNORE, pad_token_id
from .datasets import VectorLabelDataset
from .errors import ArtifactError, ModelMismatchError, OptionError, UnknownNameError, VectorError
from .results import ExplainResults
from .sites import Site
from .storage._commits import save_weights_and_config, weights_file
from .storage._files import check_artifact_dir, load_safetensors, read_json
from .storage._locks import DirectoryLock
from .storage.validation import NonNegativeInt, PositiveInt, check_finite_tensors, validate
from .templates import PromptTemplate
from .vector_spec import MEAN_KEY, VectorSpec, mean_problem, prompt_text

CONFIG_FILE = "explainer_config.json"
WEIGHTS_FILE = "adapter.safetensors"


class Explainer:
    """A frozen model that reads vectors aloud through a trained adapter."""

    def __init__(self, backend: Backend, adapter: Adapter, template: PromptTemplate, site: Site, model_id: str | None = None,
                 metadata: dict | None = None, vector_spec: VectorSpec | None = None):
        if adapter.d_model != backend.d_model:
            raise VectorError(
                f"Adapter width {adapter.d_model} differs from the model's d_model {backend.d_model}; "
                "create the adapter for this model."
            )
        self.backend = backend
        self.adapter = adapter.to(backend.device)
        self.template = template
        self.site = site
        self.model_id = model_id
        #: free-form facts saved with the explainer (vector source, layer, benchmark numbers)
        self.metadata = dict(metadata or {})
        #: what vectors it reads (site, prompt form, centring); None if trained on vectors of unknown origin
        self.vector_spec = vector_spec
        tok = backend.tokenizer
        self.prompt_ids = template.prompt_ids(tok)
        self.inject_mask = template.injection_mask(self.prompt_ids, tok)
        self.prefix_len = int(self.inject_mask.nonzero()[0])
        self._is_finished = LabelEnd(tok, template)
        #: a change to the frozen model's linear layers while this explainer runs (an Activation
        #: Oracle's LoRA, set by the PEFT plugin): `backends.LowRankPatch`, None for the model as it is
        self.model_patch = None
        #: how `explain` decodes when no sampling is given (a method's published settings); None: Sampling()
        self.default_sampling: Sampling | None = None

    @property
    def slots(self) -> int:
        """Vectors per prompt: 1 (one soft token at every placeholder), or K for a template of K slots."""
        return self.template.slots or 1

    def vector_rows(self, vectors) -> torch.Tensor:
        """`vectors` as rows of this explainer's prompts: (N, d_model), or (N, K, d_model) for a prompt
        of K slots; one vector (d_model,) or one row (K, d_model) is a batch of one."""
        if not isinstance(vectors, torch.Tensor):
            try:
                vectors = torch.as_tensor(vectors)
            except (TypeError, ValueError, RuntimeError) as err:
                raise VectorError(f"Cannot read a {type(vectors).__name__} as vectors ({str(err).splitlines()[0]:.80}); "
                                  "pass a float tensor (d_model,) or (N, d_model).") from None
        if vectors.numel() == 0:
            raise VectorError(f"Got empty vectors of shape {tuple(vectors.shape)}; pass at least one (d_model,) row.")
        given, k, d = tuple(vectors.shape), self.slots, self.backend.d_model
        if k == 1 and vectors.dim() == 3 and vectors.shape[1] == 1:
            vectors = vectors[:, 0]
        wanted = 2 if k == 1 else 3
        if vectors.dim() == wanted - 1:
            vectors = vectors[None]
        if vectors.dim() != wanted or (k > 1 and vectors.shape[1] != k):
            if k == 1:
                fix = "reshape them to one row per vector"
            else:
                fix = f"pass {k} vectors per row, or build the prompt for as many as you have (positions=...)"
            shape = "(N, d_model)" if k == 1 else f"(N, {k}, d_model)"
            raise VectorError(f"This explainer takes vectors of shape {shape}, got {given}; {fix}.")
        check_vectors(vectors, d)
        return vectors

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        model,
        tokenizer=None,
        adapter: str | AdapterConfig = "scalar_affine",
        template: str | PromptTemplate = "chat",
        site: str | Site = "embed",
        model_id: str | None = None,
        backend_options: dict | None = None,
        **adapter_options,
    ) -> Explainer:
        """A fresh explainer for `model`; `adapter_options` go to the adapter kind's own config class
        (init_scale for every kind, rank for the low-rank kinds, a plugin kind's own fields)."""
        from .plugins import backend_for

        backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
        if isinstance(template, str):
            template = PromptTemplate.named(template, backend.tokenizer)
        if not isinstance(adapter, AdapterConfig):
            adapter = AdapterConfig.for_kind(adapter, backend.d_model, **adapter_options)
        elif adapter_options:  # they would be dropped: the config object already says everything
            raise UnknownNameError(f"Adapter option(s) {sorted(adapter_options)} given with an AdapterConfig; set them "
                                   "on the config instead (or pass the adapter kind's name).")
        from .models.identity import model_id_of

        site = backend.check_site(Site.parse(site))  # a layer this model lacks is refused now, not at the first call
        return cls(backend, make_adapter(adapter), template, site, model_id or model_id_of(backend))

    # ---- the two computations -------------------------------------------------------------

    def soft_tokens(self, vectors: torch.Tensor, scale=None) -> torch.Tensor:
        return self.adapter(torch.as_tensor(vectors).to(self.backend.device), scale=scale)

    def _backend_input(self, vectors: torch.Tensor, scale=None):
        """Soft tokens, or the vectors plus adapter for a backend that runs the adapter itself."""
        if not self.backend.computes_adapter:
            return self.soft_tokens(vectors, scale=scale)
        vectors = torch.as_tensor(vectors)
        check_vectors(vectors, self.adapter.d_model)
        scales = None if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        return AdapterInput(vectors, self.adapter, scales)

    def loss(self, vectors: torch.Tensor, labels: list[str], clamp: float = 100.0) -> torch.Tensor:
        """Cross-entropy of the labels' targets, per token clamped, mean over tokens then rows."""
        tok = self.backend.tokenizer
        vectors = self.vector_rows(vectors)
        if vectors.shape[0] != len(labels) or not labels:
            raise VectorError(f"loss() takes N rows of vectors and N labels, got {tuple(vectors.shape)} and "
                              f"{len(labels)} labels; pass one label per vector row.")
        soft = self._backend_input(vectors)
        targets = [self.template.target_ids(tok, label) for label in labels]
        batch, prompt_len, width = len(labels), len(self.prompt_ids), max(map(len, targets))
        ids = torch.full((batch, prompt_len + width), pad_token_id(tok), dtype=torch.long)
        ids[:, :prompt_len] = self.prompt_ids
        gold = torch.full((batch, width), IGNORE, dtype=torch.long)
        for i, target in enumerate(targets):
            ids[i, prompt_len : prompt_len + len(target)] = torch.tensor(target)
            gold[i, : len(target)] = torch.tensor(target)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, :prompt_len] = self.inject_mask
        positions = (prompt_len - 1 + torch.arange(width)).expand(batch, width)
        # the backend's loss: cross-entropy of its logits, or (nnsight on NDIF) computed next to the
        # model so that only the loss and the adapter's gradients travel
        with self.backend.patched(self.model_patch):
            return self.backend.loss(ids, soft, mask, self.site, positions, gold, clamp, self.prefix_len)

    @torch.no_grad()
    def generate_labels(self, vectors: torch.Tensor, scales, sampling: Sampling) -> list[tuple[str, str]]:
        """(label, raw text) for each (vector, scale) row, one batched generate call."""
        tok = self.backend.tokenizer
        soft = self._backend_input(vectors, scale=scales)
        batch = len(vectors)
        ids = self.prompt_ids.expand(batch, -1)
        mask = self.inject_mask.expand(batch, -1)
        with self.backend.patched(self.model_patch):
            outputs = self.backend.generate(ids, soft, mask, self.site, sampling, self._is_finished, self.prefix_len)
        texts = [tok.decode(out, skip_special_tokens=False) for out in outputs]
        return [(self.template.parse_label(text), text) for text in texts]


    # ---- high-level verbs -----------------------------------------------------------------

    def train(self, train_data, validation=None, config=None, output_dir=None, progress: bool = True, remote=None):
        """Train the adapter (frozen model); see `training.TrainConfig`. Returns the history
        (`training.TrainHistory`: `validation_loss_at_init` only with `init="ridge"` and a
        validation set). `remote=True` (nnsight models) computes each step's loss and gradients on
        NDIF. A training set smaller than any measured to work is warned about in one line
        (`training.MIN_TRAIN_ROWS`)."""
        from .training import TrainConfig, train, training_set_problem

        self._record_vector_spec(train_data)
        if self.vector_spec is None:
            warnings.warn("The training dataset does not say where its vectors were read (its meta has no 'site'), so "
                          "this explainer will save no vector_spec and prepare_vectors cannot help its users; build it "
                          "from topic_vectors, or as VectorLabelDataset(vectors, records, meta=explainer.vector_meta()) "
                          "for vectors from that explainer's prepare_vectors, or give meta={'site': 'resid_post.10'}.",
                          stacklevel=2)
        problem = training_set_problem(getattr(train_data, "labels", []))
        if problem:
            warnings.warn(problem, stacklevel=2)
        with self._remote(remote):
            return train(self, train_data, validation, config or TrainConfig(), output_dir, progress)

    def explain(self, vectors: torch.Tensor | VectorLabelDataset, ids=None, scales=(1.0,), sampling: Sampling | None = None,
                batch_size: int = 64, samples: int = 1, output=None, progress: bool = True,
                remote=None) -> ExplainResults:
        """Labels for vectors: one `ExplainRecord` per (vector, scale, sample); streamed to `output` JSONL if
        given. Given a `VectorLabelDataset` (or a split of one), each record takes its row's dataset id,
        so the scorers find its label (`ids=` other than the dataset's is refused); given a tensor,
        rows are numbered '0', '1', ... unless `ids=` names them.
        `remote=True` (nnsight models) runs each batch on NDIF; `remote="local"` rehearses that offline."""
        from .explaining import explain

        with self._remote(remote):
            return explain(self, vectors, ids, scales, sampling or self.default_sampling or Sampling(), batch_size,
                           samples, output, progress)

    # ---- what vectors it reads ------------------------------------------------------------

    def prepare_vectors(self, x, site=None, features=None, pos=None, attention_mask=None,
                        direction: bool = False) -> torch.Tensor:
        """What you hold, as this explainer's input (N, d_model): an activation (d), (N, d) or
        (N, T, d), a TransformerLens cache entry or `ActivationCache` (its entry at the spec's site),
        or an SAE-Lens SAE (its decoder rows; `features` picks latents). Activations get the recorded
        centring (`vector_spec`: the mean subtracted).

        `pos` picks the position of (N, T, d) activations, as TransformerLens indexes them: an int
        (negative from the end; default -1, the last token, where topic vectors are read) or one per
        row. With `attention_mask` (N, T), the batch's mask, it counts among each row's real tokens,
        so a left- or right-padded batch reads each prompt's own last token. `direction=True` takes
        `x` as directions (a steering vector, a difference of means): no mean is subtracted, each row
        is normalised, and explain's `scales=` scale it (the paper's evaluation convention).

        `site` says where `x` was read ('resid_post.10', 'blocks.10.hook_resid_post'). A site other
        than the spec's, and rows unlike a training vector (centred twice, a direction given as an
        activation, read at another position, prompt or layer, one prompt's positions as rows) are
        warned about in one line each, with the fix (vector_checks.py)."""
        from .vector_inputs import prepare_vectors

        return prepare_vectors(self.vector_spec, self.metadata, x, site, features, pos, attention_mask, direction)

    def vector_prompt(self, topic: str, tokenize: bool = False):
        """The prompt this explainer's training vectors were read from, for `topic`: its token ids
        (`tokenize=True`), exactly as `topic_vectors` builds them, or a text that this model's
        library runs as those ids (`model.run_with_cache(text)`, `lm.trace(text)`). The chat markup
        starts with BOS, and a library that prepends one (TransformerLens does) would run a second:
        the text then leaves its own out. Read `vector_spec.site` at the last token, then pass the
        activation to `prepare_vectors`."""
        spec = self.vector_spec
        if spec is None or not spec.prompt:
            raise VectorError("This explainer records no prompt its vectors were read from (no vector_spec, or vectors "
                              "not from prompts); see explainer.metadata for where they came from.")
        tok = self.backend.tokenizer
        ids = prompt_text(tok, spec.prompt, topic, spec.prompt_format, tokenize=True)
        if tokenize:
            return ids
        text = prompt_text(tok, spec.prompt, topic, spec.prompt_format)
        bos = getattr(tok, "bos_token", None)
        for candidate in (text, text[len(bos):] if bos and text.startswith(bos) else None):
            if candidate is not None and self.backend.text_ids(candidate) == ids:
                return candidate
        raise VectorError(f"No text runs as this explainer's prompt for {topic!r} on this model (its tokenizer adds "
                          "special tokens the prompt does not hold); run the ids instead: "
                          "ids = explainer.vector_prompt(topic, tokenize=True), then model(torch.tensor([ids])).")

    def vector_meta(self) -> dict:
        """A dataset's `meta` for vectors this explainer's `prepare_vectors` made (its spec: site,
        prompt, position, and the mean it subtracts), so that an explainer trained on
        `VectorLabelDataset(vectors, records, meta=explainer.vector_meta())` records the same spec:
        a tensor carries no trace of where it was read, and a dataset built from one without this
        trained an explainer that saved `vector_spec=None`. Not for rows made with `direction=True`:
        directions are read at no site and centred with no mean, so no spec describes them."""
        spec = self.vector_spec
        if spec is None:
            raise VectorError("This explainer records no vector_spec, so there is no recipe to give its vectors; give "
                              "the dataset meta={'site': ...} (where you read them) yourself.")
        return dict(spec.to_meta(self.metadata.get(spec.mean_key) if spec.mean_key else None),
                    model_fingerprint=self.backend.fingerprint())

    def _record_vector_spec(self, data) -> None:
        """What an explainer records from the dataset it is trained on, decided here only (the CLI's
        `train` and `Explainer.train` both come through it): the meta's source, layer and site, the
        mean its vectors were centred with (so new vectors can be centred the same way) and, when the
        meta says where the vectors were read, the vector spec."""
        meta = getattr(data, "meta", None)
        if self.vector_spec is not None or not isinstance(meta, dict):
            return
        for key in ("source", "layer", "site"):
            if key in meta:
                self.metadata.setdefault(key, meta[key])
        centred = meta.get("mean_subtracted") and "mean" in meta
        norms = torch.as_tensor(data.vectors).float().norm(dim=-1)
        spec = VectorSpec.from_meta(meta, vector_norm=float(f"{float(norms.median()):.5g}") if len(norms) else None)
        if centred:
            problem = mean_problem(meta["mean"], "its meta's 'mean'", data.vectors.shape[-1])
            if problem:
                raise ArtifactError(f"The training dataset is centred, but {problem}; rebuild the dataset (its "
                                    "dataset.json) with the mean its vectors were centred with.")
            self.metadata[MEAN_KEY] = list(meta["mean"])
        if spec is None:
            return
        self.metadata.setdefault("source", meta.get("source"))
        self.metadata.setdefault("layer", spec.layer)
        self.vector_spec = spec

    def _remote(self, remote):
        """The backend switched to `remote` for one call (None: leave it as it is)."""
        if remote is None:
            return contextlib.nullcontext()
        return self.backend.remote_mode(remote)  # Backend.remote_mode refuses where not supports_remote

    # ---- artifacts ------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {
            "library_version": __version__,
            "adapter": self.adapter.config.to_dict(),
            "template": self.template.to_dict(),
            "site": self.site.to_dict(),
            "model_id": self.model_id,
            "d_model": self.backend.d_model,
            "embedding_fingerprint": self.backend.fingerprint(),
            "embedding_signature": _signature(self.backend),
            "prompt_ids": self.prompt_ids.tolist(),
            "vector_spec": self.vector_spec.to_dict() if self.vector_spec else None,
            "default_sampling": asdict(self.default_sampling) if self.default_sampling else None,
            "metadata": self.metadata,
        }

    def save_pretrained(self, directory: str | Path, format: str = "selfinterp") -> Path:
        """Write the artifact (the directory is made, and locked while written: a second writer to
        it fails at once instead of mixing two explainers' files). `format="selfie-adapters"` writes
        instead one `.safetensors` file the reference code of Pepper et al. loads (`pepper_format`),
        so an adapter trained here can be handed to anyone using it."""
        if self.model_patch is not None:
            raise ArtifactError("This explainer changes the model's weights while it runs (an Activation Oracle's LoRA), "
                                "which an explainer folder does not hold; keep the oracle's own directory and load it "
                                "again with Explainer.from_pretrained.")
        if format == "selfie-adapters":
            from .pepper_format import save_selfie_adapter

            return save_selfie_adapter(self, directory)
        if format != "selfinterp":
            raise OptionError(f"Unknown format {format!r}; use 'selfinterp' (an explainer folder) or 'selfie-adapters'.")
        directory = Path(directory)
        with DirectoryLock(directory):
            save_weights_and_config(directory, dict(self.adapter.state_dict()), self.config_dict(), CONFIG_FILE,
                                    WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, model, tokenizer=None, check_model: bool = True,
                        backend_options: dict | None = None, format: str | None = None, **options) -> Explainer:
        """Load a saved explainer onto `model`; refuses a model it was not trained for. `directory` is
        a folder written by `save_pretrained`, or a shipped explainer's name (`"smollm2-topics"`, or
        `"shipped"` for the default: `defaults.shipped_explainer_names()` lists them).

        It may also be an explainer published in another format that a plugin loads (its
        `register_explainer_formats`), a local file or folder or a hub id: the core's
        `selfie-adapters` (Pepper et al.'s published adapters: a `.safetensors` path, or a hub repo
        with `filename=`, e.g. `"keenanpepper/selfie-adapters-llama-3.1-8b-instruct"`,
        `filename="goodfire-sae-scalar-affine.safetensors"`; `template=`, `mean_vectors=`, `layer=`:
        `default_plugins.formats.load_selfie_explainer`), and with the PEFT plugin an Activation Oracle
        (`"adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Qwen3-8B"`, with `layer=` and
        `question=`). `format=` names the format when more than one claims a source; `options` go to
        that format's loader."""
        from .explainer_formats import foreign_loader
        from .plugins import backend_for

        load = foreign_loader(directory, format, CONFIG_FILE, options)
        if load is not None:
            return load(directory, model, tokenizer=tokenizer, check_model=check_model, backend_options=backend_options,
                        **options)
        if options:
            raise OptionError(f"Option(s) {sorted(options)} are for an explainer in another format (a selfie-adapters "
                              "file's template=, mean_vectors=, layer=; an Activation Oracle's layer= and question=); an "
                              "explainer folder records its own settings: leave them out.")
        directory, path, raw, config, spec = _read_saved(directory)
        backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
        if check_model and config.embedding_fingerprint is None:
            raise ModelMismatchError(
                f"{path} records no embedding_fingerprint, so the model it was trained for cannot be checked; re-save "
                "the explainer with save_pretrained() (or pass check_model=False if you know it fits this model)."
            )
        if check_model:
            from .models.identity import check_same_model

            check_same_model(raw, backend, directory)
        if config.d_model != backend.d_model:
            raise ModelMismatchError(
                f"Explainer d_model {config.d_model} != model d_model {backend.d_model}; load it onto the model it was trained for."
            )
        adapter = make_adapter(AdapterConfig.from_dict(config.adapter, source=str(path), prefix="adapter"))
        weights = weights_file(directory, raw, WEIGHTS_FILE)
        state = check_finite_tensors(load_safetensors(weights), weights, "re-train or re-download the explainer.")
        try:
            adapter.load_state_dict(state)
        except RuntimeError as err:
            raise ArtifactError(f"{weights} does not match its config ({err}); re-save the explainer.") from None
        template = PromptTemplate.from_dict(config.template, source=str(path), prefix="template")
        site = Site.from_dict(config.site, source=str(path), prefix="site")
        explainer = cls(backend, adapter, template, site, config.model_id, config.metadata, spec)
        if config.default_sampling is not None:
            explainer.default_sampling = validate(Sampling, config.default_sampling, str(path), FIX, prefix="default_sampling")
        if config.prompt_ids is not None:
            explainer._use_prompt_ids(config.prompt_ids, path)
        return explainer

    @staticmethod
    def check_pretrained(directory: str | Path) -> Path:
        """Every check of a saved explainer that needs no model (where it is, its config's fields,
        its vector spec and recorded mean against its own width), so that a command refuses a bad
        explainer before minutes of model loading; returns its directory (a shipped name resolved).
        `from_pretrained` runs the same checks, then those that need the model. A source in another
        format (a selfie-adapters file, an Activation Oracle) is returned as given: its loader
        checks it when it loads."""
        from .explainer_formats import foreign_loader

        if foreign_loader(directory, None, CONFIG_FILE) is not None:
            return directory
        return _read_saved(directory)[0]

    def _use_prompt_ids(self, saved, path) -> None:
        """Run the prompt as trained. A tokenizer that only adds or drops a leading BOS
        (TransformerLens switches its tokenizers to prepend one) gets the saved ids; any other
        difference is another tokenizer, refused: a label must never silently change."""
        saved = torch.tensor(saved, dtype=torch.long)
        if torch.equal(saved, self.prompt_ids):
            return
        bos = getattr(self.backend.tokenizer, "bos_token_id", None)

        def strip(ids):
            return ids[1:] if bos is not None and len(ids) and int(ids[0]) == bos else ids

        if not torch.equal(strip(saved), strip(self.prompt_ids)):
            raise ModelMismatchError(f"{path}: the tokenizer given tokenises the explainer's prompt differently from the "
                                     "one it was trained with; pass tokenizer= the model's own tokenizer "
                                     "(AutoTokenizer.from_pretrained(<model id>)).")
        self.prompt_ids = saved
        self.inject_mask = self.template.injection_mask(saved, self.backend.tokenizer)
        self.prefix_len = int(self.inject_mask.nonzero()[0])


class LabelEnd:
    """Whether a row's label is complete: an end-of-turn / EOS token, or (with `stop_at_closing`) a
    token whose text holds the closing quote. It looks at the last token only, so the tokens that
    end a label can be listed up front (`token_ids`), for backends that stop rows inside the
    model's own `generate` (nnsight on NDIF)."""

    def __init__(self, tokenizer, template: PromptTemplate):
        self.tokenizer = tokenizer
        self.template = template
        self.stop_ids = {i for i in (tokenizer.eos_token_id, _single_id(tokenizer, template.end)) if i is not None}
        self._token_ids: frozenset[int] | None = None

    def __call__(self, ids: list[int]) -> bool:
        if ids[-1] in self.stop_ids:
            return True
        if self.template.end and not self.template.stop_at_closing:
            return False
        return self.template.is_finished(self.tokenizer.decode(ids[-1:]))

    def token_ids(self) -> frozenset[int]:
        """Every token id that ends a label on its own (one pass over the vocabulary, cached)."""
        if self._token_ids is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            closing = self.template.end and not self.template.stop_at_closing
            found = {i for i, text in enumerate(texts) if not closing and self.template.is_finished(text)}
            self._token_ids = frozenset(found | self.stop_ids)
        return self._token_ids


FIX = "re-save the explainer (save_pretrained) or re-download it."


@dataclass
class ConfigFile:
    """The fields of `explainer_config.json` (the sections are checked by their own classes:
    AdapterConfig, PromptTemplate, Site, VectorSpec)."""

    d_model: PositiveInt
    adapter: dict
    template: dict
    site: dict
    embedding_fingerprint: str | None = None
    embedding_signature: list[list[float]] | None = None
    prompt_ids: list[NonNegativeInt] | None = None
    vector_spec: dict | None = None
    default_sampling: dict | None = None
    model_id: str | None = None
    metadata: dict = field(default_factory=dict)
    library_version: str | None = None
    weights_file: str | None = None
    weights_sha256: str | None = None


def _read_saved(directory):
    """(directory, config path, raw config, ConfigFile, VectorSpec or None) of a saved explainer,
    after every check that needs no model."""
    from .defaults import explainer_location, shipped_explainer_names

    directory = explainer_location(directory)
    if not directory.is_dir():
        raise ArtifactError(f"No explainer directory at {directory}; pass the folder written by save_pretrained(), "
                            f"or a shipped explainer's name ({', '.join(['shipped', *shipped_explainer_names()])}).")
    check_artifact_dir(directory)
    path = directory / CONFIG_FILE
    raw = read_json(path)
    config = validate(ConfigFile, raw, str(path), FIX)
    spec = VectorSpec.from_dict(config.vector_spec, path) if config.vector_spec is not None else _legacy_spec(config.metadata)
    centred = spec is not None and spec.centring == "mean"
    problem = centred and mean_problem(config.metadata.get(spec.mean_key), f"metadata[{spec.mean_key!r}]", config.d_model)
    if problem:
        raise ArtifactError(f"{path}: {problem}; {FIX}")
    return directory, path, raw, config, spec


def _signature(backend):
    from .models.identity import embedding_signature

    return embedding_signature(backend)


def _legacy_spec(metadata: dict) -> VectorSpec | None:
    """The spec of an explainer saved before specs, from what its metadata says (topic vectors)."""
    if metadata.get("source") != "topics" or not isinstance(metadata.get("layer"), int):
        return None
    from .topics import TOPIC_PROMPT

    meta = {"source": "topics", "site": f"resid_post.{metadata['layer']}", "prompt": TOPIC_PROMPT,
            "mean_subtracted": "topic_mean" in metadata, "mean": metadata.get("topic_mean")}
    return VectorSpec.from_meta(meta)


def _single_id(tokenizer, text: str) -> int | None:
    if not text:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


__all__ = ["Explainer"]
