"""Neuronpedia explanations in and out.

Neuronpedia publishes feature explanations as JSON (its `/api/explanation/export` endpoint: a list
of objects), JSONL (the bulk dataset exports, `explanations/batch-N.jsonl.gz`) and CSV, one row per
explanation with `modelId`, `layer` (the SAE id, e.g. `6-res-jb`), `index` (the latent, often a
string) and `description`, plus `explanationModelName`, `typeName` and bookkeeping. `read_explanations`
reads any of these (gzipped too); `labelled_dataset` matches them to an SAE's latents, refusing
rows it cannot use instead of dropping them; `write_explanations` writes our labels back in the
same shape, so they can be uploaded or compared with the published ones.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from selfinterp_plugins.errors import ArtifactError, LabelError
from selfinterp_plugins.storage import (
    output_errors,
    parse_json,
    read_bytes,
    write_bytes_atomic,
    write_text_atomic,
)
from selfinterp_plugins.storage.validation import MAX_INFLATED_BYTES, MAX_JSONL_BYTES

EXPORT_URL = "https://www.neuronpedia.org/api/explanation/export?modelId={model}&saeId={sae}"


@dataclass(frozen=True)
class Explanation:
    """One Neuronpedia explanation row, normalised."""

    model_id: str
    sae_id: str
    index: int
    description: str
    explainer: str = ""
    row: int = 0  # 1-based position in the file, for error messages


def _open_text(path: Path, max_bytes: int = MAX_JSONL_BYTES, max_inflated: int = MAX_INFLATED_BYTES) -> str:
    """The file's text: bounded in size, a `.gz` inflated by a bounded read (a 3 MB gzip can inflate
    to gigabytes), every failure an ArtifactError."""
    data = read_bytes(path, max_bytes, max_inflated)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); re-export it as UTF-8.") from None


def _csv_rows(text: str, path: Path) -> list[dict]:
    """CSV rows; a field over the csv module's limit (128 KB: no explanation is that long) or a
    malformed row is an ArtifactError naming the line, not a csv.Error."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        return list(reader)
    except csv.Error as err:
        raise ArtifactError(f"{path} line {reader.line_num + 1} is not valid CSV ({err}); fix or delete that row.") from None


