"""Explainer: loss and gradients, explain records, JSONL streaming and resume, artifacts."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from selfinterp_plugins import Explainer, HFBackend, Sampling, TrainConfig, VectorLabelDataset
from selfinterp_plugins.adapters import AdapterConfig, make_adapter
from selfinterp_plugins.errors import ArtifactError, ModelMismatchError, OptionError, VectorError
from selfinterp_plugins.explainer import CONFIG_FILE, WEIGHTS_FILE
from selfinterp_plugins.sites import Site

FAST = Sampling(max_new_tokens=4)


def _vectors(n, d=64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _perturb(explainer):
    with torch.no_grad():
        for p in explainer.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return explainer


@pytest.fixture(scope="module")
def explainer(tiny_llama):
    model, tok = tiny_llama
    return _perturb(Explainer.create(model, tok, adapter="scalar_affine", template="chat"))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("template", ["chat", "echo"])
@pytest.mark.parametrize("site", ["embed", "resid_pre.1"])
def test_loss_is_finite_and_trains_the_adapter(tiny, arch, template, site):
    model, tok = tiny(arch)
    ex = Explainer.create(model, tok, adapter="scalar_affine", template=template, site=site)
    assert isinstance(ex.backend, HFBackend)
    assert ex.site == Site.parse(site)
    assert ex.template.name == template
    assert ex.prefix_len == int(ex.inject_mask.nonzero()[0]) > 0
    loss = ex.loss(_vectors(3), ["dog", "golden retriever", "café"])
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for name, p in ex.adapter.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


def test_loss_matches_a_hand_computed_cross_entropy(explainer):
    """Mean over target tokens then rows, targets = label + closing quote + end of turn."""
    tok = explainer.backend.tokenizer
    vectors, labels = _vectors(2), ["dog", "golden retriever"]
    got = explainer.loss(vectors, labels)
    soft = explainer.soft_tokens(vectors)
    per_row = []
    for i, label in enumerate(labels):
        target = explainer.template.target_ids(tok, label)
        ids = torch.cat([explainer.prompt_ids, torch.tensor(target)])[None]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, : len(explainer.prompt_ids)] = explainer.inject_mask
        positions = torch.arange(len(explainer.prompt_ids) - 1, ids.shape[1] - 1)[None]
        logits = explainer.backend.logits(ids, soft[i : i + 1], mask, explainer.site, positions)
        per_row.append(torch.nn.functional.cross_entropy(logits[0], torch.tensor(target)))
    torch.testing.assert_close(got, torch.stack(per_row).mean(), rtol=1e-5, atol=1e-5)
    # clamping caps each token's loss
    assert explainer.loss(vectors, labels, clamp=0.5) <= 0.5 + 1e-6


def test_explain_records(explainer):
    vectors = _vectors(3)
    sampling = Sampling(temperature=1.0, max_new_tokens=3, seed=1)
    records = explainer.explain(vectors, ids=["a", "b", "c"], scales=(1.0, 2.0), samples=2, sampling=sampling,
                                progress=False)
    assert len(records) == 3 * 2 * 2
    assert [(r["id"], r["scale"], r["sample"]) for r in records] == [
        (i, s, k) for i in "abc" for s in (1.0, 2.0) for k in (0, 1)
    ]
    for r in records:
        assert set(r) == {"id", "scale", "sample", "label", "text"}
        assert isinstance(r["label"], str) and isinstance(r["text"], str)
        assert r["label"] == explainer.template.parse_label(r["text"])
    # seeded: the same call twice gives the same records
    again = explainer.explain(vectors, ids=["a", "b", "c"], scales=(1.0, 2.0), samples=2, sampling=sampling,
                              progress=False)
    assert again == records


def test_explain_default_ids_and_single_vector(explainer):
    records = explainer.explain(_vectors(2), sampling=FAST, progress=False)
    assert [r["id"] for r in records] == ["0", "1"]
    one = explainer.explain(_vectors(1)[0], sampling=FAST, progress=False)
    assert len(one) == 1 and one[0]["label"] == records[0]["label"]


def test_explain_labels_do_not_depend_on_batching(explainer):
    vectors = _vectors(4, seed=2)
    a = explainer.explain(vectors, sampling=FAST, batch_size=4, progress=False)
    b = explainer.explain(vectors, sampling=FAST, batch_size=1, progress=False)
    assert a == b


def test_explain_streams_and_resumes(explainer, tmp_path, monkeypatch):
    vectors = _vectors(5, seed=3)
    out = tmp_path / "labels.jsonl"
    first = explainer.explain(vectors, sampling=FAST, batch_size=2, output=out, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == first

    # crash: the last two records lost and half a record written
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    generated = []
    original = explainer.generate_labels

    def counting(vecs, scales, sampling):
        generated.append(len(vecs))
        return original(vecs, scales, sampling)

    monkeypatch.setattr(explainer, "generate_labels", counting)
    second = explainer.explain(vectors, sampling=FAST, batch_size=2, output=out, progress=False)
    assert second == first
    # only the batches holding missing jobs ran: [2, 3] (3 missing) and [4]
    assert generated == [2, 1]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(records, key=lambda r: int(r["id"])) == first
    assert len({r["id"] for r in records}) == len(records) == 5

    # a complete file: nothing left to do
    generated.clear()
    assert explainer.explain(vectors, sampling=FAST, output=out, progress=False) == first
    assert generated == []


def test_explain_refuses_bad_inputs(explainer):
    with pytest.raises(VectorError):
        explainer.explain(_vectors(2, d=63), sampling=FAST, progress=False)
    bad = _vectors(2)
    bad[1, 5] = float("nan")
    with pytest.raises(VectorError):
        explainer.explain(bad, sampling=FAST, progress=False)
    with pytest.raises(VectorError):
        explainer.explain(_vectors(2), ids=["x", "x"], sampling=FAST, progress=False)
    with pytest.raises(VectorError):
        explainer.explain(_vectors(2), ids=["x"], sampling=FAST, progress=False)
    with pytest.raises(VectorError, match="temperature"):
        explainer.explain(_vectors(2), samples=2, sampling=FAST, progress=False)
    with pytest.raises(VectorError):
        explainer.loss(_vectors(2, d=65), ["a", "b"])
    inf = _vectors(2)
    inf[0, 0] = float("inf")
    with pytest.raises(VectorError):
        explainer.loss(inf, ["a", "b"])


@pytest.mark.parametrize("options", [{"scales": (float("nan"),)}, {"scales": (1.0, float("inf"))}, {"scales": ()},
                                     {"scales": ("big",)}, {"samples": 0}, {"batch_size": 0}, {"batch_size": -4}])
def test_explain_refuses_options_that_would_do_nothing_or_never_resume(explainer, tmp_path, options):
    """A NaN scale never equals itself, so every resume would label all vectors again; samples 0
    or batch size 0 would exit having done nothing. Refused before the output file exists."""
    output = tmp_path / "labels.jsonl"
    with pytest.raises(OptionError):
        explainer.explain(_vectors(2), sampling=FAST, progress=False, output=output, **options)
    assert not output.exists()


@pytest.mark.parametrize("scales", [(1.0, 1.0), (1, 1.0), (2.0, 1.0, 2)])
def test_a_repeated_scale_is_refused(explainer, tmp_path, scales):
    """`--scale 1 --scale 1` wrote every record twice (one job per (vector, scale, sample), and the
    scale listed twice); each scale must now be given once."""
    output = tmp_path / "labels.jsonl"
    with pytest.raises(OptionError, match=r"given more than once; give each scale once"):
        explainer.explain(_vectors(2), scales=scales, sampling=FAST, progress=False, output=output)


@pytest.mark.parametrize("vectors", [torch.zeros(0, 64), torch.zeros(0), torch.zeros(2, 0, 64), "abc", None,
                                     {"a": 1}, [[1.0], [1.0, 2.0]]],
                         ids=["no rows", "zero width", "(N, 0, d)", "str", "None", "dict", "ragged list"])
def test_explain_refuses_empty_or_non_tensor_vectors(explainer, tmp_path, vectors):
    """No rows returned no labels (silent success, an empty output); a str, None or a dict was
    torch's TypeError or RuntimeError. Now one line each, before the output file exists."""
    output = tmp_path / "labels.jsonl"
    with pytest.raises(VectorError) as info:
        explainer.explain(vectors, sampling=FAST, progress=False, output=output)
    assert "\n" not in str(info.value) and not output.exists()


