"""The evaluation suite: how well an explainer's labels name what a vector stands for.

- `topics_eval`: the topic benchmark (`evaluate_explainer`, what `selfinterp eval` runs) and the
  ridge-probe ceiling (`ridge_probe_recall`);
- `scoring`: the scorers (recall@k by sentence-embedding retrieval, exact match);
- `baselines`: the untrained self-interpretation methods (SelfIE, Patchscopes, ...) as explainers;
- `sensitivity`: score over injection scale and layer, its best point, plots;
- `knowledge`: the knowledge control (the model asked to describe a topic without naming it);
- `bridge`: bridge entities of two-hop statements;
- `report`, `report_html`: `selfinterp report`, all of the above on one HTML page.

The method itself (adapters, explainer, training) never imports this package.
"""

from .topics_eval import DEFAULT_SCORERS, EvalExample, EvalMetrics, ScaleMetrics, evaluate_explainer, ridge_probe_recall

# public: the typed result of `evaluate_explainer` (EvalMetrics and its parts) for scripts and plugins
__all__ = ["DEFAULT_SCORERS", "EvalExample", "EvalMetrics", "ScaleMetrics", "evaluate_explainer", "ridge_probe_recall"]