def _rows(path: Path) -> list[dict]:
    text = _open_text(path)
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if kind == "csv":
        return _csv_rows(text, path)
    if kind == "jsonl":
        # lines end at "\n" only (splitlines() also cuts at U+2028, which a JSON string may hold raw)
        return [parse_json(line, f"{path} line {n}") for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if kind == "json":
        data = parse_json(text, path)
        if isinstance(data, dict):
            data = data.get("explanations", data.get("results"))
        if not isinstance(data, list):
            raise ArtifactError(f"{path} holds no list of explanations; expected a JSON list (Neuronpedia's export format).")
        return data
    raise ArtifactError(f"Cannot read {path.name}: Neuronpedia explanations come as .json, .jsonl or .csv (optionally .gz).")


def _field(row: dict, *names):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def parse_row(row, n: int, path) -> Explanation:
    """One file row as an `Explanation`, or a `LabelError` naming the row and what is wrong."""
    where = f"{path} row {n}"
    if not isinstance(row, dict):
        raise LabelError(f"{where} is not an object but {type(row).__name__}; each row needs index and description.")
    index = _field(row, "index", "feature", "featureIndex")
    description = _field(row, "description", "explanation", "label")
    if index is None:
        raise LabelError(f"{where} has no 'index'; every explanation must name its latent.")
    try:
        index = int(str(index).strip())
    except ValueError:
        raise LabelError(f"{where} has index {index!r}, not an integer; fix that row.") from None
    if index < 0:
        raise LabelError(f"{where} has a negative index {index}; fix that row.")
    if not isinstance(description, str) or not description.strip():
        raise LabelError(f"{where} (index {index}) has an empty or missing 'description'; fix or delete that row.")
    return Explanation(model_id=str(_field(row, "modelId", "model_id") or ""), sae_id=str(_field(row, "layer", "saeId", "sae_id") or ""),
                       index=index, description=description.strip(), explainer=str(_field(row, "explanationModelName") or ""), row=n)


def read_explanations(path) -> list[Explanation]:
    """Every explanation in a Neuronpedia export file; a malformed row is an error, never skipped."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"No explanations file at {path}; download Neuronpedia's export for your SAE first.")
    return [parse_row(row, n, path) for n, row in enumerate(_rows(path), 1)]


def labelled_dataset(sae, explanations: list[Explanation], model_id: str | None = None, sae_id: str | None = None,
                     splits: dict[int, str] | None = None):
    """The SAE's features with their explanations as a `VectorLabelDataset`.

    Rows for another model / SAE are left out only when `model_id` / `sae_id` ask for that, and
    counted in `meta["skipped_other_sae"]`; a file mixing SAEs without them is refused. A feature
    with several explanations gives several rows (ids `17`, `17.1`, ...), all kept.
    """
    from .sae_info import sae_info, sae_metadata

    if not explanations:
        raise ArtifactError("The explanations file is empty; export at least one explanation.")
    chosen = [e for e in explanations if (model_id is None or e.model_id == model_id) and (sae_id is None or e.sae_id == sae_id)]
    skipped = len(explanations) - len(chosen)
    if not chosen:
        raise ArtifactError(f"No explanation matches model {model_id!r} / SAE {sae_id!r}; "
                            f"the file has {sorted({(e.model_id, e.sae_id) for e in explanations})[:3]}.")
    sources = sorted({(e.model_id, e.sae_id) for e in chosen})
    if len(sources) > 1:
        raise ArtifactError(f"The file mixes explanations of {len(sources)} SAEs, e.g. {sources[:2]}; pick one with "
                            "model_id= and sae_id= (CLI: --model-id, --np-sae-id).")
    d_sae = sae_info(sae).d_sae
    outside = [e for e in chosen if e.index >= d_sae]
    if outside:
        e = outside[0]
        raise LabelError(f"Row {e.row} explains latent {e.index}, but this SAE has {d_sae} latents "
                         f"({len(outside)} such rows); is this the export of another SAE?")
    seen: dict[int, int] = {}
    records, rows = [], []
    for e in chosen:
        k = seen.get(e.index, 0)
        seen[e.index] = k + 1
        record = {"id": str(e.index) if k == 0 else f"{e.index}.{k}", "feature": e.index, "label": e.description,
                  "explainer": e.explainer}
        if splits and e.index in splits:
            record["split"] = splits[e.index]
        records.append(record)
        rows.append(e.index)
    from selfinterp_plugins.datasets import VectorLabelDataset

    meta = dict(sae_metadata(sae), neuronpedia_model=sources[0][0], neuronpedia_sae=sources[0][1], skipped_other_sae=skipped)
    return VectorLabelDataset(sae.W_dec.detach()[rows].float().cpu(), records, meta)


def split_features(indices, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[int, str]:
    """Features (not rows: all explanations of a latent stay together) assigned to train /
    validation / test, seeded."""
    import random

    indices = sorted(set(int(i) for i in indices))
    random.Random(seed).shuffle(indices)
    n_train = round(fractions[0] * len(indices))
    n_val = round(fractions[1] * len(indices))
    names = ["train"] * n_train + ["validation"] * n_val + ["test"] * (len(indices) - n_train - n_val)
    return dict(zip(indices, names))


#: Neuronpedia's SAE-id kind for each residual / sublayer hook (its ids read `{layer}-{kind}-{set}`)
_NP_KIND = {"hook_resid_pre": "res", "hook_resid_mid": "res", "hook_resid_post": "res", "hook_attn_out": "att",
            "attn.hook_z": "att", "hook_mlp_out": "mlp"}


def neuronpedia_ids(sae, source_set: str = "selfinterp") -> tuple[str, str]:
    """(modelId, SAE id) in Neuronpedia's own form. From the SAE's `neuronpedia_id`
    (`gpt2-small/0-res-jb`) when SAE-Lens knows it; otherwise built as Neuronpedia builds them: the
    model's short lower-case name and `{layer}-{kind}-{set}` (`6-res-selfinterp` for
    `blocks.6.hook_resid_post`), never the hook name, which Neuronpedia's `layer` field does not take."""
    meta = sae.cfg.metadata
    if meta.get("neuronpedia_id"):
        model, _, sae_id = str(meta.get("neuronpedia_id")).partition("/")
        return model, sae_id
    model = str(meta.get("model_name") or "unknown-model").rsplit("/", 1)[-1].lower()
    hook = str(meta.get("hook_name") or "")
    parts = hook.split(".")
    if len(parts) >= 3 and parts[0] == "blocks" and parts[1].isdigit() and ".".join(parts[2:]) in _NP_KIND:
        return model, f"{parts[1]}-{_NP_KIND['.'.join(parts[2:])]}-{source_set}"
    if hook == "hook_embed":
        return model, f"0-embed-{source_set}"
    return model, f"{hook or 'unknown'}-{source_set}"


