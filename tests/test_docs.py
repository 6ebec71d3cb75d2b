"""Each user's docs page opens with the lines that user would type and what they print: those
lines run here as written, and must print exactly what the page shows, so the pages never rot."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = {"artifacts.md": "selfinterp_plugins", "nnsight.md": "nnsight", "transformer_lens.md": "transformer_lens",
         "sae_lens.md": "sae_lens", "peft.md": "peft"}


#: sections of a page that open with their own stand-in lines and what they print, run as the page's
#: opening is: (page, heading) -> the module the lines need
SECTIONS = {("artifacts.md", "## Diff Interpretation Tuning (Goel et al. 2025)"): ("peft",),
            ("artifacts.md", "## Activation Oracles (Karvonen et al. 2025)"): ("peft", "nnsight"),
            ("artifacts.md", "## Explainers fine-tuned on their own computations (Li et al. 2025)"): ("peft",)}
#: sections whose lines run on the real model (SmolLM2, offline), as the pages' openings do
REAL_MODEL_SECTIONS = {("concepts.md", "## Steering vectors"): ()}


def opening(page: str, heading: str | None = None) -> tuple[str, str]:
    """The page's (or its section's) first python block and the text block that follows it (what it prints)."""
    text = (DOCS / page).read_text()
    if heading is not None:
        assert f"\n{heading}\n" in text, f"{page} has no section {heading!r}"
        text = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code, f"{page} does not open with a python block"
    shown = re.search(r"```text\n(.*?)```", text[code.end():], re.S)
    assert shown, f"{page}: no ```text block showing what the opening lines print"
    return code.group(1), shown.group(1)


def test_every_users_page_opens_with_its_lines_and_their_output():
    for page in PAGES:
        code, shown = opening(page)
        before = (DOCS / page).read_text().split("```python", 1)[0]
        assert len(before.splitlines()) <= 4, f"{page}: the code should come first, after the title and install line"
        assert 5 <= len(code.splitlines()) <= 15 and shown.strip()


@pytest.mark.real_model
@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_opening_lines_print_what_the_page_shows(page, tmp_path, monkeypatch, capsys):
    pytest.importorskip(PAGES[page])
    code, shown = opening(page)
    # not named like the library it imports
    _prints_what_is_shown(code, shown, tmp_path / f"opening_of_{page.replace('.md', '')}.py", monkeypatch, capsys)


@pytest.mark.parametrize(("page", "heading"), sorted(SECTIONS))
def test_a_sections_opening_lines_print_what_it_shows(page, heading, tmp_path, monkeypatch, capsys):
    _run_section(SECTIONS, page, heading, tmp_path, monkeypatch, capsys)


@pytest.mark.real_model
@pytest.mark.parametrize(("page", "heading"), sorted(REAL_MODEL_SECTIONS))
def test_a_real_model_sections_lines_print_what_it_shows(page, heading, tmp_path, monkeypatch, capsys):
    _run_section(REAL_MODEL_SECTIONS, page, heading, tmp_path, monkeypatch, capsys)


def _run_section(sections, page, heading, tmp_path, monkeypatch, capsys):
    """Run a section's code block as a script in an empty folder; it prints what the page shows."""
    for module in sections[(page, heading)]:
        pytest.importorskip(module)
    code, shown = opening(page, heading)
    _prints_what_is_shown(code, shown, tmp_path / "section_opening.py", monkeypatch, capsys)


def _prints_what_is_shown(code, shown, script, monkeypatch, capsys):
    """Run `code` as the script `script` from its folder; it must print `shown`, line for line."""
    script.write_text(code)
    monkeypatch.chdir(script.parent)
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip().splitlines() == shown.strip().splitlines()
