"""explain() results: still a list, and a DataFrame / HTML table for notebooks."""

import torch

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.results import ExplainResults


def test_explain_returns_a_list_that_converts_to_pandas_and_html(tiny_llama):
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, template="echo")
    results = explainer.explain(torch.randn(3, 64), ids=["a", "b", "<c>"], scales=(1.0, 2.0),
                                sampling=Sampling(max_new_tokens=3), progress=False)
    assert isinstance(results, list) and isinstance(results, ExplainResults) and len(results) == 6
    frame = results.to_pandas()
    assert list(frame.columns[:5]) == ["id", "scale", "sample", "label", "text"]
    assert frame["id"].tolist() == ["a", "a", "b", "b", "<c>", "<c>"] and frame["scale"].tolist() == [1.0, 2.0] * 3
    assert frame["label"].tolist() == [r["label"] for r in results]
    page = results._repr_html_()
    assert page.count("<tr>") == 7 and "&lt;c&gt;" in page and "<c>" not in page
