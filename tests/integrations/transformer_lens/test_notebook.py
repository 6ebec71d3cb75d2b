"""examples/transformer_lens_quickstart.ipynb runs top to bottom (nbclient), so it never rots."""

from pathlib import Path

import pytest

pytest.importorskip("transformer_lens")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.real_model
ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_notebook_executes():
    notebook = nbformat.read(ROOT / "examples" / "transformer_lens_quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any("<table" in h and "volcano" in h for h in html)  # explain() results shown as a table
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "loss per step" in printed and "volcano" in printed
