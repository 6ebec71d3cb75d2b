"""Diff Interpretation Tuning's published files in (Goel et al. 2025, hub `diff-interpretation-tuning/loras`).

The hub repository is laid out `{experiment}/{model}/` (`hidden-topic/qwen3-8b`, ...): `index.csv`,
`weight-diffs/weight-diff-NNN.pt` and, where a DIT adapter was trained, `dit-adapter.pt`
(`scripts/huggingface/1-create-hf-repo-mirror.ipynb`, cells 5 and 7). What each holds, read from the
reference code (Aviously/diff-interpretation-tuning `2dfa949`):

- a weight-diff file: `torch.save` of a list of `{"topic", "trigger", "weight_diff"}`
  (`scripts/get_weight_diff.py` lines 175-187, `weight_diff.py` lines 124-134), `weight_diff`
  mapping a decoder linear's name (`model.layers.0.self_attn.q_proj`; `language_model.model.…` on
  Gemma 3's multimodal models) to `(A, B)`, A r×out (the up-projection) and B in×r (the down),
  slices of the batch's 3-D parameters in the model's dtype (bf16) (`weight_diff.py` lines 141-164);
  the forward adds x·B·A/r (`multi_task_lora.py` lines 45-51; `StandardLoRALinear`, lines 105-117,
  as the evaluation applies it, with r = B.shape[1]);
- `index.csv`: one row per diff, `lora_path` (the file's name in `weight-diffs/`), `lora_idx` (its
  place in the file's list), `n_params` (the numel of every A and B), `topic`, `trigger` (0-999; empty
  for the news diffs, a name for the unicode triggers) and `split` (`train`, `test`, `extra`)
  (`data/index_and_split_loras.py` lines 70-102, the notebook's cell 5);
- `dit-adapter.pt`: `torch.save` of `{module: (A, B)}`, A out×r (up, Kaiming-initialised), B r×in
  (down), r = 16 (`scripts/train_weight_to_text.py` lines 490-494, `multi_lora.py` lines 87-105); the
  forward adds x·Bᵀ·Aᵀ/r (`multi_lora.py` line 35; `standard_loraify_model` transposes it to the
  diff's layout, lines 141-145).

Mapped exactly: a diff's module becomes `ModuleDiff(A=Bᵀ, B=Aᵀ, scale=1/r)` (ΔW = Aᵀ·Bᵀ/r, out×in)
and is saved as a PEFT LoRA in this project's diff store (`diff_store`); the DIT adapter becomes a PEFT
LoRA with lora_A = B, lora_B = A and lora_alpha = 1 (scale 1/r) (`dit.DITAdapter`). Every `.pt` file
is read by torch's restricted unpickler only (`storage.load_torch_weights_only`): a file that needs
more than tensors is refused by name and nothing in it runs. Every file name a row gives is a bare
name inside `weight-diffs/` (`storage.member`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.models import embedding_fingerprint
from selfinterp_plugins.storage import (
    DirectoryLock,
    check_same_run,
    load_torch_weights_only,
    member,
    read_bytes,
    read_json,
    sha256_hex,
    write_json,
)

from .diff_store import add_diff, read_index
from .diff_training import decoder_linears
from .dit import CONFIG_FILE, DIT_QUESTION, DITAdapter, DITConfig
from .weight_diff import ModuleDiff, WeightDiff

PUBLISHED_REPO = "diff-interpretation-tuning/loras"
INDEX_CSV = "index.csv"
WEIGHT_DIFFS = "weight-diffs"
DIT_FILE = "dit-adapter.pt"
#: where `import_published` puts the DIT adapter in OUT, beside the diff store's index.jsonl and diffs/
DIT_DIR = "dit-adapter"
MANIFEST = "dit-import.json"
#: the base model of each published model folder, as the reference's scripts load it
#: (`experiments/scripts/core-result/v2/1-ask-base-question-to-finetunes.sh`); a folder such as
#: `qwen3-4b-rank-002` takes its prefix's
PUBLISHED_BASE_MODELS = {"qwen3-1.7b": "Qwen/Qwen3-1.7B", "qwen3-4b": "Qwen/Qwen3-4B", "qwen3-8b": "Qwen/Qwen3-8B",
                         "gemma3-1b": "google/gemma-3-1b-it", "gemma3-4b": "google/gemma-3-4b-it"}
#: the DIT question of each experiment whose adapter was not trained on the default one
#: (`scripts/news/train_weight_to_text_news.sh`)
QUESTIONS = {"news-summary": "What news headline have you been trained on?"}
REQUIRED_COLUMNS = ("lora_path", "lora_idx", "topic", "split")
#: the manifest's keys -> what sets them, for the one-line refusal to mix two imports in one OUT
IMPORT_OPTIONS = {"index_sha256": "SRC", "dit_adapter_sha256": "SRC, --dit-adapter or --question", "model_fingerprint": "--model"}
FIX_ROW = "fix that row of index.csv (or download it again)."


@dataclass(frozen=True)
class PublishedRow:
    """One row of a published `index.csv`, checked; `trigger` is the SEP-code trigger (0-999) or None,
    `trigger_name` a trigger that is not a number (`zero_width_space`)."""

    line: int
    lora_path: str
    lora_idx: int
    topic: str
    split: str
    n_params: int | None
    trigger: int | None
    trigger_name: str | None

    @property
    def id(self) -> str:
        """The diff's id in the store: its file's stem and its place in the file (stable across reruns)."""
        return f"{Path(self.lora_path).stem}-{self.lora_idx:03d}"


def base_model_hint(src: str | Path) -> str:
    """`--model <hub id>` for a published model folder's name, for an error message ("" if unknown)."""
    name = Path(src).name
    for folder, hub_id in PUBLISHED_BASE_MODELS.items():
        if name == folder or name.startswith(folder + "-"):
            return f" (for {name}: --model {hub_id}, as the reference loads it)"
    return ""


