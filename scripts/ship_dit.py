"""Build the DIT adapter shipped with the PEFT plugin from a trained run, with the first held-out
diffs to try it on, in bfloat16 (half the bytes), refusing to write unless the bfloat16 copy
answers exactly as the float32 run does.

    python scripts/ship_dit.py --dit runs/dit/dit-ref-long2 --diffs runs/dit/diffs-ref --n 8 \
        --out integrations/selfinterp_peft/data/dit/smollm2-hidden-topics [--check 32]

`--check K` compares the answers on the first K held-out diffs (all 32: identical, 24 s); the
shipped diffs are the first `--n` held-out diffs in index order (not chosen by their answers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from selfinterp_peft.diff_store import INDEX, diff_dir, read_index
from selfinterp_peft.dit import DITAdapter
from selfinterp_peft.weight_diff import WeightDiff
from selfinterp_plugins.models import load_model
from selfinterp_plugins.storage import committed_files, record_free
from selfinterp_plugins.storage._commits import STAGED_SUFFIX

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the config names the base by hub id; it is never loaded from there


def bf16_copy(src: Path, dst: Path, record_file: str) -> None:
    """The artifact in `src` as committed (its record in `record_file` says which files; one saved
    before records is its usual files), weights in bfloat16, the config without the record (the
    copy's digests would not be the float32 files')."""
    raw = json.loads((src / record_file).read_text()) if (src / record_file).is_file() else {}
    committed = committed_files(src, raw)
    names = {f.name for f in src.iterdir() if f.is_file() and not f.name.startswith(".") and STAGED_SUFFIX + "." not in f.name}
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(names | set(committed)):
        f = committed.get(name, src / name)
        if f.suffix == ".safetensors":
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items()}, str(dst / name))
        elif name == record_file:
            (dst / name).write_text(json.dumps(record_free(raw), indent=2) + "\n")
        elif name == "adapter_config.json":
            config = json.loads(f.read_text())
            config["base_model_name_or_path"] = HUB_ID
            (dst / name).write_text(json.dumps(config, indent=2) + "\n")
        elif f.suffix == ".json":
            shutil.copy(f, dst / name)


def answers(dit_dir: Path, diffs_root: Path, rows: list[dict]) -> list[str]:
    model, tok = load_model("smollm2-135m-instruct")  # a fresh model per adapter: one run cannot touch the other
    dit = DITAdapter.from_pretrained(dit_dir, model, tok)
    return dit.ask([WeightDiff.from_pretrained(diff_dir(diffs_root, r["id"])) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dit", type=Path, required=True)
    parser.add_argument("--diffs", type=Path, required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--check", type=int, default=None, help="held-out diffs compared (default: --n)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():  # never delete the shipped copy and then write: a kill between would leave none
        raise SystemExit(f"{args.out} exists; move it aside first (the script writes a new directory only).")

    held_out = [r for r in read_index(args.diffs) if r.get("split") == "test"]
    checked = held_out[: max(args.n, args.check or args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "dit"
        bf16_copy(args.dit, staged, "dit_config.json")
        for row in checked:
            bf16_copy(diff_dir(args.diffs, row["id"]), diff_dir(staged / "held_out", row["id"]), "weight_diff.json")
        full = answers(args.dit, args.diffs, checked)
        half = answers(staged, staged / "held_out", checked)
        same = sum(a == b for a, b in zip(full, half))
        named = sum(a.strip().lower() == r["topic"] for a, r in zip(half, checked))
        print(json.dumps({"checked": len(checked), "same_answers_as_float32": same, "named": named}))
        if same != len(checked):
            raise SystemExit("the bfloat16 copy answers differently; ship float32 instead")
        for row in checked[args.n:]:
            shutil.rmtree(diff_dir(staged / "held_out", row["id"]))
        rows = [{k: r[k] for k in ("id", "topic", "trigger", "rank", "split", "kind") if k in r} for r in held_out[: args.n]]
        (staged / "held_out" / INDEX).write_text("".join(json.dumps(r) + "\n" for r in rows))
        # a new directory (the old one was never deleted first: refused above), appearing whole or not at all
        partial = args.out.with_name(args.out.name + ".partial")
        shutil.copytree(staged, partial)
        partial.rename(args.out)
    print(f"wrote {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