#: the export formats `write_explanations` writes, each read back by `read_explanations`
EXPORT_SUFFIXES = (".json", ".jsonl")


def check_export_path(path) -> Path:
    """An export file name `read_explanations` reads back as written: `.json` or `.jsonl` (a `.csv`
    or `.gz` name would hold JSON that the reader parses as CSV or gunzips, and refuses)."""
    path = Path(path)
    if path.suffix not in EXPORT_SUFFIXES:
        raise ArtifactError(f"Neuronpedia explanations are written as .json or .jsonl, not {path.name!r}; "
                            f"name the file e.g. {path.stem or 'explanations'}.json.")
    return path


def to_neuronpedia(records, model_id: str, sae_id: str, explanation_model: str) -> list[dict]:
    """Label records (`feature`, or an id naming the latent; label) as Neuronpedia explanation rows,
    in Neuronpedia's own fields only (modelId, layer, index, description, explanationModelName,
    typeName). A label read at a scale other than 1 says so in its explanation model's name
    (`...@scale=2`). An empty label is left out: Neuronpedia has no empty explanation, and
    `read_explanations` refuses one (`write_explanations` counts them)."""
    from .latent_ids import feature_of

    rows = []
    for n, r in enumerate(records, 1):
        description = str(r["label"]).strip()
        if not description:
            continue
        scale = float(r.get("scale", 1.0))
        name = explanation_model if scale == 1.0 else f"{explanation_model}@scale={scale:g}"
        rows.append({"modelId": model_id, "layer": sae_id, "index": str(feature_of(r, None, None, n)),
                     "description": description, "explanationModelName": name, "typeName": "selfinterp"})
    return rows


def write_explanations(records, path, model_id: str, sae_id: str, explanation_model: str) -> Path:
    """Write labels as a Neuronpedia explanations file (.json list, or .jsonl) that reads back through
    `read_explanations`. Empty labels are left out with a warning saying how many; a file that would
    hold none is refused."""
    import warnings

    path = check_export_path(path)
    records = list(records)
    rows = to_neuronpedia(records, model_id, sae_id, explanation_model)
    if records and not rows:
        raise LabelError(f"Every one of the {len(records)} labels is empty; nothing to write to {path}.")
    if len(rows) < len(records):
        warnings.warn(f"{len(records) - len(rows)} of {len(records)} labels are empty and left out of {path} "
                      "(Neuronpedia has no empty explanation).", stacklevel=2)
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        write_text_atomic(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    return path


def fetch_explanations(neuronpedia_id: str, out, timeout: float = 60.0) -> Path:
    """Download an SAE's explanations from Neuronpedia (online users only) into `out` (.json)."""
    import urllib.error
    import urllib.request

    model, _, sae_id = neuronpedia_id.partition("/")
    if not sae_id:
        raise ArtifactError(f"A Neuronpedia id looks like 'gpt2-small/0-res-jb', not {neuronpedia_id!r}.")
    try:
        with urllib.request.urlopen(EXPORT_URL.format(model=model, sae=sae_id), timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError) as err:
        raise ArtifactError(f"Could not reach Neuronpedia ({err}); download the export on a machine online and pass the file.") from None
    out = Path(out)
    with output_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data)
    return out