@pytest.mark.parametrize("scales", [1.0, 2, "1.0", None, torch.tensor(1.0)])
def test_explain_refuses_a_scale_that_is_not_a_sequence(explainer, tmp_path, scales):
    """scales=1.0 was `TypeError: 'float' object is not iterable`; "1.0" was read as the scales
    '1', '.', '0'."""
    output = tmp_path / "labels.jsonl"
    with pytest.raises(OptionError, match=r"scales= takes a sequence of numbers.*scales=\(1\.0,\)"):
        explainer.explain(_vectors(1), scales=scales, sampling=FAST, progress=False, output=output)
    assert not output.exists()


def test_adapter_for_another_width_is_refused(tiny_llama):
    model, tok = tiny_llama
    backend = HFBackend(model, tok)
    from selfinterp_plugins.templates import PromptTemplate

    adapter = make_adapter(AdapterConfig("scalar_affine", d_model=32))
    with pytest.raises(VectorError, match="d_model"):
        Explainer(backend, adapter, PromptTemplate.chat(tok), Site())


# ---- artifacts -----------------------------------------------------------------------------


@pytest.fixture()
def saved(explainer, tmp_path):
    explainer.metadata = {"source": "test", "layer": 1}
    return explainer.save_pretrained(tmp_path / "explainer")


