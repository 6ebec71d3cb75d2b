"""explaining.py: the job list (vector × scale × sample), its batches and their seeds, resuming an
output file, and the refusals. A real explainer on the tiny llama (its digest is what an output
records) with `generate_labels` replaced by a fake that says what it was given."""

from __future__ import annotations

import json

import pytest
import torch

from selfinterp_plugins import Explainer
from selfinterp_plugins.backends.base import Sampling
from selfinterp_plugins.errors import ArtifactError, OptionError, VectorError
from selfinterp_plugins.explaining import check_run_options


class Interrupted(Exception):
    pass


def fake_explainer(tiny_llama, fail_on_call=None):
    """An explainer whose generate_labels labels row r of a batch "v<first value>s<scale>@<seed>"."""
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok)
    calls = []

    def generate_labels(vectors, scale, sampling):
        calls.append((vectors[:, 0].tolist(), scale.tolist(), sampling.seed, sampling.temperature))
        if fail_on_call == len(calls):
            raise Interrupted
        return [(f"v{v:g}s{s:g}@{sampling.seed}", f"text {v:g}") for v, s in zip(vectors[:, 0].tolist(), scale.tolist())]

    explainer.generate_labels = generate_labels
    return explainer, calls


def vectors(n, d):
    """Row i has first value i + 1 (what the fake labels by)."""
    x = torch.randn(n, d)
    x[:, 0] = torch.arange(1, n + 1, dtype=torch.float32)
    return x


def test_jobs_are_vector_then_scale_then_sample_in_batches_seeded_by_their_start(tiny_llama):
    explainer, calls = fake_explainer(tiny_llama)
    x = vectors(2, explainer.backend.d_model)
    records = explainer.explain(x, ids=["a", "b"], scales=(1.0, 4.0), samples=2, batch_size=3,
                                sampling=Sampling(temperature=0.5, seed=10), progress=False)
    # jobs: a1 a1 a4 | a4 b1 b1 | b4 b4  (sample 0 and 1 of each), batch seeds 10 + 0, 3, 6
    assert calls == [([1, 1, 1], [1, 1, 4], 10, 0.5), ([1, 2, 2], [4, 1, 1], 13, 0.5), ([2, 2], [4, 4], 16, 0.5)]
    assert [(r["id"], r["scale"], r["sample"], r["label"]) for r in records] == [
        ("a", 1.0, 0, "v1s1@10"), ("a", 1.0, 1, "v1s1@10"), ("a", 4.0, 0, "v1s4@10"),
        ("a", 4.0, 1, "v1s4@13"), ("b", 1.0, 0, "v2s1@13"), ("b", 1.0, 1, "v2s1@13"),
        ("b", 4.0, 0, "v2s4@16"), ("b", 4.0, 1, "v2s4@16")]
    assert records[0] == {"id": "a", "scale": 1.0, "sample": 0, "label": "v1s1@10", "text": "text 1"}


def test_one_vector_and_default_ids_number_the_rows(tiny_llama):
    explainer, calls = fake_explainer(tiny_llama)
    one = vectors(1, explainer.backend.d_model)[0]
    assert [(r["id"], r["label"]) for r in explainer.explain(one, progress=False)] == [("0", "v1s1@0")]
    two = explainer.explain(vectors(2, explainer.backend.d_model), progress=False)
    assert [r["id"] for r in two] == ["0", "1"]


def test_a_resumed_output_generates_only_unfinished_batches_and_writes_each_job_once(tiny_llama, tmp_path):
    out = tmp_path / "labels.jsonl"
    explainer, calls = fake_explainer(tiny_llama, fail_on_call=2)
    x = vectors(5, explainer.backend.d_model)
    with pytest.raises(Interrupted):
        explainer.explain(x, batch_size=2, output=out, progress=False)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["0", "1"]
    # a record of the middle batch already there: that batch is generated again whole, written once
    with out.open("a") as f:
        f.write(json.dumps({"id": "2", "scale": 1.0, "sample": 0, "label": "kept", "text": "kept"}) + "\n")
    explainer, calls = fake_explainer(tiny_llama)
    records = explainer.explain(x, batch_size=2, output=out, progress=False)
    assert calls == [([3, 4], [1, 1], 2, 0.0), ([5], [1], 4, 0.0)]
    assert [r["label"] for r in records] == ["v1s1@0", "v2s1@0", "kept", "v4s1@2", "v5s1@4"]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["0", "1", "2", "3", "4"]
    explainer, calls = fake_explainer(tiny_llama)
    assert [r["label"] for r in explainer.explain(x, batch_size=2, output=out, progress=False)][2] == "kept"
    assert calls == []  # everything done: nothing generated


