"""Training adapters against a frozen model: loss goes down, ridge init, checkpoints, resume."""

from __future__ import annotations

import json

import pytest
import torch

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.adapters import BUILTIN_ADAPTERS
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.training import CHECKPOINT_DIR, epoch_batches, evaluate_loss, first_token_embeddings

WORDS = ["dog", "tree", "house", "river"]


def synthetic(n=64, d=64, seed=0, split="train"):
    """Vectors clustered around one direction per label, so the map is learnable."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(WORDS), d, generator=torch.Generator().manual_seed(1234)) * 3
    which = torch.arange(n) % len(WORDS)
    vectors = centres[which] + 0.3 * torch.randn(n, d, generator=g)
    records = [{"id": f"{split}-{i}", "label": WORDS[int(w)], "split": split} for i, w in enumerate(which)]
    return VectorLabelDataset(vectors, records, {"source": "synthetic"})


@pytest.fixture(scope="module")
def data():
    return synthetic(64, seed=0)


@pytest.fixture(scope="module")
def validation():
    return synthetic(16, seed=1, split="validation")


def make(tiny_llama, kind="scalar_affine", **options):
    model, tok = tiny_llama
    return Explainer.create(model, tok, adapter=kind, template="chat", **options)


def state(explainer):
    return {k: v.detach().clone() for k, v in explainer.adapter.state_dict().items()}


@pytest.fixture(scope="module")
def sharp_llama():
    """A tiny llama with larger weights: its output depends on the soft token enough to learn from
    (with the default init the logits are near uniform whatever the input)."""
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, initializer_range=0.2)


def test_training_lowers_training_and_validation_loss(sharp_llama, data, validation):
    ex = make(sharp_llama)
    before_val = evaluate_loss(ex, validation)
    before_train = evaluate_loss(ex, data)
    config = TrainConfig(epochs=3, batch_size=16, lr=5e-2, warmup_steps=2)
    history = ex.train(data, validation, config, progress=False)
    assert history["steps"] == 12
    assert len(history["train_loss"]) == 12
    assert len(history["validation_loss"]) == 3  # one per epoch
    assert history["validation_loss"][-1] == pytest.approx(evaluate_loss(ex, validation), rel=1e-5)
    assert history["validation_loss"][-1] < before_val - 0.3
    assert history["validation_loss"] == sorted(history["validation_loss"], reverse=True)
    assert evaluate_loss(ex, data) < before_train - 0.3
    assert history["config"] == config.to_dict()
    assert not ex.adapter.training  # left in eval mode
    assert all(not p.requires_grad for p in ex.backend.model.parameters())


def test_ridge_init_path(tiny_llama, data, validation):
    ex = make(tiny_llama)
    history = ex.train(data, validation, TrainConfig(init="ridge", max_steps=0), progress=False)
    assert history["steps"] == 0
    assert "validation_loss_at_init" in history
    assert history["validation_loss_at_init"] == pytest.approx(evaluate_loss(ex, validation), rel=1e-5)
    # the adapter is exactly the closed-form fit onto the labels' first-token embeddings
    expected = make(tiny_llama)
    targets = first_token_embeddings(expected, data.labels)
    assert targets.shape == (len(data), 64)
    tok = ex.backend.tokenizer
    assert torch.equal(targets[0], ex.backend.embed_tokens(torch.tensor([tok(data.labels[0])["input_ids"][0]]))[0])
    expected.adapter.ridge_init(data.vectors, targets, 1.0)
    for k, v in state(expected).items():
        torch.testing.assert_close(state(ex)[k], v)
    assert not torch.allclose(ex.adapter.bias, torch.zeros(64))

    # and training continues from there
    history = ex.train(data, validation, TrainConfig(init="ridge", max_steps=2, batch_size=16), progress=False)
    assert history["steps"] == 2 and all(map(torch.isfinite, map(torch.tensor, history["train_loss"])))


def test_training_is_reproducible(tiny_llama, data):
    config = TrainConfig(epochs=1, batch_size=16, warmup_steps=2)
    a, b = make(tiny_llama), make(tiny_llama)
    a.train(data, None, config, progress=False)
    b.train(data, None, config, progress=False)
    for k, v in state(a).items():
        assert torch.equal(state(b)[k], v)


def _assert_same_state(a, b, atol=1e-6):
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=atol, msg=k)


def test_resume_after_max_steps_equals_uninterrupted(tiny_llama, data, validation, tmp_path):
    """max_steps within the warm-up leaves the learning rates of those steps unchanged, so
    stopping there and resuming with the full config replays the uninterrupted run exactly."""
    full = TrainConfig(epochs=2, batch_size=16, warmup_steps=4, lr=5e-2)  # 8 steps
    reference = make(tiny_llama)
    ref_history = reference.train(data, validation, full, output_dir=tmp_path / "ref", progress=False)
    assert ref_history["steps"] == 8

    first = make(tiny_llama)
    partial = TrainConfig(**dict(full.to_dict(), max_steps=3))
    assert first.train(data, validation, partial, output_dir=tmp_path / "run", progress=False)["steps"] == 3
    assert json.loads((tmp_path / "run" / CHECKPOINT_DIR / "state.json").read_text())["step"] == 3

    resumed = make(tiny_llama)  # new explainer, fresh adapter: everything comes from the checkpoint
    history = resumed.train(data, validation, full, output_dir=tmp_path / "run", progress=False)
    assert history["steps"] == 8
    _assert_same_state(state(reference), state(resumed))
    assert history["train_loss"] == pytest.approx(ref_history["train_loss"], abs=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_resume_after_a_crash_equals_uninterrupted(tiny_llama, data, tmp_path, monkeypatch):
    full = TrainConfig(epochs=2, batch_size=16, warmup_steps=2, checkpoint_every=3)  # 8 steps
    reference = make(tiny_llama)
    reference.train(data, None, full, progress=False)

    crashing = make(tiny_llama)
    calls = {"n": 0}
    original = crashing.loss

    def loss_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(crashing, "loss", loss_then_crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train(data, None, full, output_dir=tmp_path, progress=False)
    # checkpoints at step 3 (checkpoint_every) and 4 (end of epoch); step 5 ran but was not saved
    assert json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())["step"] == 4

    resumed = make(tiny_llama)
    assert resumed.train(data, None, full, output_dir=tmp_path, progress=False)["steps"] == 8
    _assert_same_state(state(reference), state(resumed))


def test_a_crash_between_checkpoint_files_resumes_exactly(tiny_llama, data, tmp_path, monkeypatch):
    """Killed after the step-6 weights are written but before state.json commits them: the resume
    must start from the last committed step, not pair new weights with an old state."""
    import selfinterp_plugins.training as training

    full = TrainConfig(epochs=2, batch_size=16, warmup_steps=2, checkpoint_every=3)  # 8 steps
    reference = make(tiny_llama)
    reference.train(data, None, full, progress=False)
    original = training.write_json

    def crash_at_step_6(data_, path):
        if data_.get("step") == 6:
            raise KeyboardInterrupt
        original(data_, path)

    monkeypatch.setattr(training, "write_json", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        make(tiny_llama).train(data, None, full, output_dir=tmp_path, progress=False)
    monkeypatch.setattr(training, "write_json", original)
    assert json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())["step"] == 4
    resumed = make(tiny_llama)
    assert resumed.train(data, None, full, output_dir=tmp_path, progress=False)["steps"] == 8
    _assert_same_state(state(reference), state(resumed))


def test_a_checkpoint_naming_files_outside_its_directory_is_refused(tiny_llama, data, tmp_path):
    make(tiny_llama).train(data, None, TrainConfig(epochs=1, batch_size=16), output_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_DIR / "state.json"
    saved = json.loads(path.read_text())
    saved["files"]["adapter"] = "../../elsewhere.safetensors"
    path.write_text(json.dumps(saved))
    with pytest.raises(ArtifactError, match="is a path, not a bare file name"):
        make(tiny_llama).train(data, None, TrainConfig(epochs=2, batch_size=16), output_dir=tmp_path, progress=False)


def test_checkpoint_files_are_safetensors_and_json_only(tiny_llama, data, validation, tmp_path):
    ex = make(tiny_llama)
    ex.train(data, validation, TrainConfig(epochs=1, batch_size=16, checkpoint_every=2), output_dir=tmp_path,
             progress=False)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"{CHECKPOINT_DIR}/adapter-4.safetensors", f"{CHECKPOINT_DIR}/optimizer-4.safetensors",
                     f"{CHECKPOINT_DIR}/state.json", "train_log.jsonl"]  # older steps' files removed
    from safetensors.torch import load_file

    optimizer = load_file(str(tmp_path / CHECKPOINT_DIR / "optimizer-4.safetensors"))
    assert {k.split("::")[1] for k in optimizer} == {"step", "exp_avg", "exp_avg_sq"}
    assert {k.split("::")[0] for k in optimizer} == {"log_scale", "bias"}
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert "validation_loss" in log[-1]


@pytest.mark.parametrize("kind", sorted(BUILTIN_ADAPTERS))
def test_every_kind_trains_one_step(tiny_llama, data, kind):
    ex = make(tiny_llama, kind, rank=4)
    before = state(ex)
    history = ex.train(data, None, TrainConfig(max_steps=1, batch_size=8, warmup_steps=0), progress=False)
    assert history["steps"] == 1 and history["train_loss"][0] > 0
    after = state(ex)
    for name, p in ex.adapter.named_parameters():
        assert torch.isfinite(p).all()
        if p.requires_grad:
            assert not torch.equal(after[name], before[name]), name
        else:
            assert torch.equal(after[name], before[name]), name


@pytest.mark.parametrize("kind", ["scalar_affine", "full_rank", "low_rank", "scalar_affine_plus_low_rank", "bias_only",
                                  "scale_only"])
def test_every_kind_has_a_ridge_init(tiny_llama, data, kind):
    ex = make(tiny_llama, kind, rank=4)
    ex.train(data, None, TrainConfig(init="ridge", max_steps=0), progress=False)
    assert all(torch.isfinite(p).all() for p in ex.adapter.parameters())


# ---- the real model ------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_smollm2_topic_training_lowers_validation_loss(smollm2):
    """WordNet topic vectors (resid_post.6) on SmolLM2: a scalar_affine adapter, ridge-initialised,
    then 6 AdamW steps of batch 12, lowers the validation loss below both the paper init and the
    ridge init. (Sized for a shared 2-core CPU: ~25-45 s; a step of batch 16 costs ~3 s there.)"""
    from selfinterp_plugins.topics import load_topics, topic_vectors

    model, tok = smollm2
    ex = Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed")
    topics = load_topics({"train": 72, "validation": 12, "test": 0})
    assert len(topics) == 84
    data = topic_vectors(ex.backend, topics, [6], batch_size=64, progress=False)[6]
    train, validation = data.split("train"), data.split("validation")
    assert len(train) == 72 and len(validation) == 12
    assert data.meta["site"] == "resid_post.6" and data.meta["model_fingerprint"] == ex.backend.fingerprint()
    before = evaluate_loss(ex, validation)
    config = TrainConfig(epochs=1, batch_size=12, init="ridge", max_steps=6, warmup_steps=2, lr=1e-2)
    history = ex.train(train, validation, config, progress=False)
    assert history["steps"] == 6
    at_init, after = history["validation_loss_at_init"], history["validation_loss"][-1]
    assert at_init < before, (before, at_init)
    assert after < at_init - 0.3, (before, at_init, after)
    print(f"validation loss: paper init {before:.3f}, ridge init {at_init:.3f}, after 6 steps {after:.3f}")


def test_default_lr_depends_on_adapter_size():
    """The reference's 1e-2 for scalar/bias adapters; 1e-3 for matrix adapters (docs/results.md)."""
    from selfinterp_plugins.adapters import AdapterConfig, make_adapter
    from selfinterp_plugins.training import default_lr

    small = {"scale_only", "bias_only", "scalar_affine"}
    for kind in ("scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank", "full_rank"):
        adapter = make_adapter(AdapterConfig.for_kind(kind, 64, rank=4))
        assert default_lr(adapter) == (1e-2 if kind in small else 1e-3)