def test_save_pretrained_writes_json_and_safetensors_only(explainer, saved):
    assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config = json.loads((saved / CONFIG_FILE).read_text())
    assert config["adapter"]["kind"] == "scalar_affine"
    assert config["d_model"] == 64
    assert config["embedding_fingerprint"] == explainer.backend.fingerprint()
    assert config["site"]["kind"] == "embed"
    assert config["template"]["placeholder"] == explainer.template.placeholder
    assert config["metadata"] == {"source": "test", "layer": 1}
    assert "library_version" in config


@pytest.mark.parametrize("kind, site, template", [("scalar_affine", "embed", "chat"),
                                                  ("low_rank", "resid_pre.1", "echo")])
def test_save_and_reload_gives_identical_outputs(tiny_llama, tmp_path, kind, site, template):
    model, tok = tiny_llama
    ex = _perturb(Explainer.create(model, tok, adapter=kind, template=template, site=site, rank=4))
    path = ex.save_pretrained(tmp_path / "ex")
    torch.manual_seed(99)  # a fresh low-rank init would differ; loading must overwrite it
    again = Explainer.from_pretrained(path, model=model, tokenizer=tok)
    vectors = _vectors(3, seed=4)
    assert torch.equal(again.soft_tokens(vectors), ex.soft_tokens(vectors))
    assert torch.equal(again.soft_tokens(vectors, scale=2.0), ex.soft_tokens(vectors, scale=2.0))
    assert again.template == ex.template
    assert again.site == ex.site
    assert again.adapter.config == ex.adapter.config
    assert again.explain(vectors, sampling=FAST, progress=False) == ex.explain(vectors, sampling=FAST, progress=False)


def test_from_pretrained_onto_another_model(tiny, saved):
    other, tok = tiny("llama", seed=1)
    with pytest.raises(ModelMismatchError, match="check_model=False"):
        Explainer.from_pretrained(saved, model=other, tokenizer=tok)
    # the escape hatch works when the user insists
    assert Explainer.from_pretrained(saved, model=other, tokenizer=tok, check_model=False).adapter.kind == "scalar_affine"


def test_from_pretrained_onto_another_width(tiny, saved):
    other, tok = tiny("llama", seed=0)
    config = json.loads((saved / CONFIG_FILE).read_text())
    config["d_model"] = 128
    config["embedding_fingerprint"] = None
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelMismatchError):
        Explainer.from_pretrained(saved, model=other, tokenizer=tok)


