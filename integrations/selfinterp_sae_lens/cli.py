"""`selfinterp sae …`: SAE features from the command line.

  train-sae           train a TopK SAE with SAE-Lens's trainer on a local corpus (offline)
  weak-labels         label latents by their dominant top-activating token -> a dataset with splits
  import-neuronpedia  Neuronpedia explanations (JSON / JSONL / CSV) -> a dataset with splits
  import-labels       a selfie-adapters label file (the paper's Goodfire 8B labels) -> a dataset, the paper's split
  label               label every latent (or a range) with a trained explainer; resumable JSONL
                      plus a Neuronpedia-format copy
  score               generation or detection scoring of a labels file
  demo                the shipped explainer on held-out latents of the shipped SAE (offline)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from selfinterp_plugins.cli_options import (
    COUNT,
    LEARNING_RATE,
    MODEL_HELP,
    SAMPLES,
    SEED,
    TEXT,
    TOKENS,
    FiniteFloat,
    NonBlankPath,
    check_site,
    count,
    load_backend,
    model_option,
)
from selfinterp_plugins.errors import VectorError
from selfinterp_plugins.storage import write_text_atomic

#: SAE widths (and TopK's k): 2**20 latents, the widest SAE-Lens releases; one float32 encoder and
#: decoder of that width over a 2,304-wide model is already ~19 GB
D_SAE = count(2**20)


def parse_features(spec: str | None) -> list[int] | None:
    """'all' / None, '0:100' (a range), or '3,17,42'. A selection of no latent (' ', '5:2') or
    anything else is a one-line error: it used to run, label nothing and exit 0."""
    if spec is None or spec.strip() == "all":
        return None
    text = spec.strip()
    how = "write 'all', a range like '0:100' or a list like '3,17,42' (latent numbers >= 0)"
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) != 2 or not all(p.isdecimal() for p in (parts[0] or "0", parts[1])):
            raise VectorError(f"Cannot read features {spec!r}; {how}.")
        chosen = list(range(int(parts[0] or 0), int(parts[1])))
    else:
        items = [x.strip() for x in text.split(",")]
        if not all(x.isdecimal() for x in items):
            raise VectorError(f"Cannot read features {spec!r}; {how}.")
        chosen = [int(x) for x in items]
    if not chosen:
        raise VectorError(f"Features {spec!r} select no latent; {how}.")
    return chosen


def _sae(path, release=None, sae_id=None):
    from .source import load_sae

    return load_sae(path, release, sae_id)


def sae_options(command):
    """An SAE as SAE-Lens users name one: a directory saved with `sae.save_model` (--sae), or a
    pretrained release and SAE id (--release, --sae-id: `SAE.from_pretrained`, offline from the
    Hugging Face cache)."""
    command = click.option("--sae-id", type=TEXT, default=None, help="SAE id within --release (SAE.from_pretrained)")(command)
    command = click.option("--release", type=TEXT, default=None, help="SAE-Lens pretrained release (with --sae-id)")(command)
    return click.option("--sae", "sae_dir", default=None, type=NonBlankPath(),
                        help="SAE directory (sae.save_model); or --release and --sae-id")(command)


def read_label_records(path) -> list[dict]:
    """Label records from explain / `sae label` JSONL, or from a Neuronpedia explanations file."""
    from selfinterp_plugins.storage import read_jsonl

    path = Path(path)
    rows = read_jsonl(path) if path.suffix == ".jsonl" else []
    if rows and all("label" in r and "id" in r for r in rows):
        return rows
    from .neuronpedia import read_explanations

    return [{"id": str(e.index), "feature": e.index, "scale": 1.0, "label": e.description} for e in read_explanations(path)]


def _save_with_splits(sae, labels: dict[int, str], out, seed: int, extra=None, report=None):
    from .neuronpedia import split_features
    from .source import sae_dataset

    data = sae_dataset(sae, labels, split_features(labels, seed=seed), extra)
    if report:
        data.meta["weak_labels"] = report
    data.save(out)
    counts = {s: sum(r.get("split") == s for r in data.records) for s in ("train", "validation", "test")}
    return {"features": len(data), **counts, "saved": str(out)}


def register(cli):
    @cli.group()
    def sae():
        """SAE-Lens features: datasets, labels in Neuronpedia's format, generation and detection scoring."""

    @sae.command("demo")
    @model_option()
    @click.option("--n", "n_latents", type=COUNT, default=12, show_default=True, help="held-out latents to label")
    def demo(model_name, n_latents):
        """Label held-out latents of the shipped SAE (smollm2-resid6-topk) with the shipped SAE-feature
        explainer (smollm2-sae-features), next to their weak labels (offline, under a minute)."""
        from selfinterp_plugins import Explainer, Sampling
        from selfinterp_plugins.evaluation.scoring import exact_match

        from .shipped import SHIPPED_SAE, SHIPPED_SAE_EXPLAINER, shipped_held_out
        from .source import load_sae

        rows = shipped_held_out()[:n_latents]
        sae_obj = load_sae(SHIPPED_SAE)
        explainer = Explainer.from_pretrained(SHIPPED_SAE_EXPLAINER, model=load_backend(model_name))
        vectors = explainer.prepare_vectors(sae_obj, features=[r["feature"] for r in rows])
        records = explainer.explain(vectors, ids=[str(r["feature"]) for r in rows], sampling=Sampling(max_new_tokens=16),
                                    progress=False)
        named = 0
        click.echo(f"{'latent':>7}  {'weak label':<14}  explainer's label")
        for row, record in zip(rows, records):
            hit = exact_match([dict(record, scale=0.0)], {record["id"]: row["label"]})[0.0] == 1.0
            named += hit
            click.echo(f"{row['feature']:>7}  {row['label']:<14}  {record['label']}{'   <- same' if hit else ''}")
        click.echo(f"same as the weak label on {named} of {len(rows)} held-out latents (weak labels: each latent's "
                   "dominant top-activating word; generation scores and baselines in docs/sae_lens.md)")

    @sae.command("train-sae")
    @model_option()
    @click.option("--site", type=TEXT, default="resid_post.6", show_default=True, help="residual site (or TL hook name)")
    @click.option("--corpus", type=TEXT, default="shakespeare", show_default=True, help="'shakespeare', a directory of .txt, a .txt or .jsonl")
    @click.option("--context", type=TOKENS, default=64, show_default=True, help="tokens per window")
    @click.option("--d-sae", type=D_SAE, default=4608, show_default=True)
    @click.option("--k", type=D_SAE, default=32, show_default=True, help="active latents per token (TopK)")
    @click.option("--tokens", type=COUNT, default=400_000, show_default=True, help="training tokens")
    @click.option("--lr", type=LEARNING_RATE, default=3e-4, show_default=True)
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False))
    def train_sae_cmd(model_name, site, corpus, context, d_sae, k, tokens, lr, seed, out):
        """Train an SAE on the model's activations with SAE-Lens's SAETrainer; saved with save_inference_model."""
        from selfinterp_plugins.models import layer_count

        from .corpus import read_texts, token_windows
        from .sae_training import SAETrainConfig, train_sae

        check_site(site, layer_count(model_name))  # from the config, before the weights load
        backend = load_backend(model_name)
        windows = token_windows(backend.tokenizer, read_texts(corpus), context, seed=seed)
        config = SAETrainConfig(d_sae=d_sae, k=k, total_tokens=tokens, lr=lr, seed=seed)
        sae = train_sae(backend, windows, site, config, out=out, model_name=model_name)
        click.echo(json.dumps({"saved": out, "hook_name": sae.cfg.metadata.hook_name, "d_sae": sae.cfg.d_sae,
                               "reconstruction": sae.cfg.metadata.reconstruction}))

    @sae.command("weak-labels")
    @click.argument("sae_dir", type=NonBlankPath())
    @model_option()
    @click.option("--corpus", type=TEXT, default="shakespeare", show_default=True)
    @click.option("--context", type=TOKENS, default=64, show_default=True)
    @click.option("--windows", "n_windows", type=COUNT, default=2000, show_default=True, help="corpus windows streamed")
    @click.option("--min-share", type=FiniteFloat(min=0, max=1), default=0.5, show_default=True,
                  help="share of top activations the dominant word needs")
    @click.option("--seed", type=SEED, default=1, show_default=True, help="window shuffle (use another than train-sae's) and splits")
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False))
    def weak_labels_cmd(sae_dir, model_name, corpus, context, n_windows, min_share, seed, out):
        """Label latents by their dominant top-activating word; write a dataset split by latent."""
        from .corpus import read_texts, token_windows
        from .weak_labels import top_activations, weak_labels

        backend = load_backend(model_name)
        sae_obj = _sae(sae_dir)
        windows = token_windows(backend.tokenizer, read_texts(corpus), context, limit=n_windows, seed=seed)
        top = top_activations(backend, sae_obj, windows)
        labels, report = weak_labels(top, backend.tokenizer, min_share)
        extra = {i: {"frequency": float(top.frequency[i])} for i in labels}
        click.echo(json.dumps({**_save_with_splits(sae_obj, labels, out, seed, extra, report), "report": report}))

    @sae.command("import-neuronpedia")
    @click.argument("explanations", type=NonBlankPath())
    @sae_options
    @click.option("--model-id", type=TEXT, default=None, help="keep only rows of this Neuronpedia modelId")
    @click.option("--np-sae-id", type=TEXT, default=None, help="keep only rows of this Neuronpedia SAE id (its 'layer' field)")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False))
    def import_neuronpedia(explanations, sae_dir, release, sae_id, model_id, np_sae_id, seed, out):
        """A Neuronpedia export -> a VectorLabelDataset (train / validation / test by latent)."""
        from .neuronpedia import labelled_dataset, read_explanations, split_features

        sae_obj = _sae(sae_dir, release, sae_id)
        rows = read_explanations(explanations)
        splits = split_features([e.index for e in rows], seed=seed)
        data = labelled_dataset(sae_obj, rows, model_id, np_sae_id, splits)
        data.save(out)
        click.echo(json.dumps({"rows": len(data), "latents": len({r["feature"] for r in data.records}),
                               "skipped_other_sae": data.meta["skipped_other_sae"], "saved": out}))

    @sae.command("import-labels")
    @click.argument("labels", type=NonBlankPath())
    @sae_options
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False))
    def import_labels(labels, sae_dir, release, sae_id, out):
        """A selfie-adapters label file (data/goodfire_8b_sae_labels.json.gz of Pepper et al.'s repository)
        -> a VectorLabelDataset of the SAE's decoder rows with the file's train / val split (the paper's
        SAE training set: --release goodfire-llama-3.1-8b-instruct --sae-id layer_19)."""
        from .selfie_labels import selfie_labels_dataset

        data = selfie_labels_dataset(_sae(sae_dir, release, sae_id), labels)
        data.save(out)
        counts = {s: sum(r["split"] == s for r in data.records) for s in ("train", "validation")}
        click.echo(json.dumps({"latents": len(data), **counts, "saved": out}))

    @sae.command("label")
    @click.argument("explainer_dir", type=NonBlankPath())
    @sae_options
    @click.option("--features", type=TEXT, default="all", show_default=True, help="'all', '0:100' or '3,17,42'")
    @model_option()
    @click.option("--scale", "scales", type=FiniteFloat(), multiple=True, default=(1.0,), show_default=True)
    @click.option("--batch-size", type=COUNT, default=64, show_default=True)
    @click.option("--max-new-tokens", type=TOKENS, default=30, show_default=True)
    @click.option("--output", required=True, type=NonBlankPath(dir_okay=False), help="JSONL; a rerun resumes")
    @click.option("--neuronpedia", "np_output", default=None, type=NonBlankPath(dir_okay=False),
                  help="also write the labels as Neuronpedia explanations (.json or .jsonl)")
    @click.option("--model-id", "np_model_id", type=TEXT, default=None,
                  help="Neuronpedia modelId of the export (default: the SAE's neuronpedia_id, else its model's name)")
    @click.option("--np-sae-id", type=TEXT, default=None,
                  help="Neuronpedia SAE id of the export, its rows' 'layer' (default: the SAE's, else "
                       "{layer}-{res|att|mlp}-selfinterp); give each SAE of one hook its own")
    def label(explainer_dir, sae_dir, release, sae_id, features, model_name, scales, batch_size, max_new_tokens, output,
              np_output, np_model_id, np_sae_id):
        """Label an SAE's latents with a trained explainer (EXPLAINER_DIR, or a shipped explainer's name)."""
        import warnings

        from selfinterp_plugins import Explainer, Sampling

        from .labelling import label_features
        from .neuronpedia import check_export_path, neuronpedia_ids

        if np_output is not None:
            check_export_path(np_output)
        elif np_model_id is not None or np_sae_id is not None:
            raise click.UsageError("--model-id and --np-sae-id name the Neuronpedia export; give --neuronpedia FILE too.")

        from .latent_ids import feature_indices

        indices, sae_obj = parse_features(features), _sae(sae_dir, release, sae_id)  # user errors before the model loads
        indices = feature_indices(sae_obj, indices)  # a latent past the SAE's width too
        location = Explainer.check_pretrained(explainer_dir)
        explainer = Explainer.from_pretrained(location, model=load_backend(model_name))
        with warnings.catch_warnings():  # the export's count of empty labels is said in the JSON line instead
            warnings.filterwarnings("ignore", message=".*labels are empty and left out")
            records = label_features(explainer, sae_obj, indices, output, scales, Sampling(max_new_tokens=max_new_tokens),
                                     batch_size, np_output, neuronpedia_model_id=np_model_id, neuronpedia_sae_id=np_sae_id)
        said = {"labels": len(records), "output": output, "neuronpedia": np_output}
        if np_output is not None:
            model_id, built_sae_id = neuronpedia_ids(sae_obj)
            said.update(model_id=np_model_id or model_id, np_sae_id=np_sae_id or built_sae_id,
                        neuronpedia_empty_left_out=sum(not str(r["label"]).strip() for r in records))
        click.echo(json.dumps(said))

    @sae.command("score")
    @click.argument("labels", type=NonBlankPath())
    @sae_options
    @click.option("--scorer", type=click.Choice(["generation", "detection"]), default="generation", show_default=True)
    @model_option(f"subject model (and default writer / judge): {MODEL_HELP}")
    @click.option("--writer-model", type=TEXT, default=None, help="model that writes the conversations (generation; default: the subject)")
    @click.option("--judge-model", type=TEXT, default=None, help="model that judges contexts (detection; default: the subject)")
    @click.option("--samples", type=SAMPLES, default=10, show_default=True, help="conversations per label (generation)")
    @click.option("--max-new-tokens", type=TOKENS, default=100, show_default=True, help="length limit of each conversation (generation)")
    @click.option("--corpus", type=TEXT, default="shakespeare", show_default=True, help="contexts for detection")
    @click.option("--windows", "n_windows", type=COUNT, default=2000, show_default=True)
    @click.option("--drop-echoes", is_flag=True,
                  help="leave samples that repeat the writer's instruction out of their label's hit rate (generation; "
                       "the reference counts them)")
    @click.option("--output", default=None, type=NonBlankPath(dir_okay=False),
                  help="JSONL: one record per sample as it is written (generation; a rerun writes only the missing "
                       "ones), one per label (detection)")
    def score(labels, sae_dir, release, sae_id, scorer, model_name, writer_model, judge_model, samples, max_new_tokens,
              corpus, n_windows, drop_echoes, output):
        """Score the labels in LABELS (explain JSONL or a Neuronpedia file) against the SAE's latents."""
        from .generation_scoring import feature_of
        from .sae_info import sae_info

        sae_obj = _sae(sae_dir, release, sae_id)  # user errors before the model loads
        records = read_label_records(labels)
        if not records:
            from selfinterp_plugins.errors import LabelError

            raise LabelError(f"{labels} holds no label records; score the output of `sae label` or a Neuronpedia export.")
        d_sae = sae_info(sae_obj).d_sae
        features = [feature_of(r, None, d_sae, n) for n, r in enumerate(records, 1)]  # ids that name no latent: refused
        backend = load_backend(model_name)
        if scorer == "generation":
            from .generation_scoring import ConversationWriter, generation_score

            writer = ConversationWriter(load_backend(writer_model) if writer_model else backend, max_new_tokens=max_new_tokens)
            result = generation_score(records, sae_obj, backend, writer, samples, output=output, drop_echoes=drop_echoes)
        else:
            from .corpus import read_texts, token_windows
            from .detection_scoring import ContextPool, ModelJudge, detection_score

            windows = token_windows(backend.tokenizer, read_texts(corpus), 32, limit=n_windows, seed=2)
            pool = ContextPool.build(backend, sae_obj, windows, features)
            judge = ModelJudge(load_backend(judge_model) if judge_model else backend)
            result = detection_score(records, pool, judge, backend.tokenizer)
            if output:
                write_text_atomic(output, "".join(json.dumps(r) + "\n" for r in result["per_label"]))
        click.echo(json.dumps({k: v for k, v in result.items() if k not in ("per_feature", "per_label")}, indent=2))
