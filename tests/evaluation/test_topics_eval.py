"""`evaluate_explainer` and `selfinterp eval` with scorers named by the caller (a plugin's
included), and the ids explain records carry: a dataset's own, so every scorer finds its labels."""

from __future__ import annotations

import json

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset, plugins
from selfinterp_plugins.errors import OptionError, UnknownNameError, VectorError
from selfinterp_plugins.evaluation import EvalMetrics, evaluate_explainer
from selfinterp_plugins.models import tiny_model

from cli_models import ok, one_line_error, save_tiny_model
from plugin_fakes import FakeEntryPoint, install_entry_points, module

pytestmark = pytest.mark.usefixtures("hermetic_plugins")

SEEN = []  # what the plugin scorer was handed, per call


def ids_scorer(records, dataset, **options):
    """A plugin's scorer: which ids it got, and how many of them the dataset knows."""
    SEEN.append(sorted(options))
    known = set(dataset.ids)
    return {"ids": sorted({r["id"] for r in records}), "known": sum(r["id"] in known for r in records)}


def needs_sae(records, dataset, *, sae, **options):
    return {}


@pytest.fixture
def with_scorer(monkeypatch):
    SEEN.clear()
    plugin = module("scoring_plugin", register_scorers=lambda register: (register("ids", ids_scorer),
                                                                          register("needs_sae", needs_sae)))
    install_entry_points(monkeypatch, FakeEntryPoint("scoring", lambda: plugin))
    plugins.reset()
    yield
    plugins.reset()


def dataset() -> VectorLabelDataset:
    """Four test rows whose ids are their own words, not row numbers (and two train rows)."""
    g = torch.Generator().manual_seed(0)
    words = ["cat", "dog", "sun", "sky", "moon", "tree"]
    records = [{"id": f"w-{w}", "label": w, "split": "test" if i < 4 else "train"} for i, w in enumerate(words)]
    return VectorLabelDataset(torch.randn(len(words), 64, generator=g) * 3, records)


@pytest.fixture(scope="module")
def explainer():
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)  # the weights save_tiny_model writes
    return Explainer.create(model, tok, adapter="scalar_affine", template="echo")


def test_a_plugin_scorer_runs_in_python(with_scorer, explainer):
    data = dataset().split("test")
    result: EvalMetrics = evaluate_explainer(explainer, data, sorted(set(data.labels)), scales=(1.0, 2.0),
                                             sampling=Sampling(max_new_tokens=3), scorers=("exact_match", "ids"))
    # 4 rows x 2 scales, each under its dataset id: all 8 records known to the dataset
    assert result["scores"] == {"ids": {"ids": ["w-cat", "w-dog", "w-sky", "w-sun"], "known": 8}}
    assert SEEN == [["candidate_embeddings", "candidates"]]
    assert result["n"] == 4 and "recall@1" not in result and "exact_match" not in result["scores"]
    labels = [e["label"] for e in result["examples"]]
    # exact match worked out from the labels themselves (case and spaces ignored), at the best scale
    hits = sum(" ".join(label.lower().split()) == word for label, word in zip(labels, ["cat", "dog", "sun", "sky"]))
    assert result["exact_match"] == hits / 4 and set(result["per_scale"]) == {"1.0", "2.0"}
    assert [e["id"] for e in result["examples"]] == ["w-cat", "w-dog", "w-sun", "w-sky"]
    assert [e["truth"] for e in result["examples"]] == ["cat", "dog", "sun", "sky"]


def test_scorers_are_checked_before_any_label_is_generated(with_scorer, explainer):
    data = dataset().split("test")
    with pytest.raises(UnknownNameError) as err:
        evaluate_explainer(explainer, data, data.labels, scorers=("nope",))
    assert str(err.value) == "Unknown scorer 'nope'; installed: exact_match, ids, needs_sae, recall_at_k."
    with pytest.raises(OptionError) as err:
        evaluate_explainer(explainer, data, data.labels, scorers=("needs_sae",))
    assert str(err.value) == ("Scorer 'needs_sae' cannot run in an evaluation (missing a required argument: 'sae'): "
                              "it needs options evaluation does not give; run it through its plugin's own command.")


def test_explain_takes_a_datasets_ids_and_refuses_others(explainer):
    """`explain(vectors)` numbered records '0', '1', ... and the scorers then failed with KeyError:
    '0'. A dataset given takes its ids; ids that differ are refused; records a dataset does not know
    reach the scorer as one line with the fix."""
    data = dataset().split("test")
    records = explainer.explain(data, sampling=Sampling(max_new_tokens=2), progress=False)
    assert [r["id"] for r in records] == ["w-cat", "w-dog", "w-sun", "w-sky"]
    assert explainer.explain(data, ids=data.ids, sampling=Sampling(max_new_tokens=2), progress=False) == records
    with pytest.raises(VectorError) as err:
        explainer.explain(data, ids=["a", "b", "c", "d"], progress=False)
    assert str(err.value) == ("ids= differ from the dataset's own ids (row 0: 'a' vs the dataset's 'w-cat'); omit "
                              "ids= to label each row with its dataset id.")
    numbered = explainer.explain(data.vectors, sampling=Sampling(max_new_tokens=2), progress=False)
    assert [r["id"] for r in numbered] == ["0", "1", "2", "3"]
    with pytest.raises(VectorError) as err:
        plugins.get_scorer("exact_match")(numbered, data)
    assert str(err.value) == ("Record id '0' is not an id of the dataset (its ids: 'w-cat', 'w-dog', 'w-sun', ...); "
                              "explain the dataset itself, explainer.explain(dataset), or pass ids=dataset.ids.")


def test_integer_dataset_ids_match_explains_text_ids(explainer):
    """A labels.jsonl may hold integer ids (LabelRecord allows them); explain records hold text."""
    data = dataset().split("test")
    for n, record in enumerate(data.records):
        record["id"] = 10 + n
    records = explainer.explain(data, sampling=Sampling(max_new_tokens=2), progress=False)
    assert [r["id"] for r in records] == ["10", "11", "12", "13"]
    labels = [r["label"] for r in records]
    expected = sum(" ".join(label.lower().split()) == word for label, word in zip(labels, data.labels)) / 4
    assert plugins.get_scorer("exact_match")(records, data) == {"exact_match": {1.0: expected}}


def test_eval_scorer_option_runs_a_plugin_scorer(with_scorer, explainer, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    explainer.save_pretrained(tmp_path / "ex")
    data = str(dataset().save(tmp_path / "data"))
    argv = ["eval", str(tmp_path / "ex"), "--vectors", data, "--model", model]
    result = json.loads(ok(capsys, *argv, "--scorer", "ids", "--scorer", "exact_match"))
    assert result["scores"] == {"ids": {"ids": ["w-cat", "w-dog", "w-sky", "w-sun"], "known": 4}}
    assert result["n"] == 4 and "recall@1" not in result and result["best_scale"] == 1.0
    line = one_line_error(capsys, *argv, "--scorer", "nope", "--model", str(tmp_path / "no-model"))
    assert line == "Error: Unknown scorer 'nope'; installed: exact_match, ids, needs_sae, recall_at_k."