def test_missing_directory(tiny_llama, tmp_path):
    with pytest.raises(ArtifactError, match="No explainer directory"):
        Explainer.from_pretrained(tmp_path / "nope", model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_missing_weights(tiny_llama, saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="Missing file"):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_missing_config(tiny_llama, saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(ArtifactError, match="Missing file"):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


@pytest.mark.parametrize("payload", [b"\x00garbage bytes\xff" * 10, b"", b"{}"])
def test_corrupt_weights(tiny_llama, saved, payload):
    (saved / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_truncated_weights(tiny_llama, saved):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[: len(data) - 40])
    with pytest.raises(ArtifactError):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_weights_that_do_not_match_the_config(tiny_llama, saved):
    from safetensors.torch import save_file

    save_file({"bias": torch.zeros(64)}, str(saved / WEIGHTS_FILE))  # log_scale missing
    with pytest.raises(ArtifactError, match="does not match"):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_corrupt_config(tiny_llama, saved, text):
    (saved / CONFIG_FILE).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ArtifactError):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_config_without_adapter_section(tiny_llama, saved):
    config = json.loads((saved / CONFIG_FILE).read_text())
    del config["adapter"]
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ArtifactError):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_without_running_it(tiny_llama, saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"bias": _Exploit(str(marker))})
    # sanity: unpickling this payload really would create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Exploit(str(probe)))).close()
    assert probe.exists()

    (saved / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(ArtifactError):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert not marker.exists()

    # the same for a torch.save() zip archive disguised as safetensors
    torch.save({"bias": torch.zeros(64)}, saved / WEIGHTS_FILE)
    with pytest.raises(ArtifactError):
        Explainer.from_pretrained(saved, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_sampled_explain_resumes_to_the_uninterrupted_result(explainer, tmp_path):
    """Seeds follow the job list, not what is left to do: a resumed sampled run (crash mid-batch
    included) writes exactly the records an uninterrupted run writes."""
    vectors = _vectors(5, seed=5)
    sampling = Sampling(temperature=1.0, max_new_tokens=3, seed=7)
    out = tmp_path / "sampled.jsonl"
    first = explainer.explain(vectors, scales=(1.0, 3.0), sampling=sampling, batch_size=4, output=out, progress=False)
    assert len(first) == 10
    lines = out.read_text(encoding="utf-8").splitlines()
    for keep in (6, 4, 0):  # mid-batch, at a batch boundary, nothing
        out.write_text("".join(line + "\n" for line in lines[:keep]), encoding="utf-8")
        again = explainer.explain(vectors, scales=(1.0, 3.0), sampling=sampling, batch_size=4, output=out,
                                  progress=False)
        assert again == first, keep
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(records) == 10
        assert sorted(records, key=lambda r: (int(r["id"]), r["scale"])) == first


def test_recall_refuses_a_truth_outside_the_candidates():
    """A true title the retrieval cannot rank is a user error, not a KeyError."""
    from selfinterp_plugins.errors import ArtifactError
    from selfinterp_plugins.evaluation.scoring import recall_at_k

    class _Embedder:
        def encode(self, texts):
            return torch.eye(len(texts), 4)

    records = [{"id": "0", "scale": 1.0, "label": "cat"}]
    with pytest.raises(ArtifactError, match="missing from the candidates"):
        recall_at_k(records, {"0": "dog"}, ["cat", "bird"], embedder=_Embedder())


def _outputs(explainer):
    return explainer.loss(_vectors(3), ["a", "b", "c"]).item()


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_a_save_killed_at_any_step_leaves_the_old_explainer_or_the_new_one(tiny_llama, tmp_path, monkeypatch, kill_at):
    """Weights and config are two files: a kill between their renames used to leave new weights under
    the old config (another adapter kind: `Missing key(s) "log_scale"`). Each file operation of a
    save (weights staged, config commit, move, config rewrite) is interrupted in turn."""
    import os as os_module

    from selfinterp_plugins.storage import _commits as artifact_files
    from selfinterp_plugins.storage import _files as serialization

    model, tok = tiny_llama
    old = Explainer.create(model, tokenizer=tok, adapter="scalar_affine", template="echo")
    old.save_pretrained(tmp_path / "ex")
    new = Explainer.create(model, tokenizer=tok, adapter="full_rank", template="echo")
    calls = {"n": 0}
    real_replace = os_module.replace

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(serialization.os, "replace", replace)
    monkeypatch.setattr(artifact_files.os, "replace", replace)
    try:
        new.save_pretrained(tmp_path / "ex")
        finished = True
    except KeyboardInterrupt:
        finished = False
    monkeypatch.undo()
    loaded = Explainer.from_pretrained(tmp_path / "ex", model=model, tokenizer=tok)
    expected = new if finished or loaded.adapter.kind == "full_rank" else old
    assert loaded.adapter.kind == expected.adapter.kind
    assert _outputs(loaded) == pytest.approx(_outputs(expected), abs=1e-6)
    # before the config's commit (staging the weights): the old explainer; from it on: the new one
    assert loaded.adapter.kind == ("scalar_affine" if kill_at <= 2 else "full_rank")
    again = Explainer.create(model, tokenizer=tok, adapter="low_rank", template="echo")
    again.save_pretrained(tmp_path / "ex")  # and the next save finishes whatever was left
    assert Explainer.from_pretrained(tmp_path / "ex", model=model, tokenizer=tok).adapter.kind == "low_rank"
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])


