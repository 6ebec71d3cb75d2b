"""Row i of a batch runs with diff i: equal to applying each diff alone, on Linear and Conv1D
models, with mixed ranks and modules, and differentiable in every diff's factors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from selfinterp_peft.batched import per_row_diffs  # noqa: E402
from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff, WeightDiffError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

TARGETS = {"llama": ["q_proj", "down_proj", "gate_proj"], "gpt2": ["c_attn", "c_proj"]}


def random_diff(model, arch, rank, seed, modules=None):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in model.named_modules():
        if name.endswith(tuple(modules or TARGETS[arch])):
            w = module.weight
            out_f, in_f = (w.shape[1], w.shape[0]) if arch == "gpt2" else w.shape
            out[name] = ModuleDiff(A=0.3 * torch.randn(rank, in_f, generator=g), B=0.3 * torch.randn(out_f, rank, generator=g),
                                   scale=0.5 + seed % 3)
    return WeightDiff(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_row_gets_its_own_diff(arch):
    model, _ = tiny_model(arch, seed=0)
    diffs = [random_diff(model, arch, rank=1, seed=1), random_diff(model, arch, rank=4, seed=2),
             random_diff(model, arch, rank=2, seed=3, modules=TARGETS[arch][:1])]
    ids = torch.tensor([[1, 50, 200, 7, 4000], [3, 9, 27, 81, 243], [5, 6, 7, 8, 9]])
    with torch.no_grad(), per_row_diffs(model, diffs):
        batched = model(input_ids=ids).logits
    for i, diff in enumerate(diffs):
        with torch.no_grad(), diff.applied(model):
            alone = model(input_ids=ids[i : i + 1]).logits
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, batched, atol=1e-3)  # hooks removed, diffs mattered


def test_factors_train_through_the_hook():
    model, _ = tiny_model("llama", seed=0)
    diffs = [random_diff(model, "llama", rank=1, seed=s) for s in (1, 2)]
    params = [t for d in diffs for m in d.modules.values() for t in (m.A.requires_grad_(), m.B.requires_grad_())]
    with per_row_diffs(model, diffs):
        model(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]])).logits[:, -1].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_wrong_batch_and_dense_diffs_are_refused():
    model, _ = tiny_model("llama", seed=0)
    diffs = [random_diff(model, "llama", rank=1, seed=1)]
    with pytest.raises(WeightDiffError, match="one diff per row"):
        with per_row_diffs(model, diffs):
            model(input_ids=torch.tensor([[1, 2], [3, 4]]))
    name = next(iter(diffs[0].modules))
    dense = WeightDiff({name: ModuleDiff(dense=diffs[0].modules[name].delta())})
    with pytest.raises(WeightDiffError, match="dense"):
        with per_row_diffs(model, [dense]):
            pass
