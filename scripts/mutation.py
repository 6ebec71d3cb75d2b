"""Mutation testing of the core's method and storage modules and the plugins' method modules (mutmut 3; not run in CI).

Each module is mutated alone and its mutants are run against the tests that cover it (the file
mirroring it plus the others that exercise it, `MODULES` below), not the whole suite: a module
takes minutes, the suite would take hours per module. mutmut runs in a scratch directory per
module (runs/mutation/<module>/, links to the sources and a pyproject.toml carrying that module's
[tool.mutmut] section), so the working tree is never mutated and runs of two modules never share
a cache. One worker by default: the machines' cores are shared.

    pip install -e ".[mutation]"
    python scripts/mutation.py selfinterp_plugins/sites.py selfinterp_plugins/adapters.py
    python scripts/mutation.py --all --out runs/mutation/summary.json

It prints, and writes to --out as JSON, each module's counts (killed, survived, timeout, no
tests, other) and the names of its survivors; `--show` prints each survivor's diff, which
docs/testing.md judges (equivalent or not). mutmut does not mutate decorated functions (a
@property, a @torch.no_grad() method, a @contextmanager) nor module- and class-level
assignments (dataclass field defaults): docs/testing.md lists what that leaves out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: module -> the test files that cover it (the mirror first); tests marked real_model or slow are left out
MODULES: dict[str, list[str]] = {
    "selfinterp_plugins/adapters.py": ["tests/test_adapters.py", "tests/test_adapter_plugins.py",
                                       "tests/reference/test_reference_pepper.py"],
    "selfinterp_plugins/adapter_configs.py": ["tests/test_adapter_configs.py", "tests/test_adapters.py",
                                              "tests/test_adapter_plugins.py"],
    "selfinterp_plugins/sites.py": ["tests/test_sites.py", "tests/backends/test_hf.py"],
    "selfinterp_plugins/templates.py": ["tests/test_templates.py", "tests/backends/test_hf.py",
                                        "tests/reference/test_reference_pepper.py"],
    "selfinterp_plugins/backends/base.py": ["tests/backends/test_base.py", "tests/backends/test_hf.py",
                                            "tests/backends/test_conformance.py"],
    "selfinterp_plugins/backends/hf.py": ["tests/backends/test_hf.py", "tests/backends/test_conformance.py"],
    "selfinterp_plugins/explaining.py": ["tests/test_explaining.py", "tests/test_explainer.py"],
    "selfinterp_plugins/training.py": ["tests/test_training.py", "tests/reference/test_reference_pepper.py"],
    "selfinterp_plugins/evaluation/scoring.py": ["tests/evaluation/test_evaluation_scoring.py"],
    "selfinterp_plugins/storage/_files.py": ["tests/storage/test_files.py", "tests/test_serialization.py",
                                             "tests/reliability/test_atomic_writes.py"],
    "selfinterp_plugins/storage/_commits.py": ["tests/storage/test_commits.py", "tests/test_serialization.py",
                                               "tests/reliability/test_atomic_writes.py"],
    "selfinterp_plugins/storage/_locks.py": ["tests/test_locks.py"],
    "selfinterp_plugins/storage/_manifests.py": ["tests/storage/test_manifests.py", "tests/test_training.py"],
    "selfinterp_plugins/storage/_paths.py": ["tests/storage/test_paths.py", "tests/test_validation.py"],
    "selfinterp_plugins/storage/validation.py": ["tests/test_validation.py"],
    # the plugins' method modules (scratch layout: see `layout`)
    "integrations/selfinterp_peft/diff_training.py": ["tests/integrations/peft/test_dit.py",
                                                      "tests/integrations/peft/test_dit_runs.py"],
    "integrations/selfinterp_peft/batched.py": ["tests/integrations/peft/test_batched.py",
                                                "tests/integrations/peft/test_dit.py",
                                                "tests/integrations/peft/test_peft_variants.py"],
    "integrations/selfinterp_peft/dit.py": ["tests/integrations/peft/test_dit.py", "tests/integrations/peft/test_dit_runs.py",
                                            "tests/integrations/peft/test_dit_cli.py"],
    "integrations/selfinterp_introspective/explainer.py": ["tests/integrations/introspective/test_lora_explainer.py",
                                                     "tests/integrations/introspective/test_lora_runs.py",
                                                     "tests/integrations/introspective/test_lora_tasks.py"],
    "integrations/selfinterp_introspective/causal_targets.py": ["tests/integrations/introspective/test_causal_tasks.py"],
    "integrations/selfinterp_sae_lens/generation_scoring.py": ["tests/integrations/sae_lens/test_scoring.py",
                                                               "tests/integrations/sae_lens/test_conversations.py"],
    "integrations/selfinterp_sae_lens/conversations.py": ["tests/integrations/sae_lens/test_scoring.py",
                                                          "tests/integrations/sae_lens/test_conversations.py"],
}

#: mutmut's exit codes (mutmut/stats.py) folded into the columns docs/testing.md reports
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout"}


def layout(module: str) -> tuple[str, str]:
    """(the package, the module's path inside the scratch directory). A plugin's package is linked at
    the scratch's top (integrations/selfinterp_peft -> selfinterp_peft): mutmut names a mutant after
    the module's path, and its trampoline activates only where that name is the module's import name
    (selfinterp_peft.dit, not integrations.selfinterp_peft.dit); mutmut's mutants/ then precedes
    PYTHONPATH's integrations/ on sys.path, so the tests import the mutated copy."""
    if module.startswith("integrations/"):
        inner = module.removeprefix("integrations/")
        return inner.split("/")[0], inner
    return "selfinterp_plugins", module


def mutmut_section(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table of one module's scratch pyproject.toml."""
    existing = [t for t in tests if (ROOT / t).exists()]
    package, inner = layout(module)
    sources = ["selfinterp_plugins"] + ([package] if package != "selfinterp_plugins" else [])
    return "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {json.dumps(sources)}",
        f"only_mutate = [{json.dumps(inner)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(existing)}",
        'pytest_add_cli_args = ["-m", "not real_model and not slow", "-p", "no:cacheprovider"]',
        'also_copy = ["docs", "examples"]',
        "use_git_change_detection = false",
        "track_dependencies = false",
        "", ""])