# ---- length bucketing ------------------------------------------------------------------------


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("bucket", [False, True])
def test_epoch_batches_cover_every_row_once_and_are_seeded(bucket):
    lengths = [int(x) for x in torch.randint(1, 9, (1000,), generator=torch.Generator().manual_seed(0))]
    batches = epoch_batches(lengths, 32, seed=42, epoch=0, bucket=bucket)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    if not bucket:  # bucketed windows of 16 batches may each end in a short batch
        assert all(len(b) == 32 for b in batches[:-1])
    assert batches == epoch_batches(lengths, 32, seed=42, epoch=0, bucket=bucket)
    assert batches != epoch_batches(lengths, 32, seed=42, epoch=1, bucket=bucket)


def test_bucketed_batches_waste_less_padding():
    lengths = [int(x) for x in torch.randint(1, 9, (1000,), generator=torch.Generator().manual_seed(0))]
    plain = _padding(epoch_batches(lengths, 32, 42, 0, bucket=False), lengths)
    bucketed = _padding(epoch_batches(lengths, 32, 42, 0, bucket=True), lengths)
    assert bucketed < plain / 4


def test_unbucketed_batches_are_the_shuffled_order_cut_in_slices():
    """The default keeps the batches every documented run was trained with."""
    order = torch.randperm(100, generator=torch.Generator().manual_seed(42 * 1000 + 3)).tolist()
    assert epoch_batches([0] * 100, 32, 42, 3, bucket=False) == [order[i : i + 32] for i in range(0, 100, 32)]


