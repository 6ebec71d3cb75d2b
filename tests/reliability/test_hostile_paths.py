"""An artifact cannot reach outside its directory, whatever its files say.

Each kind of artifact the library reads (explainers, datasets, training checkpoints, explain
outputs and their manifests, JSON and JSONL outputs, the plugins' DIT adapters, LoRA explainers,
weight diffs, trained SAEs and diff stores) is saved once, then copied and tampered with the way a
stranger's download could be:
- every field of every JSON record it holds set to a path to a file outside (absolute, and `..`
  relative), and every file name a record gives also set to a path through a sub-folder;
- every file replaced by a symlink to a file outside;
- a symlink, or a hard link, planted where a save writes (the lock file, each file's temporary
  and staged names, the scratch folder) or at a sub-folder it writes into.
Then the library loads it and saves a new artifact over it. Outside the artifact, a sentinel tree
holds a file of every name the artifact has (the target of every planted path and link): it must be
byte for byte what it was, and no file may appear beside it. Loading must not write to the artifact
either, and a refusal must be a `SelfInterpError` (one line with the fix), never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset
from selfinterp_plugins.errors import SelfInterpError
from selfinterp_plugins.storage._locks import LOCK_FILE

from artifact_kinds import KINDS, Kind, make_kind

# ---- the extra kinds: outputs the library resumes into ------------------------------------------


def _explain_output_kind(model, tok) -> Kind:
    """An explain output (labels.jsonl + labels.jsonl.run.json), resumed by a second explain run."""
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    vectors = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    short = Sampling(max_new_tokens=2)

    def make_old(d):
        d.mkdir(parents=True, exist_ok=True)
        explainer.explain(vectors[:2], output=d / "labels.jsonl", sampling=short, progress=False)

    def save_new(d):  # the resume: reads the manifest and the records, appends the third
        explainer.explain(vectors, output=d / "labels.jsonl", sampling=short, progress=False)

    def load(d):
        from selfinterp_plugins.storage import read_jsonl

        return read_jsonl(d / "labels.jsonl")

    return Kind("explain output", make_old, save_new, load)


def _training_run_kind(model, tok) -> Kind:
    """A `train --out` directory (train_log.jsonl, checkpoint/state.json and its weights), resumed."""
    from selfinterp_plugins import TrainConfig

    data = VectorLabelDataset(torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(1)),
                              [{"label": w} for w in ("dog", "cat", "sun", "sea")])

    def train(d, epochs):
        Explainer.create(model, tok).train(data, config=TrainConfig(epochs=epochs, batch_size=2), output_dir=d,
                                           progress=False)

    def load(d):
        from selfinterp_plugins.training import _checkpoint_files, _read_state

        ckpt = d / "checkpoint"
        return sorted(p.name for p in _checkpoint_files(ckpt, _read_state(ckpt)).values())

    return Kind("training run", lambda d: train(d, 1), lambda d: train(d, 2), load)


def _diff_store_kind(model) -> Kind:
    """A diff store (index.jsonl + diffs/<id>/), as `dit make-diffs` writes and `dit train` reads it."""
    pytest.importorskip("peft")
    from selfinterp_peft.diff_store import add_diff, load_diffs, read_index
    from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff

    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    weight = model.get_submodule(name).weight

    def diff(seed):
        g = torch.Generator().manual_seed(seed)
        return WeightDiff({name: ModuleDiff(A=torch.randn(2, weight.shape[1], generator=g),
                                            B=torch.randn(weight.shape[0], 2, generator=g), scale=1.0)})

    def make_old(d):
        add_diff(d, {"id": "d0", "topic": "dog", "split": "train"}, diff(0), model)

    def save_new(d):
        add_diff(d, {"id": "d1", "topic": "cat", "split": "train"}, diff(1), model)

    def load(d):
        rows = read_index(d)
        return [sorted(m.modules) for m in load_diffs(d, rows)]

    return Kind("diff store", make_old, save_new, load)


ALL_KINDS = [*KINDS, "explain output", "training run", "diff store"]


@pytest.fixture(params=ALL_KINDS)
def kind(request, tiny_llama, tmp_path_factory) -> Kind:
    extra = {"explain output": lambda: _explain_output_kind(*tiny_llama),
             "training run": lambda: _training_run_kind(*tiny_llama),
             "diff store": lambda: _diff_store_kind(tiny_llama[0])}
    if request.param in extra:
        return extra[request.param]()
    return make_kind(request.param, tiny_llama, tmp_path_factory)


# ---- the tampering ---------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root` (links not followed): a file's bytes, a link's target, a folder."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "folder"
            else:
                found[key] = path.read_bytes()
    return found


def make_sentinel(root: Path, names: set[str]) -> None:
    """A file of every name the artifact has (and each name's staged and temporary forms), with
    content no save would write, plus a folder of every sub-folder name."""
    for name in sorted(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"sentinel {name}\n".encode())


def _leaves(value, where=()):
    """(key path, value) of each leaf of a JSON value; a list of numbers is one leaf (a vector)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*where, key))
    elif isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
        for i, item in enumerate(value):
            yield from _leaves(item, (*where, i))
    else:
        yield where, value