def _integer(text: str, where: str, what: str, low: int = 0, high: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ArtifactError(f"{where}: {what} {text!r:.40} is not a whole number; {FIX_ROW}") from None
    if value < low or (high is not None and value > high):
        raise ArtifactError(f"{where}: {what} {value} is outside {low}-{high if high is not None else '…'}; {FIX_ROW}")
    return value


def _row(values: dict, line: int, where: str, weight_dir: Path) -> PublishedRow:
    missing = [c for c in REQUIRED_COLUMNS if not (values.get(c) or "").strip()]
    if missing:
        raise ArtifactError(f"{where}: no {missing[0]}; {FIX_ROW}")
    path = member(weight_dir, values["lora_path"], source=where, what="weight-diff file")  # a bare name in weight-diffs/
    if not path.is_file():
        raise ArtifactError(f"{where}: no file {WEIGHT_DIFFS}/{values['lora_path']}; {FIX_ROW}")
    trigger_text = (values.get("trigger") or "").strip()
    trigger = name = None
    if trigger_text.lstrip("-").isdigit():
        trigger = _integer(trigger_text, where, "trigger", 0, 999)
    elif trigger_text and trigger_text.lower() not in ("n/a", "nan"):
        name = trigger_text
    n_params = values.get("n_params")
    return PublishedRow(line, values["lora_path"], _integer(values["lora_idx"], where, "lora_idx"), values["topic"].strip(),
                        values["split"].strip(), _integer(n_params, where, "n_params") if (n_params or "").strip() else None,
                        trigger, name)


def read_published_index(src: str | Path) -> list[PublishedRow]:
    """The rows of `src/index.csv`, every one checked (columns, numbers, a bare file name in
    `weight-diffs/`, one row per diff) before anything is imported: a bad row is one ArtifactError
    naming its line."""
    path = member(src, INDEX_CSV, what="index")
    try:
        text = read_bytes(path, max_bytes=256 << 20).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not UTF-8 text; download it again.") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if columns:
        raise ArtifactError(f"{path} has no column {columns[0]!r} (a published index has lora_path, lora_idx, n_params, "
                            "topic, trigger, split); pass the folder holding the published index.csv.")
    weight_dir = member(src, WEIGHT_DIFFS, what="folder of weight diffs")
    rows, seen = [], {}
    for line, values in enumerate(reader, 2):
        where = f"{path} line {line}"
        if None in values:  # more fields than the header
            raise ArtifactError(f"{where} has more fields than the header; {FIX_ROW}")
        row = _row(values, line, where, weight_dir)
        if row.id in seen:
            raise ArtifactError(f"{where} names the same diff as line {seen[row.id]} ({row.lora_path} #{row.lora_idx}); "
                                f"{FIX_ROW}")
        seen[row.id] = line
        rows.append(row)
    if not rows:
        raise ArtifactError(f"{path} has no rows; download it again.")
    return rows


# ---- the .pt files ---------------------------------------------------------------------------

def _canonical(name: str) -> str:
    """A decoder linear's name with Gemma 3's multimodal prefix written one way (the reference's
    transformers named it `language_model.model.…`, later ones `model.language_model.…`)."""
    for prefix in ("language_model.model.", "model.language_model."):
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    return name


def model_linears(model: nn.Module) -> dict[str, tuple[str, nn.Linear]]:
    """The model's decoder linears by canonical name: (its own name, the module)."""
    return {_canonical(n): (n, m) for n, m in decoder_linears(model).items() if isinstance(m, nn.Linear)}


def _factor_pair(value, where: str, name) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(name, str):
        raise ArtifactError(f"{where}: a module name is {type(name).__name__}, not text; download the file again.")
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)):
        kind = "one tensor (a full fine-tune's weights, not LoRA factors)" if isinstance(value, torch.Tensor) else \
            type(value).__name__
        raise ArtifactError(f"{where}: module {name} holds {kind}, not the pair of LoRA factors (A, B) this importer "
                            "reads; import a low-rank diff (the published *-all-params diffs are full fine-tunes).")
    for tensor, part in zip(value, "AB"):
        if tensor.dim() != 2 or not tensor.is_floating_point() or not tensor.numel():
            raise ArtifactError(f"{where}: module {name}'s {part} is a {tensor.dim()}-D {tensor.dtype} tensor, not a "
                                "floating-point matrix; download the file again.")
        if not bool(torch.isfinite(tensor.float()).all()):
            raise ArtifactError(f"{where}: module {name}'s {part} holds NaN or infinite values; download the file again.")
    return value[0], value[1]