def test_bucketed_training_resumes_to_the_uninterrupted_result(tiny_llama, data, tmp_path):
    full = TrainConfig(epochs=2, batch_size=16, warmup_steps=4, lr=5e-2, bucket_by_length=True)
    reference = make(tiny_llama)
    reference.train(data, None, full, output_dir=tmp_path / "ref", progress=False)
    first = make(tiny_llama)
    first.train(data, None, TrainConfig(**dict(full.to_dict(), max_steps=3)), output_dir=tmp_path / "run", progress=False)
    resumed = make(tiny_llama)
    resumed.train(data, None, full, output_dir=tmp_path / "run", progress=False)
    _assert_same_state(state(reference), state(resumed))


@pytest.mark.parametrize("change", [{"lr": 2e-2}, {"seed": 1}, {"weight_decay": 0.0}, {"warmup_steps": 3},
                                    {"data": "shifted"}, {"kind": "full_rank"}])
def test_resume_refuses_a_checkpoint_of_another_run(tiny_llama, data, tmp_path, change):
    """The checkpoint records the run (adapter, model, template, site, data hash, every result-changing
    TrainConfig field); a resume that differs raises RunMismatchError naming the setting, before
    the adapter is touched. checkpoint_every and max_steps may change (where a run is saved / stops)."""
    from selfinterp_plugins.errors import RunMismatchError

    base = dict(epochs=1, batch_size=16, lr=1e-2, checkpoint_every=2)
    make(tiny_llama).train(data, None, TrainConfig(**base), output_dir=tmp_path, progress=False)
    setting = next(iter(change))
    config = TrainConfig(**{**base, **{k: v for k, v in change.items() if k not in ("data", "kind")}})
    rows = VectorLabelDataset(data.vectors + 1, data.records) if setting == "data" else data
    explainer = make(tiny_llama, kind=change.get("kind", "scalar_affine"))
    before = state(explainer)
    name = {"data": "training_data_sha256", "kind": "adapter.kind"}.get(setting, setting)
    with pytest.raises(RunMismatchError, match=rf"^\S+ is the checkpoint of a run with other settings: {name} "):
        explainer.train(rows, None, config, output_dir=tmp_path, progress=False)
    for key, value in before.items():
        assert torch.equal(state(explainer)[key], value)
    # what may change on a resume
    history = make(tiny_llama).train(data, None, TrainConfig(**{**base, "checkpoint_every": 5, "max_steps": 100}),
                                     output_dir=tmp_path, progress=False)
    assert history["steps"] == 4
