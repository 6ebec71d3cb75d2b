"""The report as an HTML page: headline table, the sensitivity picture (an interactive plotly
figure, and the PNG as a data URI so it shows with scripts off), the whole sweep and example
labels. Plotly's JavaScript comes as `plotly_js` says (`sensitivity.PLOTLY_JS`): by default one
`plotly.min.js` beside the page, shared with `sensitivity.html`, so no network is needed to view
it and the 4.7 MB bundle is stored once."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..storage._files import write_text_atomic

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;color:#555;padding:4px 0}
img{max-width:100%}details{margin:1em 0}
"""


def write_html(results: dict, plots: dict, path: str | Path, plotly_js: str = "directory") -> Path:
    """Render `results` (from `run_report`) and its plots into `path`."""
    from .sensitivity import plotly_source

    path = Path(path)
    include = plotly_source(plotly_js, path.parent)
    config = results["config"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>selfinterp report: {html.escape(config['model'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Self-interpretation report: {html.escape(config['model'])}</h1>",
        f"<p>Topic vectors: residual stream after layer {results['vector_layer']} at the last token of "
        f"<code>Tell me about {{title}}.</code>, minus the mean. Baselines are swept on {results['n_validation']} "
        f"validation topics and read at their best (layer, scale) on {results['n_test']} held-out test topics; "
        f"trained explainers are read at s = 1. Recall@k: the true title among the top k of all "
        f"{results['n_candidates']} titles by sentence-embedding similarity to the label.</p>",
        _headline(results["headline"]),
        "<h2>Sensitivity to scale and injection layer</h2>",
        "<p>Validation recall@1 for every point of each method's grid (hover for values).</p>",
        "<div id='sensitivity-interactive'>",
        plots["figure"].to_html(full_html=False, include_plotlyjs=include, div_id="sensitivity-plot"),
        "</div>",
        "<details open><summary>Static picture</summary>",
        f"<img id='sensitivity-png' alt='sensitivity' src='data:image/png;base64,{_b64(plots['png'])}'></details>",
        _examples(results["examples"]),
        "<details><summary>Every point of the sweep</summary>",
        _table(["method", "layer", "scale", "recall@1", "recall@5", "exact_match", "n"], results["sweep"]),
        "</details>",
        f"<p>Configuration: <code>{html.escape(str(config))}</code></p>",
        "</body></html>",
    ]
    write_text_atomic(path, "\n".join(parts))
    return path


def _headline(rows: list[dict]) -> str:
    columns = ["method", "layer", "scale", "validation_recall@1", "recall@1", "recall@5", "n", "title_named"]
    return "<h2>Held-out test topics</h2>" + _table(columns, rows, caption="recall@1 and recall@5 on test topics")


def _examples(examples: dict) -> str:
    methods = list(examples)
    rows = [{m: examples[m][i] if i < len(examples[m]) else "" for m in methods} for i in range(len(examples["truth"]))]
    return "<h2>Example labels (first test topics)</h2>" + _table(methods, rows)


def _table(columns: list[str], rows: list[dict], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            if isinstance(value, float):
                cells.append(f"<td class='num'>{value:.3f}</td>")
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
