"""`selfinterp report`: trained explainers vs untrained baselines vs the knowledge control, on
held-out topic vectors, as one HTML page (plotly's JavaScript beside it, or inlined, or from its
CDN: `ReportConfig.plotly_js`) plus JSON of every number.

The protocol follows Pepper et al. 2026 and the untrained methods it compares with: each untrained baseline is swept over
its scales and injection layers on *validation* topics, read at its best point on *test* topics;
trained explainers are read at s = 1 (swept too, for the sensitivity picture); the prompted
description (the model asked to describe the topic without naming it) is scored the same way.
Every finished sweep is appended to `rows.jsonl` in the output directory, so an interrupted
report resumes where it stopped; a sweep is reused only for the same sweep options, the layer the
run resolved and, for a trained explainer, the same explainer (its digest).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..defaults import DEFAULT_MODEL
from ..errors import OptionError
from ..storage._files import JsonlWriter, write_text_atomic
from ..storage._locks import DirectoryLock
from ..storage.validation import Name, NonNegativeInt, PositiveInt, validate
from .sensitivity import PLOTLY_JS


@dataclass
class ReportConfig:
    """What to compare, on which model and how many topics (JSON file for `--config`)."""

    model: Name = DEFAULT_MODEL
    explainers: list[Name] = field(default_factory=lambda: ["shipped"])
    baselines: list[Name] = field(default_factory=lambda: ["selfie", "patchscopes", "self_explaining",
                                                           "activation_oracle", "scale_only"])
    layer: NonNegativeInt | None = None  # where vectors are read (resid_post); default: the first explainer's, else 2/3 depth
    validation_topics: PositiveInt = 48
    test_topics: PositiveInt = 200
    knowledge_control: bool = True
    max_new_tokens: PositiveInt = 16
    seed: NonNegativeInt = 0
    sweep_layers: list[NonNegativeInt] | None = None  # injection layers for every baseline (default: each baseline's own grid)
    plotly_js: Literal["directory", "inline", "cdn"] = "directory"  # one plotly.min.js beside the pages, in each, or CDN

    @classmethod
    def from_dict(cls, data: dict, source: str = "Report config") -> ReportConfig:
        return validate(cls, data, source, "fix that option (see `selfinterp report --help`).")


def run_report(config: ReportConfig, out_dir: str | Path, progress: bool = True, backend=None) -> dict:
    """Measure everything `config` asks for; write results.json, sensitivity.{png,html}, report.html."""
    from ..topics import load_topics

    if config.plotly_js not in PLOTLY_JS:  # checked before an hour of sweeps, not when the pages are written
        raise OptionError(f"plotly_js takes {', '.join(PLOTLY_JS)}, got {config.plotly_js!r}.")
    topics = load_topics()
    pools = {split: [t for t in topics if t["split"] == split] for split in ("validation", "test")}
    for split, wanted in (("validation", config.validation_topics), ("test", config.test_topics)):
        if wanted > len(pools[split]):
            raise OptionError(f"{split}_topics {wanted} is more than the {len(pools[split])} {split} topics there are; "
                              f"ask for at most {len(pools[split])}.")
    out = Path(out_dir)
    # one report per directory: a second run fails at once instead of appending its sweeps twice
    with DirectoryLock(out):
        return _measure(config, out, progress, backend, topics, pools)


def _measure(config: ReportConfig, out: Path, progress: bool, backend, topics: list, pools: dict) -> dict:
    """`run_report`'s work, with its options checked and its directory locked."""
    from .. import Explainer, Sampling
    from ..models import load_model
    from ..storage._manifests import explainer_digest
    from ..topics import topic_vectors
    from .baselines import get_baseline
    from .bridge import mentions
    from .knowledge import prompted_descriptions
    from .report_html import write_html
    from .scoring import recall_at_k, sentence_embedder
    from .sensitivity import best_point, plot_sensitivity, sweep

    if backend is None:
        from ..backends import HFBackend

        backend = HFBackend(*load_model(config.model))
    explainers = [Explainer.from_pretrained(e, model=backend) for e in config.explainers]
    baselines = [get_baseline(name) for name in config.baselines]
    layer = config.layer
    if layer is None:
        layer = explainers[0].metadata.get("layer") if explainers else None
    if layer is None:
        layer = backend.n_layers * 2 // 3

    rng = random.Random(config.seed)
    validation = rng.sample(pools["validation"], config.validation_topics)
    test = rng.sample(pools["test"], config.test_topics)
    mean = _topic_mean(explainers, layer)
    vectors = topic_vectors(backend, validation + test, [layer], progress=progress,
                            means=None if mean is None else {layer: mean})[layer]
    val_data = vectors.select(list(range(len(validation))))
    test_data = vectors.select(list(range(len(validation), len(vectors))))
    candidates = sorted({t["title"] for t in topics})
    embeddings = sentence_embedder().encode(candidates)
    sampling = Sampling(max_new_tokens=config.max_new_tokens)
    common = dict(sampling=sampling, candidate_embeddings=embeddings)

    done = _read_rows(out / "rows.jsonl", config, layer)
    rows, headline, examples = [], [], {}
    methods = [(b.name, b) for b in baselines] + [(_name(e, i), e) for i, e in enumerate(explainers)]
    for name, method in methods:
        key = (name, explainer_digest(method) if isinstance(method, Explainer) else None)
        if key not in done:
            kwargs = {"layers": config.sweep_layers} if config.sweep_layers and not isinstance(method, Explainer) else {}
            found = sweep(method, backend, val_data, candidates, name=name, progress=progress, **kwargs, **common)
            _append_rows(out / "rows.jsonl", config, layer, key, found)
            done[key] = found
        rows += done[key]
        if isinstance(method, Explainer):
            point, explainer, scale = {"layer": method.site.layer, "scale": 1.0}, method, 1.0
        else:
            point = best_point(done[key])
            coef = point["scale"] if method.mode == "add_normmatched" else 1.0
            explainer = method.explainer(backend, point["layer"], coef=coef)
            scale = 1.0 if method.mode == "add_normmatched" else point["scale"]
        records = explainer.explain(test_data.vectors, ids=test_data.ids, scales=(scale,), sampling=sampling,
                                    progress=False)
        headline.append(_score(name, records, test_data, candidates, embeddings, point, recall_at_k))
        examples[name] = [r["label"] for r in records[:12]]
    if config.knowledge_control:
        records = prompted_descriptions(backend, test_data.labels, ids=test_data.ids, progress=progress)
        headline.append(_score("prompted description", records, test_data, candidates, embeddings, {}, recall_at_k))
        # a small model often names the topic though told not to: score the descriptions that do not
        named = [mentions(r["label"], [title]) for r, title in zip(records, test_data.labels)]
        headline[-1]["title_named"] = sum(named) / len(named)
        kept = [i for i, hit in enumerate(named) if not hit]
        if kept:
            row = _score("prompted description, title not named", [records[i] for i in kept], test_data.select(kept),
                         candidates, embeddings, {}, recall_at_k)
            headline.append(row)
        examples["prompted description"] = [r["label"] for r in records[:12]]

    plots = plot_sensitivity(rows, out / "sensitivity.png", out / "sensitivity.html",
                             title=f"{config.model}: recall@1 on {len(val_data)} validation topics",
                             x_titles={name: _x_title(method) for name, method in methods}, plotly_js=config.plotly_js)
    results = {"config": asdict(config), "model_fingerprint": backend.fingerprint(), "vector_layer": layer,
               "n_validation": len(val_data), "n_test": len(test_data), "n_candidates": len(candidates),
               "headline": headline, "sweep": rows,
               "examples": {"truth": test_data.labels[:12], **examples}}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_html(results, plots, out / "report.html", plotly_js=config.plotly_js)
    return results


