"""The artifact kinds the library saves, each as (make the old state, save a new one over it, load
it as a plain comparable value), built on the tiny models: shared by the crash tests
(test_atomic_writes.py) and the hostile-file tests (test_hostile_paths.py), so both cover the same
set and a new kind added here is held to both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from selfinterp_plugins import Explainer, VectorLabelDataset
from selfinterp_plugins.storage._files import JsonlWriter, load_safetensors, read_json, read_jsonl, write_json


@dataclass
class Kind:
    """An artifact kind: how to make its old state in a directory, save the new one over it, and
    load what is there as a plain comparable value."""

    name: str
    make_old: object
    save_new: object
    load: object


# ---- the artifact kinds --------------------------------------------------------------------------

def _explainer_kind(model, tok) -> Kind:
    old = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    new = Explainer.create(model, tok, adapter="full_rank", template="echo")
    with torch.no_grad():
        for p in new.adapter.parameters():
            p.add_(0.25)

    def load(d):
        loaded = Explainer.from_pretrained(d, model=model, tokenizer=tok)
        return loaded.adapter.kind, {k: v.tolist() for k, v in loaded.adapter.state_dict().items()}

    return Kind("explainer", old.save_pretrained, new.save_pretrained, load)


def _dataset(n: int, seed: int, source: str) -> VectorLabelDataset:
    vectors = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return VectorLabelDataset(vectors, [{"id": str(i), "label": f"{source}-{i}", "split": "train"} for i in range(n)],
                              {"source": source})


def _save_dataset_old_layout(dataset: VectorLabelDataset, d: Path) -> None:
    """What `save` wrote before the commit record: three plain files, dataset.json naming neither."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": dataset.vectors.contiguous()}, str(d / "vectors.safetensors"))
    (d / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dataset.records))
    (d / "dataset.json").write_text(json.dumps(dict(dataset.meta, count=len(dataset), d_model=4)))


def _load_dataset(d):
    loaded = VectorLabelDataset.load(d)
    return loaded.vectors.tolist(), loaded.records, loaded.meta


def _dataset_kind(old_layout: bool) -> Kind:
    old, new = _dataset(5, 0, "old"), _dataset(7, 1, "new")
    make_old = (lambda d: _save_dataset_old_layout(old, d)) if old_layout else old.save
    return Kind("dataset (old layout)" if old_layout else "dataset", make_old, new.save, _load_dataset)


def _checkpoint_kind() -> Kind:
    from selfinterp_plugins.adapters import AdapterConfig, make_adapter
    from selfinterp_plugins.training import _checkpoint_files, _read_state, _save_checkpoint

    def trained(step):
        """`_save_checkpoint` of an adapter + AdamW after `step` updates (fixed: every call writes the same)."""
        adapter = make_adapter(AdapterConfig("full_rank", 4))
        named = list(adapter.named_parameters())
        optimizer = torch.optim.AdamW([p for _, p in named], lr=0.1)
        for i in range(step):
            for _, p in named:
                p.grad = torch.full_like(p, float(i + 1))
            optimizer.step()
        return lambda d: _save_checkpoint(d, adapter, optimizer, named, step, {"train_loss": [float(step)]}, {"seed": 1})

    def load(d):  # what `train` reads to resume
        state = _read_state(d)
        files = _checkpoint_files(d, state)
        return state.step, {key: {k: v.tolist() for k, v in load_safetensors(path).items()}
                            for key, path in files.items()}

    return Kind("training checkpoint", trained(3), trained(6), load)


def _jsonl_kind(tail: bytes) -> Kind:
    """A JSONL file a crashed run left with `tail` after two records; the new state is after
    reopening it (tail repair) and writing a third record."""
    def make_old(d):
        d.mkdir(parents=True, exist_ok=True)
        (d / "out.jsonl").write_bytes(b'{"id": "0"}\n{"id": "1"}' + tail)

    def save_new(d):
        with JsonlWriter(d / "out.jsonl") as writer:
            writer.write({"id": "2"})

    name = "JSONL, torn tail" if tail else "JSONL, last newline lost"
    return Kind(name, make_old, save_new, lambda d: read_jsonl(d / "out.jsonl", tolerate_torn_tail=True))


def _json_kind() -> Kind:
    return Kind("JSON file", lambda d: (d.mkdir(parents=True, exist_ok=True), write_json({"v": "old"}, d / "f.json")),
                lambda d: write_json({"v": "new" * 100}, d / "f.json"), lambda d: read_json(d / "f.json"))


def _rows(value: float) -> list[dict]:
    return [{"method": "m", "layer": 1, "scale": s, "recall@1": value * s, "recall@5": value, "exact_match": 0.0,
             "n": 4} for s in (1.0, 2.0)]


def _picture_kind() -> Kind:
    """The report's sensitivity picture (evaluation/sensitivity.py)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    from selfinterp_plugins.evaluation.sensitivity import plot_sensitivity

    def write(d, value):
        d.mkdir(parents=True, exist_ok=True)
        plot_sensitivity(_rows(value), d / "sensitivity.png")

    return Kind("sensitivity png", lambda d: write(d, 0.1), lambda d: write(d, 0.2),
                lambda d: (d / "sensitivity.png").read_bytes())


def _report_kind(scratch: Path) -> Kind:
    """The report's HTML page (evaluation/report_html.py)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    from selfinterp_plugins.evaluation.report_html import write_html
    from selfinterp_plugins.evaluation.sensitivity import plot_sensitivity

    plots = plot_sensitivity(_rows(0.1), scratch / "sensitivity.png")

    def write(d, model):
        d.mkdir(parents=True, exist_ok=True)
        results = {"config": {"model": model}, "vector_layer": 1, "n_validation": 4, "n_test": 4, "n_candidates": 9,
                   "headline": [], "sweep": _rows(0.1), "examples": {"truth": ["a"]}}
        write_html(results, plots, d / "report.html")

    return Kind("report html", lambda d: write(d, "old"), lambda d: write(d, "new"),
                lambda d: (d / "report.html").read_bytes())


