"""How an explainer's score depends on injection scale and layer: the grid, its best point, plots.

The reference paper's claim is that untrained self-interpretation peaks sharply in scale and layer
while a trained adapter does not. `sweep` measures the grid for a baseline (every layer of its
grid × every scale) or a trained explainer (its own site × scales around the trained s = 1);
`best_point` picks where to read a method, on validation data; `plot_sensitivity` draws the grid
as a PNG and as an interactive HTML figure.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..serialization import output_errors, write_bytes_atomic, write_text_atomic
from .topics_eval import evaluate_explainer

TRAINED_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def sweep(method, backend, dataset, candidates, scales=None, layers=None, sampling=None, batch_size: int = 64,
          candidate_embeddings=None, name: str | None = None, progress: bool = False) -> list[dict]:
    """One row per (layer, scale): method, layer, scale, recall@1, recall@5, exact_match, n.

    `method` is a `Baseline` (swept over its layer grid unless `layers` is given) or an
    `Explainer` (read at its own site). For norm-matched addition the scale is the coefficient c."""
    from tqdm.auto import tqdm

    from .baselines import Baseline

    if isinstance(method, Baseline):
        name = name or method.name
        scales = tuple(scales or method.scales)
        if method.site_kind == "embed":
            layers = [None]
        elif layers is not None:
            layers = [layer for layer in layers if layer < backend.n_layers]
        else:
            layers = method.layer_grid(backend.n_layers)
        runs = []
        for layer in layers:
            if method.mode == "add_normmatched":
                runs += [(layer, method.explainer(backend, layer, coef=c), (1.0,), c) for c in scales]
            else:
                runs.append((layer, method.explainer(backend, layer), scales, None))
    else:
        name = name or method.metadata.get("name", "trained")
        scales = tuple(scales or TRAINED_SCALES)
        runs = [(method.site.layer, method, scales, None)]
    rows = []
    for layer, explainer, run_scales, coef in tqdm(runs, disable=not progress, desc=f"sweep {name}"):
        result = evaluate_explainer(explainer, dataset, candidates, scales=run_scales, sampling=sampling,
                                    batch_size=batch_size, candidate_embeddings=candidate_embeddings)
        for scale, metrics in result["per_scale"].items():
            rows.append({"method": name, "layer": layer, "scale": coef if coef is not None else float(scale),
                         "n": result["n"], **metrics})
    return rows


def best_point(rows: list[dict], metric: str = "recall@1") -> dict:
    """The (layer, scale) row with the highest `metric` (ties: the earlier row)."""
    return max(rows, key=lambda r: r[metric])


def plot_sensitivity(rows: list[dict], png: str | Path | None = None, html: str | Path | None = None,
                     metric: str = "recall@1", title: str = "") -> dict:
    """`metric` against scale, one panel per method and one line per layer; PNG and/or HTML.
    Returns {"png": path, "html": path, "figure": plotly figure}."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out: dict = {}
    if png is not None:
        out["png"] = _png(rows, methods, Path(png), metric, title)
    figure = _plotly(rows, methods, metric, title)
    out["figure"] = figure
    if html is not None:
        write_text_atomic(html, figure.to_html(include_plotlyjs=True, full_html=True))
        out["html"] = Path(html)
    return out


def _series(rows, method):
    by_layer: dict = {}
    for r in rows:
        if r["method"] == method:
            by_layer.setdefault(r["layer"], []).append((r["scale"], r))
    return {layer: sorted(points, key=lambda p: p[0]) for layer, points in by_layer.items()}


def _layer_name(layer) -> str:
    return "embed" if layer is None else f"layer {layer}"


def _png(rows, methods, path: Path, metric: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.0), sharey=True, squeeze=False)
    top = max((r[metric] for r in rows), default=0) or 1.0
    for ax, method in zip(axes[0], methods):
        series = _series(rows, method)
        colours = plt.cm.viridis([i / max(1, len(series) - 1) for i in range(len(series))])
        for colour, (layer, points) in zip(colours, series.items()):
            ax.plot([p[0] for p in points], [p[1][metric] for p in points], marker="o", ms=3, color=colour,
                    label=_layer_name(layer))
        ax.set_xscale("log", base=2)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("scale (c for norm-matched addition)", fontsize=7)
        ax.set_ylim(0, min(1.0, top * 1.15))
        ax.tick_params(labelsize=7)
        if len(series) > 1:
            ax.legend(fontsize=5, ncol=2)
    axes[0][0].set_ylabel(metric, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # rendered in memory, then written atomically: a kill leaves no half picture
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=130)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _plotly(rows, methods, metric: str, title: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    for col, method in enumerate(methods, start=1):
        for layer, points in _series(rows, method).items():
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1][metric] for p in points], mode="lines+markers",
                name=f"{method}, {_layer_name(layer)}", legendgroup=method,
                hovertemplate=f"{method}<br>{_layer_name(layer)}<br>scale %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(type="log", title_text="scale", row=1, col=col)
    top = max((r[metric] for r in rows), default=0) or 1.0
    fig.update_yaxes(range=[0, min(1.0, top * 1.15)])
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_layout(title=title, height=380, autosize=True, showlegend=False, margin=dict(l=50, r=20, t=60, b=50))
    return fig
