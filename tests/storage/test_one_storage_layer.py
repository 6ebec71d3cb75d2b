"""Every write of the core and of the plugins goes through the storage layer.

The storage layer is where the guarantees live (atomic files, no write through a planted link, one
writer per output); a module that opens a file for writing itself, renames or copies files, or
pickles with `torch.save`, bypasses them all. So outside `selfinterp_plugins/storage/`, the source
(read with `ast`, nothing imported) holds none of those calls, except the few listed here with the
reason each is safe.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WALKED = [ROOT / "selfinterp_plugins", ROOT / "integrations"]
STORAGE = ROOT / "selfinterp_plugins" / "storage"

#: calls that write, rename or copy a file, by attribute or function name
WRITING_CALLS = {"write_text", "write_bytes", "replace", "rename", "copyfile", "copy", "copy2", "copytree", "move",
                 "save", "symlink_to", "hardlink_to", "link", "touch"}
#: (file, call) -> why it is safe there
ALLOWED = {
    ("selfinterp_plugins/models/gguf_conversion.py", "rename"):
        "the converted model cache: a folder the library made under ~/.cache, renamed into place whole",
    ("integrations/selfinterp_peft/dit_stand_in.py", "save"):
        "torch.save into memory of plain tensors, lists and dicts (the DIT reference's own format, for the offline "
        "stand-in), written by write_bytes_atomic",
}


def _writes(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name == "open" and _mode(node) and set(_mode(node)) & set("wax+"):
            yield node.lineno, "open"
        elif name in WRITING_CALLS and _is_file_call(func, node):
            yield node.lineno, name


def _mode(call: ast.Call) -> str:
    args = [*call.args[1:2], *(k.value for k in call.keywords if k.arg == "mode")]
    return next((a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)), "")


def _is_file_call(func, call: ast.Call) -> bool:
    """Calls on paths, os, shutil or torch; not str.replace (two arguments, where Path.replace
    takes one), a tensor's .save() (nnsight's) or a dict's .copy()."""
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value
    if isinstance(owner, ast.Name) and owner.id in ("os", "shutil", "torch"):
        return True
    if func.attr == "replace":
        return len(call.args) == 1
    return func.attr not in ("save", "copy")


def test_no_module_outside_the_storage_layer_writes_a_file_itself():
    found, allowed_seen = [], set()
    for folder in WALKED:
        for path in sorted(folder.rglob("*.py")):
            if path.is_relative_to(STORAGE):
                continue
            rel = str(path.relative_to(ROOT))
            for line, call in _writes(path):
                if (rel, call) not in ALLOWED:
                    found.append(f"{rel}:{line}: {call}")
                allowed_seen.add((rel, call))
    assert set(ALLOWED) <= allowed_seen, f"stale ALLOWED entries: {set(ALLOWED) - allowed_seen}"
    assert not found, "write through selfinterp_plugins.storage (or add the call to ALLOWED with why):\n" + "\n".join(found)


def test_the_scan_finds_a_write():
    """The rule itself: each way of writing is found."""
    import tempfile

    sources = ['open(p, "w")', "partial.replace(path)", "open(p, mode='ab')", "p.write_text('x')", "os.replace(a, b)", "shutil.copyfile(a, b)",
               "torch.save(x, p)", "Path(p).touch()"]
    with tempfile.TemporaryDirectory() as folder:
        for source in sources:
            path = Path(folder) / "m.py"
            path.write_text(source + "\n")
            assert list(_writes(path)), source
        path.write_text("open(p)\nname.replace('a', 'b')\nh.save()\n")
        assert not list(_writes(path))