# ---- the plugins' multi-file artifacts (PEFT, SAE-Lens serialise; our config is the commit record) --

def _perturbed(module: torch.nn.Module, seed: int) -> None:
    """Every trainable weight random (PEFT starts lora_B at zero: old and new must differ everywhere)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _lora_state(peft_model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.tolist() for k, v in get_peft_model_state_dict(peft_model).items()}


def _dit_kind(model, tok) -> Kind:
    """A DIT adapter (PEFT files + dit_config.json); the old one of another rank."""
    pytest.importorskip("peft")
    import copy

    from selfinterp_peft.dit import DITAdapter, DITConfig

    def made(rank, seed):
        dit = DITAdapter.create(copy.deepcopy(model), tok, DITConfig(rank=rank, seed=seed))
        _perturbed(dit.model, seed)
        return dit

    def load(d):
        loaded = DITAdapter.from_pretrained(d, copy.deepcopy(model), tok)
        return loaded.config.rank, loaded.config.seed, _lora_state(loaded.model)

    return Kind("DIT adapter", made(2, 0).save_pretrained, made(4, 1).save_pretrained, load)


def _lora_explainer_kind(model, tok) -> Kind:
    """A LoRA explainer; the new one has projections (a file the old one lacks)."""
    pytest.importorskip("peft")
    import copy

    from selfinterp_introspective.config import LoRAExplainerConfig
    from selfinterp_introspective.explainer import LoRAExplainer

    def made(rank, seed, subject_d_model):
        config = LoRAExplainerConfig(rank=rank, seed=seed, subject_d_model=subject_d_model,
                                     subject_layers=[1] if subject_d_model else [])
        explainer = LoRAExplainer.create(copy.deepcopy(model), tok, config)
        _perturbed(explainer.model, seed)
        _perturbed(explainer.projections, seed + 1)
        return explainer

    def load(d):
        loaded = LoRAExplainer.from_pretrained(d, copy.deepcopy(model), tok)
        return (loaded.config.rank, _lora_state(loaded.model),
                {k: v.tolist() for k, v in loaded.projections.state_dict().items()})

    return Kind("LoRA explainer", made(2, 0, None).save_pretrained, made(4, 1, 8).save_pretrained, load)


def _weight_diff_kind(model) -> Kind:
    """A weight diff saved as a plain PEFT LoRA (+ weight_diff.json); the new one of another rank."""
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff

    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:3]

    def made(rank, seed):
        g = torch.Generator().manual_seed(seed)
        modules = {}
        for name in linears:
            weight = model.get_submodule(name).weight
            modules[name] = ModuleDiff(A=torch.randn(rank, weight.shape[1], generator=g),
                                       B=torch.randn(weight.shape[0], rank, generator=g), scale=0.5)
        return lambda d: WeightDiff(modules, {"source": f"seed {seed}"}).save_pretrained(d, model)

    def load(d):
        diff = WeightDiff.from_pretrained(d)
        return {name: m.delta().tolist() for name, m in diff.modules.items()}

    return Kind("weight diff", made(2, 0), made(3, 1), load)


def _trained_sae_kind(d_in: int) -> Kind:
    """`train_sae(out=...)`'s save (SAE-Lens's files + selfinterp_sae_train.json)."""
    pytest.importorskip("sae_lens")
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from selfinterp_plugins.storage._commits import record_free
    from selfinterp_sae_lens.sae_training import TRAIN_FILE, SAETrainConfig, load_saved_sae, save_trained_sae

    def made(d_sae, seed):
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=2, dtype="float32", device="cpu"))
        _perturbed(sae, seed)
        return lambda d: save_trained_sae(sae, SAETrainConfig(d_sae=d_sae, k=2, seed=seed), d)

    def load(d):  # the SAE and the settings saved beside it
        settings = record_free(read_json(d / TRAIN_FILE))
        return settings["d_sae"], settings["seed"], {k: v.tolist() for k, v in load_saved_sae(d).state_dict().items()}

    return Kind("trained SAE", made(8, 0), made(12, 1), load)


KINDS = ["explainer", "dataset", "dataset (old layout)", "training checkpoint", "JSONL, torn tail",
         "JSONL, last newline lost", "JSON file", "sensitivity png", "report html", "DIT adapter",
         "LoRA explainer", "weight diff", "trained SAE"]


def make_kind(name: str, tiny_llama, tmp_path_factory) -> Kind:
    """The kind called `name` (one of KINDS)."""
    return {"explainer": lambda: _explainer_kind(*tiny_llama), "dataset": lambda: _dataset_kind(False),
            "dataset (old layout)": lambda: _dataset_kind(True), "training checkpoint": _checkpoint_kind,
            "JSONL, torn tail": lambda: _jsonl_kind(b'\n{"id": "to'), "JSONL, last newline lost": lambda: _jsonl_kind(b""),
            "JSON file": _json_kind, "sensitivity png": _picture_kind,
            "report html": lambda: _report_kind(tmp_path_factory.mktemp("plots")),
            "DIT adapter": lambda: _dit_kind(*tiny_llama), "LoRA explainer": lambda: _lora_explainer_kind(*tiny_llama),
            "weight diff": lambda: _weight_diff_kind(tiny_llama[0]),
            "trained SAE": lambda: _trained_sae_kind(tiny_llama[0].config.hidden_size)}[name]()
