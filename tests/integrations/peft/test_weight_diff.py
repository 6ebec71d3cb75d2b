"""Weight diffs on tiny models (Llama with nn.Linear, GPT-2 with Conv1D): extraction from a PEFT
LoRA reproduces the fine-tuned logits, SVD at full rank reproduces a full fine-tune and reports
the energy kept, a diff saved as PEFT loads in plain PEFT to the same logits."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from selfinterp_peft.low_rank import ENERGY_TOLERANCE  # noqa: E402
from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff, WeightDiffError  # noqa: E402
from selfinterp_plugins.errors import ArtifactError, ModelMismatchError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
IDS = torch.tensor([[1, 50, 200, 7, 4000, 12, 9]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def lora_model(arch, r=4, seed=3):
    torch.manual_seed(seed)
    base, _ = tiny_model(arch, seed=0)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS[arch], init_lora_weights=False,
                             fan_in_fan_out=arch == "gpt2")
    return peft.get_peft_model(base, config)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_diff_from_peft_reproduces_the_finetuned_logits(arch, tmp_path):
    tuned = lora_model(arch)
    want = logits(tuned)
    base, _ = tiny_model(arch, seed=0)
    clean = logits(base)
    diff = WeightDiff.from_peft(tuned)
    assert len(diff.modules) == 2 * len(TARGETS[arch]) and {m.rank for m in diff.modules.values()} == {4}
    with diff.applied(base):
        torch.testing.assert_close(logits(base), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(base), clean, rtol=0, atol=0)  # undone exactly
    assert not torch.allclose(want, clean, atol=1e-3)

    tuned.save_pretrained(tmp_path / "lora")  # PEFT's own files
    from_dir = WeightDiff.from_peft(tmp_path / "lora")
    for name, module in diff.modules.items():
        torch.testing.assert_close(from_dir.modules[name].delta(), module.delta(), rtol=0, atol=1e-6)


def _full_finetune(arch):
    tuned, _ = tiny_model(arch, seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, module in tuned.named_modules():
            if name.endswith(tuple(TARGETS[arch])):
                module.weight.add_(0.02 * torch.randn(module.weight.shape, generator=g))
    return tuned


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_full_rank_svd_reproduces_a_full_finetune_and_reports_energy(arch):
    base, _ = tiny_model(arch, seed=0)
    tuned = _full_finetune(arch)
    full = WeightDiff.from_models(base, tuned, rank=64)
    assert all(e == pytest.approx(1.0, abs=1e-6) for e in full.energy_report().values())
    with full.applied(base):
        torch.testing.assert_close(logits(base), logits(tuned), rtol=0, atol=1e-4)

    one = WeightDiff.from_models(base, tuned, rank=1)
    for name, module in one.modules.items():
        (target,) = [m for n, m in tuned.named_modules() if n == name]
        (source,) = [m for n, m in base.named_modules() if n == name]
        s = torch.linalg.svdvals((target.weight - source.weight).detach().float())
        # randomized truncated SVD: within the documented worst-case tolerance of the full SVD's energy
        assert module.energy_kept == pytest.approx(float(s[0] ** 2 / (s ** 2).sum()), abs=ENERGY_TOLERANCE)
        assert module.rank == 1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_saved_diff_loads_in_plain_peft_to_the_same_logits(arch, tmp_path):
    base, _ = tiny_model(arch, seed=0)
    tuned = _full_finetune(arch)
    diff = WeightDiff.from_models(base, tuned, rank=3)
    with diff.applied(base):
        want = logits(base)
    diff.save_pretrained(tmp_path / "diff", base)
    fresh, _ = tiny_model(arch, seed=0)
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "diff")
    torch.testing.assert_close(logits(loaded), want, rtol=0, atol=1e-5)
    again = WeightDiff.from_pretrained(tmp_path / "diff")
    assert again.energy_report() == pytest.approx(diff.energy_report())
    with again.applied(tiny_model(arch, seed=0)[0]) as model:
        torch.testing.assert_close(logits(model), want, rtol=0, atol=1e-5)


def test_bad_inputs_get_clear_errors(tmp_path):
    base, _ = tiny_model("llama", seed=0)
    gpt2, _ = tiny_model("gpt2", seed=0)
    diff = WeightDiff.from_models(base, _full_finetune("llama"), rank=2)
    with pytest.raises(ModelMismatchError, match="this weight diff was made on .* has other weights"):
        with diff.applied(gpt2):
            pass
    unrecorded = WeightDiff(diff.modules)  # a diff that records no model (made elsewhere): its modules are checked
    with pytest.raises(WeightDiffError, match="no module"):
        with unrecorded.applied(gpt2):
            pass
    with pytest.raises(WeightDiffError, match="at least one module"):
        WeightDiff.from_models(base, tiny_model("llama", seed=0)[0])
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(ArtifactError, match="safetensors"):
        WeightDiff.from_pretrained(tmp_path / "pickled")


def test_a_refused_save_leaves_no_directory(tmp_path):
    """A diff a plain LoRA cannot hold is refused before anything is made: the directory used to be
    made first (a second time, beside the DirectoryLock that makes it) and left behind empty."""
    base, _ = tiny_model("llama", seed=0)
    diff = WeightDiff({"model.norm": ModuleDiff(dense=torch.zeros(base.model.norm.weight.shape))})
    with pytest.raises(WeightDiffError, match="not a linear or an embedding"):
        diff.save_pretrained(tmp_path / "diff", base)
    assert not (tmp_path / "diff").exists()