def test_an_output_resumes_only_for_the_same_run(explainer, tiny_llama, tmp_path, monkeypatch):
    """`--output` pointing at another run's JSONL mixed two runs' labels (another explainer, other
    sampling) or died on `KeyError: 'scale'` (another kind of file); now one line each, the file
    untouched. `<output>.run.json` records the run; a file written before it resumes as before."""
    from selfinterp_plugins.errors import RunMismatchError

    vectors = _vectors(3, seed=5)
    out = tmp_path / "labels.jsonl"
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    manifest = tmp_path / "labels.jsonl.run.json"
    before = out.read_bytes()
    assert json.loads(manifest.read_text())["sampling"]["max_new_tokens"] == FAST.max_new_tokens

    other = Explainer.create(*tiny_llama, adapter="scalar_affine", template="chat")
    other.adapter.load_state_dict({k: v + 1.0 for k, v in explainer.adapter.state_dict().items()})  # surely other weights
    with pytest.raises(RunMismatchError, match="labels of another explainer"):
        other.explain(vectors, sampling=FAST, output=out, progress=False)
    hotter = Sampling(temperature=0.7, max_new_tokens=FAST.max_new_tokens)
    with pytest.raises(RunMismatchError, match=r"temperature=0.0, this run asks 0.7; rerun with temperature=0.0 "
                                              r"\(--temperature 0.0\)"):
        explainer.explain(vectors, sampling=hotter, output=out, progress=False)
    assert out.read_bytes() == before

    generated = []
    monkeypatch.setattr(explainer, "generate_labels", lambda *a: generated.append(1) or [])
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)  # the same run: nothing to redo
    assert not generated
    monkeypatch.undo()

    manifest.unlink()  # an output written before manifests: resumed, and its run recorded from now on
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    assert manifest.exists() and out.read_bytes() == before

    out.unlink()  # "delete the output to start over": its leftover manifest must not refuse the fresh run
    other.explain(vectors, sampling=FAST, output=out, progress=False)
    assert len(out.read_text().splitlines()) == 3

    scores = tmp_path / "scores.jsonl"
    scores.write_text(json.dumps({"id": "0", "label": "cat", "hit_rate": 0.5}) + "\n")
    with pytest.raises(ArtifactError, match=r"scores.jsonl:1 is not an explain record"):
        explainer.explain(vectors, sampling=FAST, output=scores, progress=False)
    assert scores.read_text() == json.dumps({"id": "0", "label": "cat", "hit_rate": 0.5}) + "\n"