def _set(value, where, new):
    if not where:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = new
    return copy


def _records(d: Path):
    """(relative path, parsed JSON, is_jsonl) of every JSON record file in the artifact."""
    for path in sorted(d.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            if path.suffix == ".jsonl":
                rows = []
                for line in text.splitlines():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:  # a torn tail (a crashed run's): not a record
                        continue
                if rows:
                    yield path.relative_to(d), rows, True
            else:
                yield path.relative_to(d), json.loads(text), False


def _write_record(path: Path, value, jsonl: bool) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in value) if jsonl else json.dumps(value))


def variants(pristine: Path, sentinel: Path, depth: int):
    """(name, tamper(d)) for each way a stranger's copy of `pristine` may point outside it. `d` is
    `depth` folders below the directory holding `sentinel`, for the `..` paths."""
    files = {p.relative_to(pristine) for p in pristine.rglob("*") if p.is_file()}
    up = "../" * depth + sentinel.name

    for rel, value, jsonl in _records(pristine):
        for where, leaf in _leaves(value):
            targets = [str(sentinel / (leaf if isinstance(leaf, str) and Path(leaf).name == leaf and leaf else rel.name))]
            names_a_file = isinstance(leaf, str) and any(leaf == f.name or leaf.startswith(f.name.split(".")[0] + ".")
                                                         for f in files)
            if names_a_file or (where and str(where[-1]).endswith(("_file", "id", "path", "dir"))):
                name = leaf if isinstance(leaf, str) and leaf else rel.name
                targets += [f"{'../' * (len(rel.parts) - 1)}{up}/{name}", f"sub/../{up}/{name}", f"{sentinel}/../{sentinel.name}/{name}"]
            for target in targets:
                def tamper(d, rel=rel, value=value, where=where, target=target, jsonl=jsonl):
                    _write_record(d / rel, _set(value, where, target), jsonl)
                yield f"{rel}:{'.'.join(map(str, where))}={target}", tamper

        # the reported attack: a record naming a *staged* file whose usual name climbs out of the
        # temporary folder a load copies committed files into (/tmp/selfinterp-committed-x/../../P is /P),
        # with the payload planted inside the artifact where the staged name resolves (.next../.. is d)
        if isinstance(value, dict):
            for key in [k for k in value if k.endswith("_file") and f"{k[:-5]}_sha256" in value]:
                inside = str(sentinel / value[key]).lstrip("/")

                def escape(d, rel=rel, value=value, key=key, inside=inside, jsonl=jsonl):
                    (d / ".next..").mkdir()
                    (d / inside).parent.mkdir(parents=True, exist_ok=True)
                    (d / inside).write_bytes(b"payload")
                    _write_record(d / rel, {**value, key: ".next../../" + inside}, jsonl)
                yield f"{rel}:{key} staged, escaping the copy", escape

    for rel in sorted(files):
        def link(d, rel=rel):
            (d / rel).unlink()
            (d / rel).symlink_to(sentinel / rel.name)
        yield f"{rel} -> outside", link

    folders = sorted({p.relative_to(pristine) for p in pristine.rglob("*") if p.is_dir()})
    for rel in folders:
        for target in (sentinel, sentinel / "void"):  # a folder of the artifact's names, and an empty one
            def link_folder(d, rel=rel, target=target):
                shutil.rmtree(d / rel)
                (d / rel).symlink_to(target, target_is_directory=True)
            yield f"{rel}/ -> {target.name}", link_folder

    planted = {LOCK_FILE, ".saving"}
    for rel in files:
        stem, dot, ext = rel.name.partition(".")
        planted |= {f"{rel.name}.tmp", f"{stem}.next{dot}{ext}", f"{stem}.next{dot}{ext}.tmp"}
    for folder in [Path("."), *folders]:
        for name in sorted(planted):
            def plant(d, where=folder / name, name=name):
                if (d / where).exists() or (d / where).is_symlink():
                    return
                (d / where).symlink_to(sentinel / name, target_is_directory=name == ".saving")
            yield f"{folder / name} planted -> outside", plant

        def hard_lock(d, folder=folder):
            os.link(sentinel / LOCK_FILE, d / folder / LOCK_FILE)
        yield f"{folder / LOCK_FILE} hard link -> outside", hard_lock