def test_an_output_of_another_kind_is_refused_with_its_line(tiny_llama, tmp_path):
    out = tmp_path / "other.jsonl"
    out.write_text(json.dumps({"id": "0", "scale": 1.0}) + "\n" + json.dumps({"name": "x"}) + "\n")
    explainer, _ = fake_explainer(tiny_llama)
    with pytest.raises(ArtifactError) as err:
        explainer.explain(vectors(1, explainer.backend.d_model), output=out, progress=False)
    assert str(err.value) == (f"{out}:2 is not an explain record (id, scale, sample, label): this file holds another "
                              "kind of output; choose another output file.")


def test_refused_inputs_say_what_to_pass(tiny_llama):
    explainer, calls = fake_explainer(tiny_llama)
    d = explainer.backend.d_model
    cases = [
        (dict(vectors=torch.randn(2, 3, d)), VectorError,
         f"This explainer takes vectors of shape (N, d_model), got (2, 3, {d}); reshape them to one row per vector."),
        (dict(vectors=torch.randn(2, d), ids=["a"]), VectorError,
         "`ids` must give one distinct id per vector; pass ids=None to number them 0..N-1."),
        (dict(vectors=torch.randn(2, d), ids=["a", "a"]), VectorError,
         "`ids` must give one distinct id per vector; pass ids=None to number them 0..N-1."),
        (dict(vectors=torch.randn(1, d), samples=2), VectorError,
         "samples > 1 with greedy decoding repeats one label; set a temperature (e.g. 0.7)."),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as err:
            explainer.explain(progress=False, **kwargs)
        assert str(err.value) == message
    assert calls == []


@pytest.mark.parametrize("scales, samples, batch_size, message", [
    ((), 1, 1, "Give at least one scale (e.g. scales=(1.0,))."),
    ((1.0, float("nan")), 1, 1, "Scales must be finite numbers, got nan; pass e.g. --scale 1.0."),
    ((float("inf"),), 1, 1, "Scales must be finite numbers, got inf; pass e.g. --scale 1.0."),
    (("2",), 1, 1, "Scales must be finite numbers, got '2'; pass e.g. --scale 1.0."),
    ((True,), 1, 1, "Scales must be finite numbers, got True; pass e.g. --scale 1.0."),
    ((None,), 1, 1, "Scales must be finite numbers, got None; pass e.g. --scale 1.0."),
    ((1.0,), 0, 1, "The samples must be a whole number of at least 1, got 0."),
    ((1.0,), 1.5, 1, "The samples must be a whole number of at least 1, got 1.5."),
    ((1.0,), 1, True, "The batch size must be a whole number of at least 1, got True."),
    ((1.0,), 1, 0, "The batch size must be a whole number of at least 1, got 0."),
])
def test_check_run_options_refuses_what_would_do_nothing_or_never_resume(scales, samples, batch_size, message):
    with pytest.raises(OptionError) as err:
        check_run_options(scales, samples, batch_size)
    assert str(err.value) == message


def test_check_run_options_accepts_whole_numbers_and_finite_scales():
    check_run_options(iter([0.5, 2, torch.tensor(3.0)]), 1, 1)


def test_a_record_without_sample_is_sample_0(tiny_llama, tmp_path):
    """Outputs of earlier versions hold no `sample`: their records resume as sample 0."""
    out = tmp_path / "old.jsonl"
    out.write_text(json.dumps({"id": "0", "scale": 1.0, "label": "old", "text": "old"}) + "\n")
    explainer, calls = fake_explainer(tiny_llama)
    records = explainer.explain(vectors(1, explainer.backend.d_model), output=out, progress=False)
    assert calls == [] and [r["label"] for r in records] == ["old"]


def test_a_resume_matches_records_by_their_sample(tiny_llama, tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text(json.dumps({"id": "0", "scale": 1.0, "sample": 1, "label": "second", "text": "t"}) + "\n")
    explainer, calls = fake_explainer(tiny_llama)
    records = explainer.explain(vectors(1, explainer.backend.d_model), samples=2, batch_size=1,
                                sampling=Sampling(temperature=0.5), output=out, progress=False)
    assert calls == [([1], [1], 0, 0.5)]  # only sample 0 (the first batch) is generated
    assert [(r["sample"], r["label"]) for r in records] == [(0, "v1s1@0"), (1, "second")]
