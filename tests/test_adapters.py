"""Adapters (Pepper et al. 2026): shapes, normalisation, evaluation-time scale, exact formulas, each
kind's math as one pure function, initialisation, parameter counts, ridge initialisation, per-kind
configs, safetensors round trip, errors."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

from selfinterp_plugins.adapters import (
    BUILTIN_ADAPTERS,
    Adapter,
    AdapterConfig,
    LowRankConfig,
    RawVector,
    check_vectors,
    make_adapter,
    normalize,
    ridge_fit,
)
from selfinterp_plugins.errors import ArtifactError, UnknownNameError, UnsupportedInitError, VectorError
from selfinterp_plugins.storage._files import load_safetensors, save_safetensors

D = 32
RANK = 4
KINDS = sorted(BUILTIN_ADAPTERS)


def build(kind: str, d: int = D, **options):
    options.setdefault("rank", RANK)  # ignored by the kinds without a rank
    return make_adapter(AdapterConfig.for_kind(kind, d, registry=BUILTIN_ADAPTERS, **options), registry=BUILTIN_ADAPTERS)


def perturbed(adapter):
    """Move every parameter away from its init so formulas are tested on generic values."""
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return adapter


def test_all_six_kinds_are_builtin():
    assert set(KINDS) == {"scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank",
                          "full_rank"}
    for kind, cls in BUILTIN_ADAPTERS.items():
        assert cls.kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape(kind):
    adapter = perturbed(build(kind))
    assert adapter(torch.randn(5, D)).shape == (5, D)
    assert adapter(torch.randn(D)).shape == (D,)
    assert adapter(torch.randn(2, 3, D)).shape == (2, 3, D)
    assert adapter(torch.randn(5, D)).dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_input_is_normalised(kind):
    adapter = perturbed(build(kind))
    x = torch.randn(6, D)
    torch.testing.assert_close(adapter(7 * x), adapter(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter(0.01 * x), adapter(x), rtol=1e-5, atol=1e-5)


#: each kind's projection of already normalised (and scaled) input, written out independently
PROJECTIONS = {
    "scale_only": lambda p, z: p["log_scale"].exp() * z,
    "bias_only": lambda p, z: p["log_scale"].exp() * z + p["bias"],
    "scalar_affine": lambda p, z: p["log_scale"].exp() * z + p["bias"],
    "low_rank": lambda p, z: z @ p["U"] @ p["V"].T + p["bias"],
    "scalar_affine_plus_low_rank": lambda p, z: p["log_scale"].exp() * z + z @ p["U"] @ p["V"].T + p["bias"],
    "full_rank": lambda p, z: z @ p["weight"].T + p["bias"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_scale_applies_before_projection_without_renormalising(kind):
    adapter = perturbed(build(kind))
    project = PROJECTIONS[kind]
    params = dict(adapter.named_parameters())
    x = torch.randn(4, D)
    x_hat = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    for s in (0.5, 2.0, 8.0):
        torch.testing.assert_close(adapter(x, scale=s), project(params, s * x_hat), rtol=1e-5, atol=1e-6)
    # s = 1 is exactly the training-time map
    torch.testing.assert_close(adapter(x, scale=1.0), adapter(x), rtol=0, atol=0)
    # one scale per row
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0])
    torch.testing.assert_close(adapter(x, scale=scales), project(params, scales[:, None] * x_hat), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS + ["raw"])
def test_forward_is_the_kinds_pure_math(kind):
    """`Kind.math(params, x, scale)` is a staticmethod (a plain function a backend can ship) that
    forward calls: the same numbers, and gradients flow to the parameters through it."""
    cls = BUILTIN_ADAPTERS.get(kind, RawVector)
    assert isinstance(inspect.getattr_static(cls, "math"), staticmethod)
    adapter = perturbed(build(kind)) if kind != "raw" else RawVector(AdapterConfig("raw", D))
    x = torch.randn(3, D) * 4
    for scale in (None, torch.tensor(2.5), torch.tensor([0.5, 1.0, 3.0])):
        assert torch.equal(adapter(x, scale=scale), cls.math(adapter.tensors(), x, scale))
    if kind != "raw":
        cls.math(adapter.tensors(), x).sum().backward()
        assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)


def test_a_kind_without_math_or_with_a_method_says_how_to_write_it():
    class NoMath(Adapter):
        kind = "no_math"

    with pytest.raises(NotImplementedError, match="staticmethod"):
        NoMath(AdapterConfig("no_math", D))(torch.randn(2, D))
    with pytest.raises(TypeError, match=r"MethodMath.math must be a @staticmethod"):
        class MethodMath(Adapter):
            kind = "method_math"

            def math(self, params, x, scale=None):
                return x


@pytest.mark.parametrize("kind", ["scalar_affine", "full_rank", "scalar_affine_plus_low_rank"])
def test_scale_changes_output_of_kinds_with_a_linear_term(kind):
    adapter = perturbed(build(kind))
    x = torch.randn(3, D)
    assert not torch.allclose(adapter(x, scale=2.0), adapter(x))


def test_normalize_matches_reference_eps():
    x = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(normalize(x), x / (5.0 + 1e-8))
    assert torch.isfinite(normalize(torch.zeros(1, 4))).all()


# ---- exact formulas ------------------------------------------------------------------------


def test_scale_only_formula_and_init():
    adapter = build("scale_only", init_scale=5.0)
    x = torch.randn(3, D)
    x_hat = normalize(x)
    assert adapter.log_scale.item() == pytest.approx(math.log(5.0))
    torch.testing.assert_close(adapter(x), 5.0 * x_hat)
    perturbed(adapter)
    torch.testing.assert_close(adapter(x), adapter.log_scale.exp() * x_hat)
    assert adapter.num_trainable() == 1


def test_scalar_affine_formula_init_and_count():
    adapter = build("scalar_affine", init_scale=30.0)
    assert adapter.log_scale.item() == pytest.approx(math.log(30.0))
    assert torch.equal(adapter.bias, torch.zeros(D))
    perturbed(adapter)
    x = torch.randn(3, D)
    torch.testing.assert_close(adapter(x), adapter.log_scale.exp() * normalize(x) + adapter.bias)
    assert adapter.num_trainable() == D + 1


def test_bias_only_freezes_scale_and_trains_bias_only():
    adapter = build("bias_only", init_scale=5.0)
    assert adapter.log_scale.requires_grad is False
    assert adapter.bias.requires_grad is True
    assert torch.equal(adapter.bias, torch.zeros(D))
    assert adapter.num_trainable() == D
    trainable = [name for name, p in adapter.named_parameters() if p.requires_grad]
    assert trainable == ["bias"]
    x = torch.randn(3, D)
    with torch.no_grad():
        adapter.bias.add_(torch.randn(D))
    torch.testing.assert_close(adapter(x), 5.0 * normalize(x) + adapter.bias)
    adapter(x).sum().backward()
    assert adapter.log_scale.grad is None
    assert adapter.bias.grad is not None

    # an optimiser step over the trainable parameters leaves the scale alone
    before = adapter.log_scale.clone()
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    assert torch.equal(adapter.log_scale, before)


def test_low_rank_formula_init_and_count():
    d, r, init = 256, 16, 5.0
    adapter = build("low_rank", d=d, rank=r, init_scale=init)
    assert adapter.U.shape == (d, r) and adapter.V.shape == (d, r)
    assert torch.equal(adapter.bias, torch.zeros(d))
    expected_std = 0.01 * init / math.sqrt(r)
    for p in (adapter.U, adapter.V):
        assert p.std().item() == pytest.approx(expected_std, rel=0.1)
        assert abs(p.mean().item()) < expected_std * 0.1
    assert adapter.num_trainable() == 2 * d * r + d
    perturbed(adapter)
    x = torch.randn(3, d)
    x_hat = normalize(x)
    torch.testing.assert_close(adapter(x), x_hat @ adapter.U @ adapter.V.T + adapter.bias, rtol=1e-5, atol=1e-6)


def test_scalar_affine_plus_low_rank_formula_and_count():
    adapter = build("scalar_affine_plus_low_rank", init_scale=5.0)
    assert adapter.log_scale.item() == pytest.approx(math.log(5.0))
    assert torch.equal(adapter.bias, torch.zeros(D))
    assert adapter.num_trainable() == 1 + 2 * D * RANK + D
    perturbed(adapter)
    x = torch.randn(3, D)
    x_hat = normalize(x)
    expected = adapter.log_scale.exp() * x_hat + x_hat @ adapter.U @ adapter.V.T + adapter.bias
    torch.testing.assert_close(adapter(x), expected, rtol=1e-5, atol=1e-6)


def test_full_rank_init_is_the_papers_random_matrix_and_formula():
    adapter = build("full_rank", init_scale=5.0)
    assert not torch.allclose(adapter.weight, 5.0 * torch.eye(D))  # random, no identity term (tests/reference checks the law)
    assert torch.equal(adapter.bias, torch.zeros(D))
    assert adapter.num_trainable() == D * D + D
    x = torch.randn(3, D)
    # W ~ N(0, (5/√d)²): the soft token starts at norm about 5 in a random direction
    assert adapter(x).norm(dim=-1).mean().item() == pytest.approx(5.0, rel=0.3)
    perturbed(adapter)
    torch.testing.assert_close(adapter(x), normalize(x) @ adapter.weight.T + adapter.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_soft_token_has_norm_init_scale_for_scaled_kinds(kind):
    """At init every scaled kind is (about) init_scale·x̂: the paper's untrained SelfIE-style start;
    full_rank starts as a random map of about that norm, low_rank near zero."""
    adapter = build(kind, init_scale=5.0)
    x = torch.randn(4, D)
    out = adapter(x)
    if kind == "low_rank":
        # x̂UVᵀ with tiny U, V: almost zero
        assert out.norm(dim=-1).max() < 0.1
    elif kind == "full_rank":
        assert out.norm(dim=-1).mean().item() == pytest.approx(5.0, rel=0.3)
    else:
        torch.testing.assert_close(out, 5.0 * normalize(x), rtol=1e-2, atol=1e-2)


# ---- ridge initialisation ------------------------------------------------------------------


def _synthetic(n=400, d=D, noise=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 3.0
    x_hat = normalize(x)
    w = 2.0 * torch.eye(d) + 0.5 * torch.randn(d, d, generator=g) / math.sqrt(d)
    b = torch.randn(d, generator=g)
    t = x_hat @ w.T + b + noise * torch.randn(n, d, generator=g)
    return x, t


def _sq_error(adapter, x, t) -> float:
    with torch.no_grad():
        return float(((adapter(x) - t) ** 2).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_ridge_init_reduces_error_to_targets(kind):
    x, t = _synthetic()
    adapter = build(kind)
    before = _sq_error(adapter, x, t)
    adapter.ridge_init(x, t, ridge=1.0)
    after = _sq_error(adapter, x, t)
    assert after < 0.8 * before, (kind, before, after)
    assert all(torch.isfinite(p).all() for p in adapter.parameters())
    if kind == "bias_only":
        assert adapter.log_scale.item() == pytest.approx(math.log(5.0))  # still frozen at init


def test_full_rank_ridge_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(3)
    d, n = 16, 500
    w_true = torch.randn(d, d, generator=g)
    b_true = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) * 10
    t = normalize(x) @ w_true.T + b_true
    adapter = build("full_rank", d=d)
    adapter.ridge_init(x, t, ridge=1e-8)
    torch.testing.assert_close(adapter.weight, w_true, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(adapter.bias, b_true, rtol=1e-3, atol=1e-3)
    x_new = torch.randn(7, d, generator=g)
    torch.testing.assert_close(adapter(x_new), normalize(x_new) @ w_true.T + b_true, rtol=1e-3, atol=1e-3)


def test_low_rank_ridge_recovers_a_rank_r_map():
    g = torch.Generator().manual_seed(4)
    d, r, n = 16, 3, 500
    w_true = torch.randn(d, r, generator=g) @ torch.randn(r, d, generator=g)
    b_true = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g)
    t = normalize(x) @ w_true + b_true
    adapter = build("low_rank", d=d, rank=r)
    adapter.ridge_init(x, t, ridge=1e-8)
    torch.testing.assert_close(adapter(x), t, rtol=1e-3, atol=1e-3)


def test_scalar_affine_ridge_recovers_scale_and_bias():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, D, generator=g)
    b = torch.randn(D, generator=g)
    t = 3.0 * normalize(x) + b
    adapter = build("scalar_affine")
    adapter.ridge_init(x, t, ridge=1e-8)
    assert adapter.log_scale.exp().item() == pytest.approx(3.0, rel=1e-3)
    torch.testing.assert_close(adapter.bias, b, rtol=1e-3, atol=1e-3)


# ---- serialisation -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip_gives_identical_outputs(kind, tmp_path):
    adapter = perturbed(build(kind))
    path = tmp_path / "adapter.safetensors"
    save_safetensors(dict(adapter.state_dict()), path)
    config = AdapterConfig.from_dict(adapter.config.to_dict())
    torch.manual_seed(123)  # a different random init for low-rank kinds
    fresh = make_adapter(config, registry=BUILTIN_ADAPTERS)
    fresh.load_state_dict(load_safetensors(path))
    x = torch.randn(5, D)
    assert torch.equal(fresh(x), adapter(x))
    assert torch.equal(fresh(x, scale=2.5), adapter(x, scale=2.5))
    assert fresh.num_trainable() == adapter.num_trainable()
    assert not path.with_suffix(".safetensors.tmp").exists()


def test_adapter_config_from_dict():
    config = AdapterConfig.for_kind("low_rank", 8, init_scale=3.0, rank=2)
    assert type(config) is LowRankConfig and config == LowRankConfig("low_rank", 8, 3.0, rank=2)
    assert AdapterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ArtifactError, match="d_model"):
        AdapterConfig.from_dict({"kind": "low_rank"})
    with pytest.raises(UnknownNameError, match="no_such_kind"):
        AdapterConfig.from_dict({"kind": "no_such_kind", "d_model": 8})


# ---- per-kind configs ----------------------------------------------------------------------


def test_only_the_low_rank_kinds_carry_a_rank():
    for kind in KINDS + ["raw"]:
        config = AdapterConfig.for_kind(kind, D)
        low_rank = kind in ("low_rank", "scalar_affine_plus_low_rank")
        assert type(config) is (LowRankConfig if low_rank else AdapterConfig)
        assert ("rank" in config.to_dict()) == low_rank
        assert ("low_rank_init_factor" in config.to_dict()) == low_rank


def test_a_config_file_of_the_single_config_class_still_loads_without_a_warning():
    """Before per-kind configs every file held rank and low_rank_init_factor, whatever the kind."""
    old = {"kind": "scalar_affine", "d_model": D, "init_scale": 3.0, "rank": 64, "low_rank_init_factor": 0.01}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = AdapterConfig.from_dict(old)
        low = AdapterConfig.from_dict(dict(old, kind="low_rank", rank=4))
    assert config == AdapterConfig("scalar_affine", D, 3.0) and type(config) is AdapterConfig
    assert low == LowRankConfig("low_rank", D, 3.0, rank=4)


def test_an_unknown_key_is_ignored_with_a_warning_naming_it_and_the_kind():
    data = dict(AdapterConfig("full_rank", D).to_dict(), hidden=64)
    with pytest.warns(UserWarning, match="'hidden'") as caught:
        config = AdapterConfig.from_dict(data)
    assert "'full_rank'" in str(caught[0].message)
    assert config == AdapterConfig("full_rank", D)


def test_an_unknown_option_in_code_is_refused_with_the_kinds_options():
    with pytest.raises(UnknownNameError, match=r"'full_rank' has no option\(s\) \['hidden'\].*init_scale"):
        AdapterConfig.for_kind("full_rank", D, hidden=64)
    assert AdapterConfig.for_kind("scalar_affine", D, rank=4) == AdapterConfig("scalar_affine", D)  # as before


def test_a_plain_config_for_a_low_rank_kind_becomes_its_own():
    adapter = make_adapter(AdapterConfig("low_rank", D), registry=BUILTIN_ADAPTERS)
    assert type(adapter.config) is LowRankConfig and adapter.U.shape == (D, 64)


def test_a_kind_without_a_ridge_start_says_to_use_the_paper_init():
    with pytest.raises(UnsupportedInitError, match="'raw' has no ridge initialisation; train it with init='paper'"):
        RawVector(AdapterConfig("raw", D)).ridge_init(torch.randn(4, D), torch.randn(4, D))


# ---- errors --------------------------------------------------------------------------------


def test_unknown_kind_names_the_known_kinds():
    with pytest.raises(UnknownNameError) as info:
        make_adapter(AdapterConfig(kind="no_such_kind", d_model=D))
    message = str(info.value)
    assert "no_such_kind" in message
    for kind in KINDS:
        assert kind in message


def test_unknown_kind_with_explicit_registry():
    with pytest.raises(UnknownNameError, match="scale_only"):
        make_adapter(AdapterConfig(kind="nope", d_model=D), registry={"scale_only": BUILTIN_ADAPTERS["scale_only"]})


@pytest.mark.parametrize(
    "bad",
    [torch.randn(3, D + 1), torch.randn(D - 1), torch.full((2, D), float("nan")),
     torch.cat([torch.randn(1, D), torch.full((1, D), float("inf"))]), torch.full((D,), -float("inf"))],
    ids=["too-wide", "too-narrow", "nan", "inf-row", "neg-inf"],
)
def test_check_vectors_refuses_bad_vectors(bad):
    with pytest.raises(VectorError):
        check_vectors(bad, D)
    with pytest.raises(VectorError):
        build("scalar_affine")(bad)


def test_check_vectors_refuses_non_tensors_and_accepts_good_ones():
    with pytest.raises(VectorError, match="torch.Tensor"):
        check_vectors([[0.0] * D], D)
    check_vectors(torch.randn(3, D), D)
    check_vectors(torch.randn(D, dtype=torch.float64), D)


def test_wrong_size_message_names_both_sizes():
    with pytest.raises(VectorError) as info:
        check_vectors(torch.randn(2, 10), D)
    assert "10" in str(info.value) and str(D) in str(info.value)


# ---- written out by hand (mutation survivors of adapters.py) --------------------------------


def test_ridge_fit_is_the_penalised_least_squares_with_an_unpenalised_bias():
    """min ‖XW + b − T‖² + ridge‖W‖², solved here from the normal equations of the augmented
    system [X 1]: (AᵀA + diag(ridge, …, ridge, 0)) θ = AᵀT (no centring), against ridge_fit."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) + 2.0
    t = torch.randn(40, 3, generator=g, dtype=torch.float64) * 3 + 7.0  # far from zero mean: the bias matters
    ridge = 5.0
    a = torch.cat([x, torch.ones(40, 1, dtype=torch.float64)], dim=1)
    penalty = torch.diag(torch.tensor([ridge] * 5 + [0.0], dtype=torch.float64))
    theta = torch.linalg.solve(a.T @ a + penalty, a.T @ t)
    w, b = ridge_fit(x.float(), t.float(), ridge)
    assert w.dtype == b.dtype == torch.float64
    torch.testing.assert_close(w, theta[:5], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, theta[5], rtol=1e-6, atol=1e-6)