def _attempt(action, d: Path, what: str, failures: list[str]) -> None:
    try:
        action(d)
    except SelfInterpError as err:
        assert "\n" not in str(err).strip(), f"{what}: a multi-line refusal: {err}"
    except Exception as err:  # noqa: BLE001 - a refusal must be a SelfInterpError; gathered, reported together
        failures.append(f"{what}: {type(err).__name__}: {str(err)[:160]}")


def test_no_tampered_artifact_reaches_outside_itself(kind, tmp_path):
    pristine = tmp_path / "pristine"
    kind.make_old(pristine)
    sentinel = tmp_path / "sentinel"
    names = {p.name for p in pristine.rglob("*")}
    names |= {LOCK_FILE, ".saving"} | {f"{n}.tmp" for n in names}
    for n in list(names):
        stem, dot, ext = n.partition(".")
        names |= {f"{stem}.next{dot}{ext}", f"{stem}.next{dot}{ext}.tmp"}
    make_sentinel(sentinel, names)
    (sentinel / ".saving").unlink()
    (sentinel / ".saving").mkdir()
    (sentinel / ".saving" / "keep").write_text("sentinel")
    (sentinel / "void").mkdir()
    before = snapshot(tmp_path / "sentinel")

    failures: list[str] = []
    count = 0
    for n, (name, tamper) in enumerate(variants(pristine, sentinel, depth=2)):
        d = tmp_path / "work" / str(n)
        shutil.copytree(pristine, d, symlinks=True)
        tamper(d)
        tampered = snapshot(d)
        _attempt(kind.load, d, f"load [{name}]", failures)
        assert snapshot(d) == tampered, f"loading [{name}] wrote to the artifact"
        _attempt(kind.save_new, d, f"save over [{name}]", failures)
        assert snapshot(sentinel) == before, f"[{name}] changed a file outside the artifact"
        assert sorted(os.listdir(tmp_path)) == ["pristine", "sentinel", "work"], f"[{name}] wrote beside it"
        shutil.rmtree(d)
        count += 1
    assert count > len(list(pristine.rglob("*"))), "fewer tamperings than files"
    assert not failures, f"{len(failures)} of {2 * count} attempts failed with a traceback:\n" + "\n".join(failures[:40])
