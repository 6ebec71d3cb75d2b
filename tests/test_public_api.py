"""Plugins and examples use the public API only, and "public" has one meaning.

The rule (docs/plugins.md, "The public API"): a name that code under `integrations/` or
`examples/` imports from `selfinterp_plugins` or from a `selfinterp_plugins.<module>` is listed in
that module's `__all__`, and no component of the module path starts with an underscore. The
built-in integrations are written as a third-party plugin would be, so what they need is what
any plugin may rely on; the examples are what users copy.

Everything is read with `ast` (notebooks: their code cells), nothing imported.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "selfinterp_plugins"
WALKED = ("integrations", "examples")


def module_file(module: str) -> Path | None:
    """The source file of a core module (a package's `__init__.py`), or None if there is none."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def exported(module: str) -> set[str] | None:
    """The literal `__all__` of a core module, or None if it has none."""
    path = module_file(module)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def sources() -> list[tuple[str, str]]:
    """(display name, Python source) of every file walked; a notebook's code cells joined, with
    IPython magics and shell lines left out."""
    found = []
    for folder in WALKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
        for path in sorted((ROOT / folder).rglob("*.ipynb")):
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
            code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
            found.append((str(path.relative_to(ROOT)), code))
    return found


def core_imports(name: str, source: str) -> list[tuple[str, str, str | None]]:
    """(where, module, imported name or None for a module import) for each use of the core."""
    uses = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == CORE:
                    uses.append((f"{name}:{node.lineno}", alias.name, None))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == CORE:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if module_file(submodule) is not None:  # `from selfinterp_plugins import models`
                    uses.append((f"{name}:{node.lineno}", submodule, None))
                else:
                    uses.append((f"{name}:{node.lineno}", node.module, alias.name))
    return uses


def violations(uses) -> list[str]:
    found = []
    for where, module, name in uses:
        if any(part.startswith("_") for part in module.split(".")):
            found.append(f"{where}: {module} is a private module")
        elif module_file(module) is None:
            found.append(f"{where}: {module} is not a module of {CORE}")
        elif name is not None and name not in (exported(module) or set()):
            found.append(f"{where}: {name} is not in {module}.__all__")
    return found


ALL_USES = [use for name, source in sources() for use in core_imports(name, source)]


def test_the_walk_finds_the_plugins_and_examples():
    files = {where.split(":")[0] for where, _module, _name in ALL_USES}
    assert any(f.startswith("integrations/selfinterp_nnsight/") for f in files)
    assert any(f.startswith("integrations/selfinterp_peft/") for f in files)
    assert "examples/quickstart.py" in files and "examples/transformer_lens_quickstart.ipynb" in files
    assert len(ALL_USES) > 100


def test_plugins_and_examples_import_only_public_names():
    found = violations(ALL_USES)
    assert not found, ("plugins and examples must import only names in a public module's __all__ (docs/plugins.md); "
                       "export the name with a reason, or stop using it:\n" + "\n".join(found))


@pytest.mark.parametrize("source, expected", [
    ("from selfinterp_plugins import Explainer", []),
    ("from selfinterp_plugins.storage import read_json", []),
    ("from selfinterp_plugins.storage.validation import validate", []),
    ("from selfinterp_plugins.storage._files import read_json", ["selfinterp_plugins.storage._files is a private module"]),
    ("from selfinterp_plugins.storage import _step", ["_step is not in selfinterp_plugins.storage.__all__"]),
    ("import selfinterp_plugins.models", []),
    ("from selfinterp_plugins import models", []),
    ("from selfinterp_plugins.explainer import _pad_id", ["_pad_id is not in selfinterp_plugins.explainer.__all__"]),
    ("from selfinterp_plugins.explainer import LabelEnd", ["LabelEnd is not in selfinterp_plugins.explainer.__all__"]),
    ("from selfinterp_plugins.cli import main", ["main is not in selfinterp_plugins.cli.__all__"]),
    ("import selfinterp_plugins._version", ["selfinterp_plugins._version is a private module"]),
    ("from selfinterp_plugins._version import __version__", ["selfinterp_plugins._version is a private module"]),
    ("def f():\n    from selfinterp_plugins.plugins import FAILED", ["FAILED is not in selfinterp_plugins.plugins.__all__"]),
])
def test_the_rule_itself(source, expected):
    found = violations(core_imports("example.py", source))
    assert [f.split(": ", 1)[1] for f in found] == expected


def test_every_exported_name_exists():
    """An `__all__` entry a plugin relies on names something the module defines."""
    import importlib

    for module in sorted({module for _where, module, _name in ALL_USES}):
        names = exported(module) or set()
        missing = sorted(n for n in names if not hasattr(importlib.import_module(module), n))
        assert not missing, f"{module}.__all__ lists {missing}, which it does not define"