def _x_title(method) -> str:
    """What a method's swept number is: a trained explainer's scale s (trained at 1), a baseline's
    s multiplying the vector, or the coefficient c of norm-matched addition."""
    from ..explainer import Explainer

    if isinstance(method, Explainer):
        return "scale s (trained at 1)"
    if method.mode == "add_normmatched":
        return "coefficient c (norm-matched addition)"
    return "scale s (vector × s)"


def _name(explainer, index: int) -> str:
    return f"trained {explainer.adapter.config.kind}" + (f" #{index + 1}" if index else "")


def _topic_mean(explainers, layer):
    for explainer in explainers:
        meta = explainer.metadata
        if meta.get("layer") == layer and "topic_mean" in meta:
            return torch.tensor(meta["topic_mean"])
    return None  # the mean over the topics used


def _score(name, records, data, candidates, embeddings, point, recall_at_k) -> dict:
    truth = {r["id"]: r["label"] for r in data.records}
    recall = next(iter(recall_at_k(records, truth, candidates, candidate_embeddings=embeddings).values()))
    return {"method": name, "layer": point.get("layer"), "scale": point.get("scale"),
            "validation_recall@1": point.get("recall@1"), "recall@1": recall[1], "recall@5": recall[5], "n": len(records)}


#: the options a sweep's result depends on (adding an explainer must not redo the baselines)
SWEEP_KEYS = ("model", "layer", "validation_topics", "seed", "max_new_tokens", "sweep_layers")


def _sweep_key(config, layer) -> dict:
    """The sweep options, with the layer the run resolved (`layer: null` takes the explainer's, so
    the option alone does not say which layer a sweep ran at)."""
    data = config if isinstance(config, dict) else asdict(config)
    return {**{k: data.get(k) for k in SWEEP_KEYS}, "layer": layer}


def _read_rows(path: Path, config: ReportConfig, layer) -> dict:
    """Sweeps finished by an earlier run with the same sweep options, by (method, explainer digest):
    a method's name says only an explainer's adapter kind, so another explainer of that kind took
    the first one's sweep (rows written before the digest was recorded are run again)."""
    if not path.exists():
        return {}
    done = {}
    key = _sweep_key(config, layer)
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            stored = json.loads(record["config"])
            method = (record["method"], record.get("explainer"))
        except (json.JSONDecodeError, KeyError, TypeError):  # a torn last line from a killed run
            continue
        if _sweep_key(stored, stored.get("layer")) == key:
            done[method] = record["rows"]
    return done


def _append_rows(path: Path, config: ReportConfig, layer, key: tuple, rows: list[dict]) -> None:
    name, digest = key
    record = {"config": json.dumps(dict(asdict(config), layer=layer), sort_keys=True), "method": name,
              "explainer": digest, "rows": rows}
    with JsonlWriter(path) as writer:  # repairs a killed run's torn line before appending
        writer.write(record)