def scratch_for(module: str, base: Path) -> Path:
    """A fresh directory where mutmut can run on `module` alone: links to the sources (mutmut copies
    them into its own mutants/ before mutating, so nothing here is written through) and a
    pyproject.toml whose [tool.mutmut] names the module and its tests."""
    package, inner = layout(module)
    work = base / inner.removeprefix("selfinterp_plugins/").removesuffix(".py").replace("/", ".")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("selfinterp_plugins", "tests", "docs", "examples"):
        (work / name).symlink_to(ROOT / name)
    if package != "selfinterp_plugins":
        (work / package).symlink_to(ROOT / "integrations" / package)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + mutmut_section(module, MODULES[module]))
    return work


def read_results(work: Path, module: str) -> dict[str, int]:
    """mutant name -> mutmut exit code, from the .meta file mutmut keeps beside the mutated module."""
    meta = work / "mutants" / (layout(module)[1] + ".meta")
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def run_module(module: str, base: Path, workers: int, show: bool) -> dict:
    work = scratch_for(module, base)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "integrations"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(workers)],
                              cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = round(time.monotonic() - started)
    codes = read_results(work, module)
    counts: dict[str, int] = {}
    for code in codes.values():
        status = STATUS.get(code, "other")
        counts[status] = counts.get(status, 0) + 1
    survivors = sorted(name for name, code in codes.items() if STATUS.get(code) == "survived")
    result = {"module": module, "seconds": seconds, "mutmut_exit": proc.returncode, "total": len(codes),
              **counts, "survivors": survivors, "log": str(log)}
    print(f"{module}: {len(codes)} mutants, {counts} in {seconds} s (log {log})", flush=True)
    if show:
        for name in survivors:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=env,
                                  capture_output=True, text=True).stdout
            print(diff, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths, e.g. selfinterp_plugins/sites.py")
    parser.add_argument("--all", action="store_true", help="every module of MODULES")
    parser.add_argument("--workers", type=int, default=1, help="mutmut's --max-children (default 1)")
    parser.add_argument("--scratch", type=Path, default=ROOT / "runs" / "mutation", help="where the runs happen")
    parser.add_argument("--out", type=Path, help="write the per-module counts and survivors here as JSON")
    parser.add_argument("--show", action="store_true", help="print each survivor's diff")
    args = parser.parse_args(argv)
    modules = list(MODULES) if args.all else args.modules
    unknown = [m for m in modules if m not in MODULES]
    if not modules or unknown:
        parser.error(f"name modules among: {', '.join(MODULES)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    results = [run_module(m, args.scratch.resolve(), args.workers, args.show) for m in modules]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