def test_an_output_resumes_only_for_the_vectors_it_was_written_from(explainer, tiny_llama, tmp_path, monkeypatch):
    """`explain --output OUT` resumed into an output made from other vectors under the same ids:
    every record found was kept, so a dataset rebuilt with other vectors got its old labels (the
    tester's 298 of 300 stale, exit 0). `<output>.run.json` now records what was read (the vectors
    and ids as one SHA-256, their count, the scales, the samples, and the frozen weights' dtype),
    and each difference is one line naming it and the fix, the output untouched."""
    import copy

    from selfinterp_plugins.errors import RunMismatchError

    vectors = _vectors(3, seed=11)
    out = tmp_path / "labels.jsonl"
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    before = out.read_bytes()
    saved = json.loads((tmp_path / "labels.jsonl.run.json").read_text())
    assert saved["inputs"]["vectors"] == 3 and saved["inputs"]["scales"] == [1.0] and saved["model_dtype"] == "float32"

    changed = vectors.clone()
    changed[1, 0] += 0.5  # one vector of three differs, its id the same
    refusals = [
        (dict(vectors=changed), r"labels.jsonl holds labels of other vectors or ids \(their SHA-256 differs"),
        (dict(vectors=vectors, ids=["0", "1", "x"]), r"holds labels of other vectors or ids"),
        (dict(vectors=_vectors(4, seed=11)), r"holds labels of 3 vectors, this run gives 4; resume it with the vectors"),
        (dict(vectors=vectors, scales=(1.0, 2.0)), r"written with scales \[1.0\], this run asks \[1.0, 2.0\]; rerun "
                                                   r"with --scale 1, or choose another output"),
    ]
    for options, match in refusals:
        with pytest.raises(RunMismatchError, match=match):
            explainer.explain(sampling=FAST, output=out, progress=False, **options)
        assert out.read_bytes() == before

    model, tok = tiny_llama
    half = Explainer.create(copy.deepcopy(model).to(torch.bfloat16), tok, adapter="scalar_affine", template="chat")
    half.adapter.load_state_dict(explainer.adapter.state_dict())  # the same explainer, bfloat16 frozen weights
    with pytest.raises(RunMismatchError, match=r"written with the frozen weights in float32, this run holds them in "
                                              r"bfloat16; rerun with --dtype float32"):
        half.explain(vectors, sampling=FAST, output=out, progress=False)
    assert out.read_bytes() == before

    hot = tmp_path / "sampled.jsonl"
    sampled = Sampling(temperature=0.7, max_new_tokens=FAST.max_new_tokens)
    explainer.explain(vectors, sampling=sampled, samples=1, output=hot, progress=False)
    with pytest.raises(RunMismatchError, match=r"samples=1, this run asks 2; rerun with samples=1 \(--samples 1\)"):
        explainer.explain(vectors, sampling=sampled, samples=2, output=hot, progress=False)

    # a manifest written before inputs were recorded: resumed (nothing to redo), and completed
    legacy = {k: v for k, v in saved.items() if k in ("explainer", "sampling")}
    (tmp_path / "labels.jsonl.run.json").write_text(json.dumps(legacy))
    generated = []
    monkeypatch.setattr(explainer, "generate_labels", lambda *a: generated.append(1) or [])
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    assert not generated and out.read_bytes() == before
    assert json.loads((tmp_path / "labels.jsonl.run.json").read_text()) == saved


def test_an_output_manifest_is_compared_as_a_checkpoints_is(explainer, tmp_path):
    """Explain outputs and training checkpoints find "the same run" with one comparison
    (storage._manifests.first_difference): a sampling field only the saved manifest has (a newer
    version's option) is a difference too, named in the one line, instead of being ignored."""
    from selfinterp_plugins.errors import RunMismatchError

    vectors = _vectors(2, seed=6)
    out = tmp_path / "labels.jsonl"
    explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    manifest = tmp_path / "labels.jsonl.run.json"
    saved = json.loads(manifest.read_text())
    saved["sampling"]["min_p"] = 0.1
    manifest.write_text(json.dumps(saved))
    before = out.read_bytes()
    with pytest.raises(RunMismatchError, match=r"written with sampling min_p=0.1, this run asks None; rerun with "
                                              r"min_p=0.1, or choose another output"):
        explainer.explain(vectors, sampling=FAST, output=out, progress=False)
    assert out.read_bytes() == before


def test_own_vectors_through_hf_keep_their_vector_spec(tiny_llama, tmp_path):
    from own_vectors import check_own_vectors

    model, tok = tiny_llama

    def read(explainer, word):
        ids = torch.tensor([explainer.vector_prompt(word, tokenize=True)])
        with torch.no_grad():
            return model(input_ids=ids, output_hidden_states=True).hidden_states[2]  # after layer 1

    check_own_vectors(model, tok, 1, read, tmp_path)


def test_training_on_vectors_of_unknown_origin_says_no_spec_will_be_saved(tiny_llama):
    model, tok = tiny_llama
    data = VectorLabelDataset(torch.randn(4, 64), [{"label": w} for w in ("a", "b", "c", "d")])
    with pytest.warns(UserWarning, match=r"meta has no 'site'\), so this explainer will save no vector_spec.*"
                                         r"meta=explainer.vector_meta\(\)"):
        Explainer.create(model, tok).train(data, config=TrainConfig(max_steps=1), progress=False)


def test_vector_meta_needs_a_spec(tiny_llama):
    with pytest.raises(VectorError, match="records no vector_spec"):
        Explainer.create(*tiny_llama).vector_meta()