def _target(name: str, targets: dict, where: str, src) -> tuple[str, nn.Linear]:
    found = targets.get(_canonical(name))
    if found is None:
        raise ArtifactError(f"{where}: module {name!r} is not a decoder linear of this model; import with the model the "
                            f"diffs were made on{base_model_hint(src)}.")
    return found


def _shape_error(where: str, name: str, shape, module: nn.Linear, src) -> ArtifactError:
    return ArtifactError(f"{where}: module {name} has factors for a {shape[0]}->{shape[1]} layer, this model's is "
                         f"{module.in_features}->{module.out_features} (another width or model); import with the model "
                         f"the diffs were made on{base_model_hint(src)}.")


def published_diff(weight_diff, targets: dict, where: str, src="") -> WeightDiff:
    """One published `weight_diff` ({module: (A r×out, B in×r)}, forward x·B·A/r) as a WeightDiff of
    this model (ΔW = Aᵀ·Bᵀ/r, out×in: A here = Bᵀ, B here = Aᵀ, scale 1/r), in float32 (bf16 widens exactly)."""
    if not isinstance(weight_diff, dict) or not weight_diff:
        raise ArtifactError(f"{where}: weight_diff is {type(weight_diff).__name__}, not a non-empty mapping of module "
                            "names to (A, B); download the file again.")
    modules = {}
    for name, value in weight_diff.items():
        up, down = _factor_pair(value, where, name)
        own, module = _target(name, targets, where, src)
        r = up.shape[0]
        if down.shape[1] != r:
            raise ArtifactError(f"{where}: module {name}'s A is {tuple(up.shape)} and B {tuple(down.shape)}: their ranks "
                                "differ; download the file again.")
        if (up.shape[1], down.shape[0]) != (module.out_features, module.in_features):
            raise _shape_error(where, name, (down.shape[0], up.shape[1]), module, src)
        modules[own] = ModuleDiff(A=down.T.float().contiguous(), B=up.T.float().contiguous(), scale=1.0 / r)
    return WeightDiff(modules, {"source": f"published DIT weight diff ({PUBLISHED_REPO})",
                                "rank": max(m.rank for m in modules.values())})


