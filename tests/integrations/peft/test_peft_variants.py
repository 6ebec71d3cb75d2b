"""Every PEFT variant through `WeightDiff.from_peft`: converted exactly (base + ΔW equals PEFT's own
merged weights and the PEFT model's logits within 1e-5, from a loaded PeftModel and from a saved
directory loaded onto a base) or refused naming its type; truncated SVD within its documented
tolerance, low-rank factors compressed exactly without a dense SVD, progress bars."""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft")

from selfinterp_peft import low_rank  # noqa: E402
from selfinterp_peft.weight_diff import WeightDiff, WeightDiffError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

IDS = torch.tensor([[1, 50, 200, 7, 4000, 12, 9]])
QV = ["q_proj", "v_proj"]


def untied(arch):
    """Untied embeddings: with tied ones PEFT's unmerged forward and its merge disagree (PEFT warns)."""
    return tiny_model(arch, seed=0, tie_word_embeddings=False)[0]


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _perturb(peft_model, needle, scale):
    """Non-trivial adapter weights where PEFT initialises to the identity (modules_to_save copies, IA3)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if needle in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


VARIANTS = {
    "lora": ("llama", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV, init_lora_weights=False)),
    "rslora": ("llama", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV, init_lora_weights=False,
                                                use_rslora=True)),
    # a regex alpha_pattern key, matched as PEFT matches it (`(.*\.)?(key)$`), and a per-module rank
    "rank_alpha_patterns": ("llama", lambda: peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=QV, init_lora_weights=False, rank_pattern={"v_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.q_proj": 3})),
    "embed_tokens_and_q_proj": ("llama", lambda: peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False)),
    "gpt2_fan_in_fan_out": ("gpt2", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                            init_lora_weights=False, fan_in_fan_out=True)),
    "gpt2_lora_bias": ("gpt2", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_bias=True,
                                                       init_lora_weights=False, fan_in_fan_out=True)),
    "modules_to_save": ("llama", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV, init_lora_weights=False,
                                                         modules_to_save=["lm_head"])),
    "dora": ("llama", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=QV, init_lora_weights=False,
                                              use_dora=True)),
    "loha": ("llama", lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=QV, init_weights=False)),
    "lokr": ("llama", lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=QV, init_weights=False)),
    "ia3": ("llama", lambda: peft.IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])),
    "vera": ("llama", lambda: peft.VeraConfig(r=4, target_modules=QV, init_weights=False)),
    "oft": ("llama", lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=QV, init_weights=False)),
}


def _peft_model(variant):
    arch, make = VARIANTS[variant]
    torch.manual_seed(3)
    model = peft.get_peft_model(untied(arch), make())
    _perturb(model, "modules_to_save", 0.1)
    _perturb(model, "ia3_l", 0.3)
    _perturb(model, "lora_B.default.bias", 0.1)
    return arch, model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_reproduces_peft_merged_weights_and_logits(variant, tmp_path):
    arch, tuned = _peft_model(variant)
    want_logits = logits(tuned)
    merged = dict(copy.deepcopy(tuned).merge_and_unload().named_parameters())
    assert not torch.allclose(want_logits, logits(untied(arch)), atol=1e-3)  # the adapter changes the model
    tuned.save_pretrained(tmp_path / "adapter")

    base = untied(arch)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    from_dir = WeightDiff.from_peft(tmp_path / "adapter", base=base)  # PEFT loads it onto the base ...
    for n, p in base.named_parameters():  # ... which is left exactly as it was
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)
    for diff in (WeightDiff.from_peft(tuned), from_dir):
        with diff.applied(base):
            for n, p in base.named_parameters():
                torch.testing.assert_close(p, merged[n], rtol=0, atol=1e-5, msg=f"{variant}: {n}")
            torch.testing.assert_close(logits(base), want_logits, rtol=0, atol=1e-5)


def test_a_lora_on_embed_tokens_keeps_its_embedding_delta_exactly(tmp_path):
    _, tuned = _peft_model("embed_tokens_and_q_proj")
    layer = tuned.base_model.model.model.embed_tokens
    want = layer.get_delta_weight("default")  # PEFT's own: scaling·(B·A)ᵀ, vocab×dim
    tuned.save_pretrained(tmp_path / "adapter")
    for diff in (WeightDiff.from_peft(tuned), WeightDiff.from_peft(tmp_path / "adapter"),
                 WeightDiff.from_peft(tmp_path / "adapter", base=untied("llama"))):
        got = diff.modules["model.embed_tokens"].delta()
        assert got.shape == (49152, 64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # saved as a plain PEFT adapter (lora_embedding_A/B) it loads in PEFT to the same logits
    diff = WeightDiff.from_peft(tuned)
    diff.save_pretrained(tmp_path / "ours", untied("llama"))
    torch.testing.assert_close(logits(peft.PeftModel.from_pretrained(untied("llama"), tmp_path / "ours")),
                               logits(tuned), rtol=0, atol=1e-5)
    assert WeightDiff.from_pretrained(tmp_path / "ours").modules.keys() == diff.modules.keys()


def test_rank_and_alpha_patterns_from_files_match_peft(tmp_path):
    """Without a base model a plain LoRA is read from its files; scaling per module as PEFT resolves it."""
    _, tuned = _peft_model("rank_alpha_patterns")
    tuned.save_pretrained(tmp_path / "adapter")
    diff = WeightDiff.from_peft(tmp_path / "adapter")
    for name, module in tuned.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            torch.testing.assert_close(diff.modules[key].delta(), module.get_delta_weight("default"), rtol=0, atol=1e-6)
    assert diff.modules["model.layers.1.self_attn.q_proj"].scale == pytest.approx(3 / 4)
    assert diff.modules["model.layers.0.self_attn.v_proj"].rank == 2


@pytest.mark.parametrize("variant", ["dora", "modules_to_save", "loha"])
def test_a_directory_that_needs_its_base_says_so(variant, tmp_path):
    _, tuned = _peft_model(variant)
    tuned.save_pretrained(tmp_path / "adapter")
    with pytest.raises(WeightDiffError, match=r"not a plain LoRA.*pass the base model") as error:
        WeightDiff.from_peft(tmp_path / "adapter")
    assert {"dora": "use_dora", "modules_to_save": "modules_to_save", "loha": "peft_type LOHA"}[variant] in str(error.value)


def test_methods_that_do_not_change_weights_are_refused_by_name():
    prompt = peft.get_peft_model(untied("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(WeightDiffError, match=r"PEFT adapter type PROMPT_TUNING is not supported.*supported: "):
        WeightDiff.from_peft(prompt)
    alora = peft.get_peft_model(untied("llama"), peft.LoraConfig(r=4, target_modules=QV, alora_invocation_tokens=[5]))
    with pytest.raises(WeightDiffError, match=r"PEFT adapter type LORA is not supported.*cannot merge"):
        WeightDiff.from_peft(alora)


def test_dora_converts_to_the_dora_formula():
    """ΔW = m·(W + s·B·A)/‖W + s·B·A‖_col − W, computed here from the parameters alone."""
    _, tuned = _peft_model("dora")
    layer = tuned.base_model.model.model.layers[0].self_attn.q_proj
    W = layer.base_layer.weight.detach()
    V = W + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    m = layer.lora_magnitude_vector["default"].weight.detach()
    want = (m / V.norm(dim=1)).unsqueeze(1) * V - W
    got = WeightDiff.from_peft(tuned).modules["model.layers.0.self_attn.q_proj"].delta()
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)


# ---- truncated SVD ----------------------------------------------------------------------------------


def _no_dense_svd(monkeypatch, limit=100):
    full = torch.linalg.svd

    def guarded(matrix, *args, **kwargs):
        assert min(matrix.shape[-2:]) <= limit, f"a full SVD of a {tuple(matrix.shape)} matrix"
        return full(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", guarded)


def test_truncated_svd_of_a_real_sized_matrix_is_within_its_documented_tolerance(monkeypatch):
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(576, 576, generator=g))
    V, _ = torch.linalg.qr(torch.randn(1536, 576, generator=g))
    spectra = {"decaying": (U * 0.9 ** torch.arange(576.0)) @ V.T, "white noise": torch.randn(576, 1536, generator=g)}
    for name, delta in spectra.items():
        S = torch.linalg.svdvals(delta)
        best = float((S[:4] ** 2).sum() / (S ** 2).sum())
        _no_dense_svd(monkeypatch)
        A, B, energy = low_rank.truncated_factors(delta, 4)
        monkeypatch.undo()
        assert A.shape == (4, 1536) and B.shape == (576, 4)
        assert energy == pytest.approx(best, abs=low_rank.ENERGY_TOLERANCE), name
        residual, optimal = float((delta - B @ A).norm()), float((S[4:] ** 2).sum().sqrt())
        assert residual <= optimal * (1 + 1e-3), name


def test_from_models_at_a_rank_does_no_full_svd_and_recovers_a_low_rank_diff_exactly(monkeypatch):
    """A merged rank-2 LoRA recovered at rank 4 by the truncated SVD: exact, energy 1, no dense SVD."""
    torch.manual_seed(3)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"],
                             init_lora_weights=False)
    merged = peft.get_peft_model(untied("llama"), config).merge_and_unload()
    base = untied("llama")
    _no_dense_svd(monkeypatch, limit=4 * (4 + low_rank.OVERSAMPLING) - 1)
    diff = WeightDiff.from_models(base, merged, rank=4, atol=1e-7)
    monkeypatch.undo()
    assert len(diff.modules) == 6 and all(e == pytest.approx(1.0, abs=1e-6) for e in diff.energy_report().values())
    with diff.applied(base):
        for n, p in base.named_parameters():
            torch.testing.assert_close(p, dict(merged.named_parameters())[n], rtol=0, atol=1e-5)


def test_compress_takes_low_rank_factors_exactly_through_qr(monkeypatch):
    _, tuned = _peft_model("lora")
    diff = WeightDiff.from_peft(tuned)
    _no_dense_svd(monkeypatch, limit=4)  # only the r×r core may be decomposed
    same, two = diff.compress(4), diff.compress(2)
    monkeypatch.undo()
    for name, module in diff.modules.items():
        torch.testing.assert_close(same.modules[name].delta(), module.delta(), rtol=0, atol=1e-6)
        S = torch.linalg.svdvals(module.delta())
        U, _, Vh = torch.linalg.svd(module.delta())
        best = (U[:, :2] * S[:2]) @ Vh[:2]
        torch.testing.assert_close(two.modules[name].delta(), best, rtol=0, atol=1e-5)
        assert two.modules[name].energy_kept == pytest.approx(float((S[:2] ** 2).sum() / (S ** 2).sum()), abs=1e-5)
    # dense diffs (DoRA) compress by truncated SVD; a diff at the rank of the DoRA change is exact
    dora = WeightDiff.from_peft(_peft_model("dora")[1])
    assert all(m.rank == 8 for m in dora.compress(8).modules.values())


def test_conversion_and_extraction_show_per_module_progress(capsys):
    _, tuned = _peft_model("lora")
    WeightDiff.from_peft(tuned, progress=True)
    WeightDiff.from_models(untied("llama"), tuned.merge_and_unload(), rank=2, progress=True)
    err = capsys.readouterr().err
    assert err.count("weight diff") >= 2 and "4/4" in err
    WeightDiff.from_peft(_peft_model("lora")[1])  # off by default
    assert "weight diff" not in capsys.readouterr().err


def test_per_row_batches_refuse_an_embedding_diff_by_its_type():
    from selfinterp_peft.batched import per_row_diffs

    diff = WeightDiff.from_peft(_peft_model("embed_tokens_and_q_proj")[1])
    with pytest.raises(WeightDiffError, match=r"'model.embed_tokens' is a Embedding.*diff.applied"):
        with per_row_diffs(untied("llama"), [diff]):
            pass
