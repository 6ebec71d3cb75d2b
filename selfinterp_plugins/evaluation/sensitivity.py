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

from ..storage._files import output_errors, write_bytes_atomic, write_text_atomic
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


#: how a report's HTML files get plotly's JavaScript (~4.7 MB): "directory" writes it once as
#: `plotly.min.js` beside them (offline, shared by every page), "inline" puts a copy in each page
#: (one self-contained file each), "cdn" links plotly's CDN (small files, needs the network to view)
PLOTLY_JS = ("directory", "inline", "cdn")
PLOTLY_FILE = "plotly.min.js"


def plot_sensitivity(rows: list[dict], png: str | Path | None = None, html: str | Path | None = None,
                     metric: str = "recall@1", title: str = "", x_titles: dict | None = None,
                     plotly_js: str = "directory") -> dict:
    """`metric` against scale, one panel per method and one line per injection layer (a legend
    names the layers); PNG and/or HTML. `x_titles` names each method's x-axis (what its scale
    means: s multiplies the vector, c is the norm-matched coefficient); `plotly_js` is one of
    `PLOTLY_JS`. Returns {"png": path, "html": path, "figure": plotly figure}."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    x_titles = {m: (x_titles or {}).get(m, "scale") for m in methods}
    out: dict = {}
    if png is not None:
        out["png"] = _png(rows, methods, Path(png), metric, title, x_titles)
    figure = _plotly(rows, methods, metric, title, x_titles)
    out["figure"] = figure
    if html is not None:
        html = Path(html)
        write_text_atomic(html, figure.to_html(include_plotlyjs=plotly_source(plotly_js, html.parent), full_html=True))
        out["html"] = html
    return out


def plotly_source(plotly_js: str, directory: Path):
    """What plotly's `include_plotlyjs` takes for `plotly_js`; for "directory", `plotly.min.js` is
    written into `directory` first (once: an existing copy of the same plotly is kept)."""
    if plotly_js not in PLOTLY_JS:
        from ..errors import OptionError

        raise OptionError(f"plotly_js takes {', '.join(PLOTLY_JS)}, got {plotly_js!r}.")
    if plotly_js == "inline":
        return True
    if plotly_js == "cdn":
        return "cdn"
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    target = Path(directory) / PLOTLY_FILE
    if not target.is_file() or target.stat().st_size != len(bundle.encode("utf-8")):
        write_text_atomic(target, bundle)
    return "directory"


def _series(rows, method):
    by_layer: dict = {}
    for r in rows:
        if r["method"] == method:
            by_layer.setdefault(r["layer"], []).append((r["scale"], r))
    return {layer: sorted(points, key=lambda p: p[0]) for layer, points in by_layer.items()}


def _layer_name(layer) -> str:
    return "embed" if layer is None else f"layer {layer}"


def _layer_colours(rows) -> dict:
    """One colour per injection layer, the same in every panel (viridis from shallow to deep)."""
    from plotly.colors import sample_colorscale

    layers = sorted({r["layer"] for r in rows}, key=lambda layer: -1 if layer is None else layer)
    spots = [i / max(1, len(layers) - 1) for i in range(len(layers))]
    return dict(zip(layers, (_hex(c) for c in sample_colorscale("Viridis", spots))))


def _hex(colour: str) -> str:
    """plotly's 'rgb(r, g, b)' as '#rrggbb', which matplotlib takes too."""
    r, g, b = (round(float(v)) for v in colour[colour.index("(") + 1 : -1].split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


def _png(rows, methods, path: Path, metric: str, title: str, x_titles: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.3), sharey=True, squeeze=False)
    top = max((r[metric] for r in rows), default=0) or 1.0
    colours, handles = _layer_colours(rows), {}
    for ax, method in zip(axes[0], methods):
        for layer, points in _series(rows, method).items():
            (line,) = ax.plot([p[0] for p in points], [p[1][metric] for p in points], marker="o", ms=3,
                              color=colours[layer], label=_layer_name(layer))
            handles.setdefault(layer, line)
        ax.set_xscale("log", base=2)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel(x_titles[method], fontsize=7)
        ax.set_ylim(0, min(1.0, top * 1.15))
        ax.tick_params(labelsize=7)
    fig.legend(list(handles.values()), [_layer_name(layer) for layer in handles], title="injection layer", fontsize=6,
               title_fontsize=6, loc="lower center", ncol=min(8, len(handles)), frameon=False)
    axes[0][0].set_ylabel(metric, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # rendered in memory, then written atomically: a kill leaves no half picture
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=130)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _plotly(rows, methods, metric: str, title: str, x_titles: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=methods, shared_yaxes=True)
    colours, in_legend = _layer_colours(rows), set()
    for col, method in enumerate(methods, start=1):
        for layer, points in _series(rows, method).items():
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1][metric] for p in points], mode="lines+markers",
                name=_layer_name(layer), legendgroup=_layer_name(layer), showlegend=layer not in in_legend,
                line=dict(color=colours[layer]), marker=dict(color=colours[layer]),
                hovertemplate=f"{method}<br>{_layer_name(layer)}<br>{x_titles[method]} %{{x}}<br>{metric} %{{y:.3f}}"
                              "<extra></extra>",
            ), row=1, col=col)
            in_legend.add(layer)
        scales = sorted({r["scale"] for r in rows if r["method"] == method})
        fig.update_xaxes(type="log", title_text=x_titles[method], tickvals=scales, ticktext=[f"{v:g}" for v in scales],
                         row=1, col=col)
    top = max((r[metric] for r in rows), default=0) or 1.0
    fig.update_yaxes(range=[0, min(1.0, top * 1.15)])
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_layout(title=title, height=420, autosize=True, showlegend=True,
                      legend=dict(title_text="injection layer", orientation="h", y=-0.25),
                      margin=dict(l=50, r=20, t=60, b=90))
    return fig