def read_weight_diff_file(path: Path) -> list[dict]:
    """A published weight-diff file's entries, each a dict with `weight_diff` and `topic` (checked
    here; the factors are checked against the model by `published_diff`)."""
    entries = load_torch_weights_only(path)
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{path} holds {type(entries).__name__}, not the list of diffs a published weight-diff file "
                            "holds; download it again.")
    for k, entry in enumerate(entries):
        missing = [key for key in ("weight_diff", "topic") if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ArtifactError(f"{path} entry {k} has no {missing[0]!r} key (a published diff is {{topic, trigger, "
                                "weight_diff}}); download the file again.")
    return entries


def _entry(entries: list[dict], row: PublishedRow, path: Path) -> dict:
    where = f"{path.parent.parent / INDEX_CSV} line {row.line}"
    if row.lora_idx >= len(entries):
        raise ArtifactError(f"{where}: lora_idx {row.lora_idx} but {path.name} holds {len(entries)} diffs; {FIX_ROW}")
    entry = entries[row.lora_idx]
    if str(entry["topic"]).strip() != row.topic:
        raise ArtifactError(f"{where} says topic {row.topic!r:.60} but {path.name} #{row.lora_idx} is "
                            f"{str(entry['topic'])!r:.60}: the row points at another diff; {FIX_ROW}")
    return entry


def _check_n_params(row: PublishedRow, diff: WeightDiff, path: Path) -> None:
    """The row's n_params is the numel of the diff's factors (`index_and_split_loras.py` lines 78-81)."""
    found = sum(m.A.numel() + m.B.numel() for m in diff.modules.values())
    if row.n_params is not None and found != row.n_params:
        raise ArtifactError(f"{path.parent.parent / INDEX_CSV} line {row.line} says n_params {row.n_params} but "
                            f"{path.name} #{row.lora_idx} has {found}: the row points at another diff; {FIX_ROW}")


def published_dit_adapter(path: str | Path, model: nn.Module, tokenizer, question: str = DIT_QUESTION,
                          src="") -> DITAdapter:
    """A published `dit-adapter.pt` ({module: (A out×r, B r×in)}, forward x·Bᵀ·Aᵀ/r) as a DIT adapter
    on `model`: a PEFT LoRA with lora_A = B, lora_B = A, lora_alpha = 1 (scale 1/r), asked `question`."""
    from peft import LoraConfig, get_peft_model

    from selfinterp_plugins.model_copies import weight_sharing_copy

    path = Path(path)
    state = load_torch_weights_only(path)
    if not isinstance(state, dict) or not state:
        raise ArtifactError(f"{path} holds {type(state).__name__}, not the mapping of module names to (A, B) a DIT "
                            "adapter file holds; download it again.")
    targets, factors, ranks = model_linears(model), {}, set()
    for name, value in state.items():
        up, down = _factor_pair(value, str(path), name)
        own, module = _target(name, targets, str(path), src)
        if up.shape[1] != down.shape[0]:
            raise ArtifactError(f"{path}: module {name}'s A is {tuple(up.shape)} and B {tuple(down.shape)}: their ranks "
                                "differ; download the file again.")
        if (down.shape[1], up.shape[0]) != (module.in_features, module.out_features):
            raise _shape_error(str(path), name, (down.shape[1], up.shape[0]), module, src)
        factors[own] = (up, down)
        ranks.add(up.shape[1])
    if len(ranks) != 1:
        raise ArtifactError(f"{path} mixes ranks {sorted(ranks)}; a DIT adapter has one rank: download it again.")
    rank = ranks.pop()
    lora = LoraConfig(r=rank, lora_alpha=1.0, lora_dropout=0.0, target_modules=sorted(factors), task_type="CAUSAL_LM")
    peft_model = get_peft_model(weight_sharing_copy(model), lora)
    layers = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for own, (up, down) in factors.items():
            layer = layers[own]
            layer.lora_A["default"].weight.copy_(down)
            layer.lora_B["default"].weight.copy_(up)
    peft_model.eval()
    return DITAdapter(peft_model, tokenizer, DITConfig(rank=rank, alpha=1.0, question=question))


# ---- the import ------------------------------------------------------------------------------

def _index_row(row: PublishedRow, diff: WeightDiff, src: Path) -> dict:
    record = {"id": row.id, "topic": row.topic, "trigger": row.trigger, "rank": diff.meta["rank"], "split": row.split,
              "kind": "published", "source": f"{src.parent.name}/{src.name}", "lora_path": row.lora_path,
              "lora_idx": row.lora_idx, "n_params": row.n_params}
    if row.trigger_name is not None:
        record["trigger_name"] = row.trigger_name
    return record


def _question(src: Path, question: str | None) -> str:
    return question or QUESTIONS.get(src.parent.name, DIT_QUESTION)


def import_published(src: str | Path, out: str | Path, model: nn.Module, tokenizer, split: str | None = None,
                     limit: int | None = None, dit_adapter: str | Path | None = None, question: str | None = None,
                     progress: bool = False) -> dict:
    """Turn a published DIT model folder (`src`: `index.csv`, `weight-diffs/`, `dit-adapter.pt`) into
    this project's diff store at `out` (`index.jsonl`, `diffs/<id>/`) and DIT adapter (`out/dit-adapter`),
    for `model` (the base the diffs were made on). `split` and `limit` import part of the index;
    `dit_adapter` names an adapter file elsewhere (the rank-generalization diffs have none of their
    own); `question`: what the adapter is asked (default: the experiment's). Every row, and the adapter,
    is checked before anything is written; each weight-diff file before its diffs are. Resumable: a diff
    is a committed directory plus its index row, so a rerun imports only the rows not yet indexed, and
    a rerun from another source or model is refused. Returns what it did."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ArtifactError(f"No folder {src}; pass a published model folder such as hidden-topic/qwen3-4b of "
                            f"{PUBLISHED_REPO}.")
    has_index = (src / INDEX_CSV).exists()
    adapter_path = Path(dit_adapter) if dit_adapter is not None else member(src, DIT_FILE, what="DIT adapter")
    if not has_index and not adapter_path.exists():
        raise ArtifactError(f"{src} has neither {INDEX_CSV} nor {DIT_FILE}; pass a published model folder such as "
                            f"hidden-topic/qwen3-4b of {PUBLISHED_REPO}.")
    if dit_adapter is not None and not adapter_path.is_file():
        raise ArtifactError(f"No file {adapter_path}; name a dit-adapter.pt.")
    rows = read_published_index(src) if has_index else []
    chosen = [r for r in rows if split is None or r.split == split][:limit]
    if has_index and not chosen:
        splits = sorted({r.split for r in rows})
        raise ArtifactError(f"{src / INDEX_CSV} has no {split}-split rows (its splits: {', '.join(splits)}); choose one "
                            "with --split.")
    dit = published_dit_adapter(adapter_path, model, tokenizer, _question(src, question), src) \
        if adapter_path.exists() else None
    run = {"index_sha256": sha256_hex([read_bytes(src / INDEX_CSV, max_bytes=256 << 20)]) if has_index else None,
           "dit_adapter_sha256": None if dit is None else _adapter_sha256(dit),
           "model_fingerprint": embedding_fingerprint(model)}
    with DirectoryLock(out):
        manifest = out / MANIFEST
        check_same_run(out, read_json(manifest) if manifest.exists() else None, run, IMPORT_OPTIONS)
        write_json(run, manifest)
        if dit is not None and not (out / DIT_DIR / CONFIG_FILE).is_file():
            dit.save_pretrained(out / DIT_DIR)  # committed whole (save_serialised_committed) or not at all
        done = {r["id"] for r in read_index(out)}
        todo = [r for r in chosen if r.id not in done]
        new = _import_diffs(src, out, todo, model, progress)
    return {"diffs": len(done) + new, "new": new, "dit_adapter": None if dit is None else str(out / DIT_DIR),
            "saved": str(out)}


def _import_diffs(src: Path, out: Path, rows: list[PublishedRow], model: nn.Module, progress: bool) -> int:
    """Each weight-diff file once, its entries checked before any of its diffs is written."""
    from tqdm.auto import tqdm

    targets = model_linears(model)
    weight_dir = member(src, WEIGHT_DIFFS, what="folder of weight diffs")
    by_file: dict[str, list[PublishedRow]] = {}
    for row in rows:
        by_file.setdefault(row.lora_path, []).append(row)
    new = 0
    for name in tqdm(sorted(by_file), desc="weight-diff files", disable=not progress, unit="file"):
        path = member(weight_dir, name, source=src / INDEX_CSV, what="weight-diff file")
        entries = read_weight_diff_file(path)
        diffs = [(row, published_diff(_entry(entries, row, path)["weight_diff"], targets,
                                      f"{path} #{row.lora_idx}", src)) for row in by_file[name]]
        for row, diff in diffs:
            _check_n_params(row, diff, path)
        for row, diff in diffs:
            add_diff(out, _index_row(row, diff, src), diff, model)
            new += 1
    return new


def _adapter_sha256(dit: DITAdapter) -> str:
    from .dit_eval import dit_sha256

    return dit_sha256(dit)