def test_normalize_of_a_tiny_vector_uses_plus_eps():
    """x / (‖x‖ + 1e-8): a vector of norm 1e-8 comes out at norm 1/2, not divided by zero."""
    torch.testing.assert_close(normalize(torch.tensor([[1e-8, 0.0]])), torch.tensor([[0.5, 0.0]]))


def test_raw_vector_is_scale_times_the_vector_as_it_is():
    adapter = RawVector(AdapterConfig("raw", 2))
    x = torch.tensor([[3.0, 4.0], [1.0, -2.0]])
    assert torch.equal(adapter(x), x)
    assert torch.equal(adapter(x, scale=3.0), torch.tensor([[9.0, 12.0], [3.0, -6.0]]))
    assert torch.equal(adapter(x, scale=torch.tensor([2.0, -1.0])), torch.tensor([[6.0, 8.0], [-1.0, 2.0]]))


def test_forward_reads_vectors_in_the_adapters_dtype_and_the_scale_too():
    """float64 vectors into a float32 adapter come out float32; into a float64 adapter, the scale
    0.1 is applied in float64 (as float32 it would be off by 1.5e-9)."""
    adapter = perturbed(build("full_rank"))
    x = torch.randn(3, D, dtype=torch.float64)
    assert adapter(x).dtype == torch.float32
    adapter = adapter.double()
    p = dict(adapter.named_parameters())
    x_hat = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(adapter(x, scale=0.1), (0.1 * x_hat) @ p["weight"].T + p["bias"], rtol=0, atol=1e-13)


