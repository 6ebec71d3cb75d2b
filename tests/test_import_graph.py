"""The import graph of the core package and of each integration package has no cycle, and the core
never imports an integration.

A cycle makes the order modules are first imported in matter (a name defined below an import, a
`noqa: E402`, an ImportError that depends on which module a user imports first); the core
importing an integration would turn an optional plugin into a dependency. Built with `ast`, so
nothing is imported: an edge is `import X` / `from X import Y` (relative ones resolved), to the
submodule `X.Y` when `Y` is one, else to `X`. Imports under `if TYPE_CHECKING:` never run and are
left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "selfinterp_plugins"
INTEGRATIONS = sorted(p.parent.name for p in (ROOT / "integrations").glob("*/__init__.py"))


def _modules() -> dict[str, Path]:
    """Every module of the core and of the integrations, by dotted name."""
    roots = [ROOT / CORE] + [ROOT / "integrations" / name for name in INTEGRATIONS]
    modules = {}
    for package in roots:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(package.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, function_local: bool) -> list[tuple[str, int]]:
    """(imported module, line) for each import in `module`; those inside functions only if
    `function_local`."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not function_local:
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _absolute(module, path, child)
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in MODULES else target, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def graph(function_local: bool) -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line of the import}."""
    edges = {}
    for module, path in MODULES.items():
        edges[module] = {}
        for target, line in imports_of(module, path, function_local):
            if target in MODULES and target != module:
                edges[module].setdefault(target, line)
    return edges


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state = dict.fromkeys(edges, 0)  # 0 unseen, 1 on the current path, 2 done
    for start in sorted(edges):
        if state[start]:
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges[nxt])))
    return None


def describe(cycle: list[str], edges) -> str:
    return "import cycle:\n" + "\n".join(
        f"  {a} imports {b} ({MODULES[a].relative_to(ROOT)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_tree_is_what_the_test_walks():
    assert set(INTEGRATIONS) >= {"selfinterp_introspective", "selfinterp_nnsight", "selfinterp_peft",
                                 "selfinterp_sae_lens", "selfinterp_transformer_lens"}
    assert {"selfinterp_plugins", "selfinterp_plugins.cli", "selfinterp_plugins.backends.hf",
            "selfinterp_sae_lens.source"} <= set(MODULES)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) is None


def test_no_cycle_among_module_level_imports():
    edges = graph(function_local=False)
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges)


def test_no_cycle_even_through_imports_inside_functions():
    """Deferred imports keep a cycle from failing at import time, but the two modules still
    depend on each other; none is left, so keep it that way."""
    edges = graph(function_local=True)
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges)


def test_the_core_never_imports_an_integration():
    offending = []
    for module, path in MODULES.items():
        if module.split(".")[0] != CORE:
            continue
        for target, line in imports_of(module, path, function_local=True):
            if target.split(".")[0] in INTEGRATIONS:
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offending, "the core imports an integration package:\n" + "\n".join(offending)


def test_a_plugin_never_imports_another_plugin():
    """Each integration is written as a third-party plugin would be: what two of them share is the
    core's public API, so removing one plugin never breaks another (Li et al.'s explainer used the
    PEFT plugin's chat and checkpoint modules before it became a plugin of its own)."""
    offending = []
    for module, path in MODULES.items():
        own = module.split(".")[0]
        if own not in INTEGRATIONS:
            continue
        for target, line in imports_of(module, path, function_local=True):
            if target.split(".")[0] in INTEGRATIONS and target.split(".")[0] != own:
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offending, "a plugin imports another plugin:\n" + "\n".join(offending)
