"""Bad input, fuzzed with hypothesis: vectors, labels, templates, adapter configs, explainer
configs and dataset files. Every case must end in a result or a SelfInterpError (whose message
carries the fix), never another exception type.

fuzzing.EXAMPLES inputs per property (derandomised, so CI runs the same cases every time); the counts
are in docs/reliability.md.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset
from selfinterp_plugins.adapters import AdapterConfig, make_adapter
from selfinterp_plugins.errors import SelfInterpError

from fuzzing import FUZZ, outcome

SHORT = Sampling(max_new_tokens=2)


@pytest.fixture(scope="module")
def explainer(tiny_llama):
    model, tok = tiny_llama
    return Explainer.create(model, tok, adapter="scalar_affine", template="echo")


SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30]
floats = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from(SPECIAL))


@st.composite
def vector_inputs(draw, d_model=64):
    dims = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from([0, 1, 2, d_model - 1, d_model, d_model + 1])) for _ in range(dims))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]))
    n = math.prod(shape)
    values = draw(st.lists(floats, min_size=min(n, 8), max_size=min(n, 8)))
    flat = torch.tensor((values * (n // max(len(values), 1) + 1))[:n] if values else [0.0] * n, dtype=torch.float64)
    return flat.reshape(shape).to(dtype) if dtype != torch.bool else (flat.reshape(shape) > 0)


@FUZZ
@given(vectors=vector_inputs())
def test_explain_any_vector_input(explainer, vectors):
    result = outcome(lambda: explainer.explain(vectors, sampling=SHORT, progress=False))
    if not isinstance(result, SelfInterpError):
        assert len(result) == (vectors.shape[0] if vectors.dim() == 2 else 1)


@FUZZ
@given(vectors=vector_inputs(), label=st.text(max_size=20))
def test_loss_any_vector_input(explainer, vectors, label):
    n = vectors.shape[0] if vectors.dim() >= 1 else 1
    result = outcome(lambda: explainer.loss(vectors, [label] * max(n, 1)))
    if isinstance(result, torch.Tensor):
        assert torch.isfinite(result)


labels = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(['', ' ', '"', 'say "hi"', '\n', '"\n"', "<|im_end|>", "<empty_output>", "\x00", "🙂" * 50, "a" * 400]),
)


@FUZZ
@given(batch=st.lists(labels, min_size=1, max_size=4))
def test_loss_any_labels(explainer, batch):
    vectors = torch.randn(len(batch), explainer.backend.d_model)
    result = outcome(lambda: explainer.loss(vectors, batch))
    if isinstance(result, torch.Tensor):
        assert torch.isfinite(result)


@FUZZ
@given(label=labels)
def test_dataset_rows_any_label(label):
    outcome(lambda: VectorLabelDataset(torch.randn(1, 4), [{"id": "a", "label": label}]))


@FUZZ
@given(text=st.one_of(st.text(max_size=80), st.sampled_from(
    ["<empty_output>", "<empty_output> <empty_output>", "x <empty_output> y", "chat", "echo", "selfie", "patchscopes",
     "What is <empty_output>?\n", "{placeholder}", "<|im_start|>", "<|im_end|><empty_output>"])))
def test_any_template_text(tiny_llama, text):
    model, tok = tiny_llama
    result = outcome(lambda: Explainer.create(model, tok, template=text))
    if isinstance(result, Explainer):
        assert len(result.explain(torch.randn(1, result.backend.d_model), sampling=SHORT, progress=False)) == 1


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)


@FUZZ
@given(config=st.dictionaries(st.sampled_from(["kind", "d_model", "init_scale", "rank", "low_rank_init_factor", "other"]),
                              st.one_of(json_values, st.sampled_from(["scalar_affine", "full_rank", "low_rank", 64, -1, 0])),
                              max_size=6))
def test_any_adapter_config(config):
    def build():
        parsed = AdapterConfig.from_dict(config)
        if parsed.d_model > 1024 or getattr(parsed, "rank", 0) > 1024:  # valid, but too big to build in a test
            return parsed
        adapter = make_adapter(parsed)
        adapter(torch.randn(2, adapter.d_model))
        return adapter

    outcome(build)


@pytest.fixture(scope="module")
def saved_explainer(explainer, tmp_path_factory):
    return explainer.save_pretrained(tmp_path_factory.mktemp("fuzz") / "explainer")


@FUZZ
@given(field=st.sampled_from(["adapter", "template", "site", "d_model", "embedding_fingerprint", "metadata", "model_id"]),
       value=json_values, drop=st.booleans())
def test_any_explainer_config(tiny_llama, saved_explainer, tmp_path_factory, field, value, drop):
    model, tok = tiny_llama
    directory = tmp_path_factory.mktemp("cfg")
    config = json.loads((saved_explainer / "explainer_config.json").read_text())
    if drop:
        config.pop(field, None)
    else:
        config[field] = value
    (directory / "explainer_config.json").write_text(json.dumps(config))
    (directory / "adapter.safetensors").write_bytes((saved_explainer / "adapter.safetensors").read_bytes())
    result = outcome(lambda: Explainer.from_pretrained(directory, model=model, tokenizer=tok))
    if isinstance(result, Explainer):
        assert len(result.explain(torch.randn(1, result.backend.d_model), sampling=SHORT, progress=False)) == 1


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    records = [{"id": str(i), "label": w, "split": "train"} for i, w in enumerate(["dog", "tree", "house"])]
    return VectorLabelDataset(torch.randn(3, 8), records, {"source": "fuzz"}).save(tmp_path_factory.mktemp("ds") / "d")


@FUZZ
@given(target=st.sampled_from(["vectors.safetensors", "labels.jsonl", "dataset.json"]),
       cut=st.floats(0, 1), garbage=st.binary(max_size=40), mode=st.sampled_from(["truncate", "append", "replace", "delete"]),
       row=json_values)
def test_any_damaged_dataset_file(saved_dataset, tmp_path_factory, target, cut, garbage, mode, row):
    directory = tmp_path_factory.mktemp("damaged")
    for name in ("vectors.safetensors", "labels.jsonl", "dataset.json"):
        (directory / name).write_bytes((saved_dataset / name).read_bytes())
    path = directory / target
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: int(len(data) * cut)])
    elif mode == "append":
        path.write_bytes(data + garbage)
    elif mode == "replace" and target == "labels.jsonl":
        lines = data.decode().splitlines()
        lines[int(cut * (len(lines) - 1))] = json.dumps(row)
        path.write_text("\n".join(lines) + "\n")
    elif mode == "replace":
        path.write_bytes(json.dumps(row).encode() if target == "dataset.json" else garbage)
    else:
        path.unlink()
    result = outcome(lambda: VectorLabelDataset.load(directory))
    if isinstance(result, VectorLabelDataset):
        assert len(result) == result.vectors.shape[0]


# ---- every other file the core reads, field by field (the validation layer) --------------------


def _set(config: dict, key: str, value, drop: bool) -> dict:
    """`config` (a copy) with the dotted `key` dropped or set to `value`."""
    config = json.loads(json.dumps(config))
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
        target = target[p]
    if drop:
        target.pop(leaf, None)
    else:
        target[leaf] = value
    return config


TEXTS = st.sampled_from(["", "<empty_output>", "x" * 20_000, '"', "\n"])


@FUZZ
@given(key=st.sampled_from(["template.prompt", "template.placeholder", "template.closing", "template.end",
                            "template.label_prefix", "template.name", "template.stop_at_closing", "site.kind",
                            "site.layer", "site.mode", "site.coef", "weights_file", "library_version"]),
       value=st.one_of(json_values, TEXTS), drop=st.booleans())
def test_any_template_or_site_field(tiny_llama, saved_explainer, tmp_path_factory, key, value, drop):
    model, tok = tiny_llama
    directory = tmp_path_factory.mktemp("ts")
    config = _set(json.loads((saved_explainer / "explainer_config.json").read_text()), key, value, drop)
    (directory / "explainer_config.json").write_text(json.dumps(config))
    (directory / "adapter.safetensors").write_bytes((saved_explainer / "adapter.safetensors").read_bytes())
    result = outcome(lambda: Explainer.from_pretrained(directory, model=model, tokenizer=tok))
    if isinstance(result, Explainer):
        assert len(result.explain(torch.randn(1, result.backend.d_model), sampling=SHORT, progress=False)) == 1


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["d_model", "count", "model", "site", "source"]),
                            st.one_of(json_values, st.sampled_from([8, 3, 0, -1])), max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8,
                              torch.bool]),
       label=json_values, label_id=json_values)
def test_any_dataset_meta_vectors_dtype_and_label_record(saved_dataset, tmp_path_factory, meta, dtype, label, label_id):
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("meta")
    (directory / "labels.jsonl").write_text((saved_dataset / "labels.jsonl").read_text()
                                            + json.dumps({"id": label_id, "label": label}) + "\n")
    save_file({"vectors": torch.ones(4, 8).to(dtype)}, str(directory / "vectors.safetensors"))
    (directory / "dataset.json").write_text(json.dumps(meta))
    result = outcome(lambda: VectorLabelDataset.load(directory))
    if isinstance(result, VectorLabelDataset):  # never cast from int / bool, never at odds with its meta
        assert dtype.is_floating_point and meta.get("d_model") in (None, 8) and result.vectors.dtype == torch.float32
        assert len(result) == 4 and result.labels[-1] == label


@FUZZ
@given(key=st.sampled_from(["step", "history", "history.train_loss", "history.validation_loss", "history.seconds",
                            "files", "files.adapter", "run", "run.seed"]),
       value=st.one_of(json_values, st.sampled_from([0, 1, 2, 1e30, 10**15, -1, "2", [1.0, "x"]])), drop=st.booleans())
def test_any_training_state_json(tiny_llama, checkpointed_run, tmp_path_factory, key, value, drop):
    import shutil

    from selfinterp_plugins import Explainer as E

    data, config, out = checkpointed_run
    run = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(out, run)
    state = _set(json.loads((run / "checkpoint" / "state.json").read_text()), key, value, drop)
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    result = outcome(lambda: E.create(*tiny_llama).train(data, config=config, output_dir=run, progress=False))
    if isinstance(result, dict):
        assert result["steps"] == 2


@FUZZ
@given(config=st.dictionaries(st.sampled_from(["model", "explainers", "baselines", "layer", "validation_topics", "test_topics",
                                               "knowledge_control", "max_new_tokens", "seed", "sweep_layers", "other"]),
                              st.one_of(json_values, st.sampled_from(["ten", "s", ["shipped"], [1, 2], 0, 5, True])),
                              max_size=5))
def test_any_report_config(tmp_path_factory, config):
    from selfinterp_plugins.evaluation.report import ReportConfig

    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(json.dumps(config))
    from selfinterp_plugins.storage._files import read_json

    result = outcome(lambda: ReportConfig.from_dict(read_json(path), source=str(path)))
    if isinstance(result, ReportConfig):
        assert all(isinstance(e, str) and e for e in result.explainers) and result.test_topics >= 1
        assert isinstance(result.knowledge_control, bool) and (result.layer is None or result.layer >= 0)


@FUZZ
@given(depth=st.integers(1, 3000), wrapper=st.sampled_from(["list", "dict"]), junk=st.binary(max_size=20))
def test_any_nesting_or_bytes_in_a_json_file(tmp_path_factory, depth, wrapper, junk):
    from selfinterp_plugins.storage._files import read_json, read_jsonl

    directory = tmp_path_factory.mktemp("deep")
    inner = "[" * depth + "]" * depth if wrapper == "list" else '{"a":' * depth + "1" + "}" * depth
    (directory / "c.json").write_bytes(b'{"x": ' + inner.encode() + b"}" + junk)
    (directory / "r.jsonl").write_bytes(inner.encode() + b"\n" + junk)
    for read in (lambda: read_json(directory / "c.json"), lambda: read_jsonl(directory / "r.jsonl")):
        outcome(read)