def test_make_adapter_looks_the_kind_up_in_the_registry_it_is_given():
    class Doubler(RawVector):
        kind = "doubler_not_registered_anywhere"

    adapter = make_adapter(AdapterConfig(Doubler.kind, D), registry={Doubler.kind: Doubler})
    assert type(adapter) is Doubler


def test_messages_of_refused_vectors_and_of_a_kind_without_math():
    cases = [
        (torch.tensor(1.0), "Got a scalar where vectors were expected; pass shape (d_model,) or (N, d_model)."),
        (torch.ones(2, D, dtype=torch.int64), "Vectors must be floating point, got torch.int64; convert them with .float()."),
        (torch.randn(2, 10), f"Vector size 10 does not match the model's d_model {D}; pass vectors read from this model "
                             "(same layer width)."),
        (torch.full((1, D), float("nan")), "Vectors contain NaN or infinite values; drop or repair those rows before "
                                           "explaining."),
        ((1.0, 2.0), "Vectors must be a torch.Tensor, got tuple; wrap them with torch.as_tensor(...)."),
    ]
    for bad, message in cases:
        with pytest.raises(VectorError) as info:
            check_vectors(bad, D)
        assert str(info.value) == message
    with pytest.raises(NotImplementedError) as info:
        Adapter.math({}, torch.ones(1, D))
    assert str(info.value) == "An adapter kind must define math(params, x, scale) as a staticmethod."
