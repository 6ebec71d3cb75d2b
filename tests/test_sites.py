"""Sites: parsing site names, and the injection arithmetic shared by every backend."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins.errors import ArtifactError, BackendError
from selfinterp_plugins.sites import Site, inject


@pytest.mark.parametrize(
    "spec, kind, layer",
    [
        ("embed", "embed", None),
        ("hook_embed", "embed", None),
        ("  embed ", "embed", None),
        ("resid_pre.3", "resid_pre", 3),
        ("resid_post:2", "resid_post", 2),
        ("resid_post.0", "resid_post", 0),
        ("resid_pre.12", "resid_pre", 12),
        ("blocks.4.hook_resid_pre", "resid_pre", 4),
        ("blocks.0.hook_resid_post", "resid_post", 0),
    ],
)
def test_parse(spec, kind, layer):
    site = Site.parse(spec)
    assert (site.kind, site.layer, site.mode, site.coef) == (kind, layer, "replace", 1.0)
    assert Site.parse(site.name) == site


def test_parse_passes_mode_and_coef_and_sites_through():
    site = Site.parse("resid_pre.1", mode="add_normmatched", coef=0.5)
    assert (site.mode, site.coef) == ("add_normmatched", 0.5)
    assert Site.parse(site) is site


@pytest.mark.parametrize(
    "spec",
    ["", "embeds", "resid_pre", "resid_pre.", "resid_pre.-1", "resid_mid.3", "resid_post.3.1", "blocks.x.hook_resid_pre",
     "blocks.3.hook_attn_out", "layer3", "resid_pre.3a"],
)
def test_parse_bad_strings(spec):
    with pytest.raises(BackendError):
        Site.parse(spec)


def test_constructor_validation():
    with pytest.raises(BackendError):
        Site("attn_out", 1)
    with pytest.raises(BackendError):
        Site("resid_pre", None)
    with pytest.raises(BackendError):
        Site("resid_post", -1)
    with pytest.raises(BackendError):
        Site("embed", mode="multiply")
    assert Site("embed", 5).layer is None  # embed has no layer


def test_name_and_dict_round_trip():
    for site in (Site(), Site("resid_pre", 3), Site("resid_post", 1, "add_normmatched", 2.0)):
        assert Site.from_dict(site.to_dict()) == site
    assert Site("resid_post", 2).name == "resid_post.2"
    assert Site().name == "embed"
    assert Site.from_dict({"kind": "resid_pre", "layer": 1}) == Site("resid_pre", 1)


# ---- injection arithmetic ------------------------------------------------------------------


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, 8, generator=g)
    soft = torch.randn(3, 8, generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 2] = True  # row 2: no injection at all
    return hidden, soft, mask


def test_replace_changes_exactly_the_masked_positions():
    hidden, soft, mask = _case()
    out = inject(hidden, soft, mask, Site())
    assert out.shape == hidden.shape
    assert torch.equal(out[~mask], hidden[~mask])
    rows, cols = mask.nonzero(as_tuple=True)
    for r, c in zip(rows.tolist(), cols.tolist()):
        assert torch.equal(out[r, c], soft[r])  # each row gets its own soft token
    assert torch.equal(out[2], hidden[2])


def test_add_normmatched_adds_coef_norm_direction_at_masked_positions_only():
    hidden, soft, mask = _case(1)
    coef = 0.7
    out = inject(hidden, soft, mask, Site("resid_pre", 1, "add_normmatched", coef))
    assert torch.equal(out[~mask], hidden[~mask])
    rows, cols = mask.nonzero(as_tuple=True)
    for r, c in zip(rows.tolist(), cols.tolist()):
        h = hidden[r, c]
        expected = h + coef * h.norm() * soft[r] / soft[r].norm()
        torch.testing.assert_close(out[r, c], expected)
        # the added part has norm coef·‖h‖ whatever the soft token's norm
        torch.testing.assert_close((out[r, c] - h).norm(), coef * h.norm())


def test_add_normmatched_ignores_soft_norm():
    hidden, soft, mask = _case(2)
    site = Site("resid_post", 0, "add_normmatched", 1.0)
    torch.testing.assert_close(inject(hidden, soft, mask, site), inject(hidden, 9.0 * soft, mask, site))


@pytest.mark.parametrize("site", [Site(), Site("resid_pre", 0, "add_normmatched", 0.5)])
def test_gradient_flows_to_soft_only_through_masked_positions(site):
    hidden, soft, mask = _case(3)
    soft = soft.clone().requires_grad_(True)
    out = inject(hidden, soft, mask, site)
    out.sum().backward()
    assert soft.grad is not None
    assert soft.grad[0].abs().sum() > 0 and soft.grad[1].abs().sum() > 0
    assert torch.equal(soft.grad[2], torch.zeros(8))  # row 2 has no masked position
    if site.mode == "replace":
        # d(sum)/d(soft[r]) = number of masked positions of row r
        torch.testing.assert_close(soft.grad[0], torch.full((8,), 2.0))
        torch.testing.assert_close(soft.grad[1], torch.full((8,), 1.0))


def test_inject_casts_soft_to_hidden_dtype():
    hidden, soft, mask = _case(4)
    out = inject(hidden.to(torch.bfloat16), soft, mask, Site())
    assert out.dtype == torch.bfloat16


# ---- K soft tokens per row (an Activation Oracle's K activations) ---------------------------


def test_k_soft_tokens_go_to_the_k_masked_positions_in_order():
    g = torch.Generator().manual_seed(5)
    hidden, soft = torch.randn(2, 6, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 2, 3]] = True
    mask[1, [0, 4, 5]] = True  # any three positions: the k-th marked one takes the k-th vector
    out = inject(hidden, soft, mask, Site())
    for row, cols in ((0, [1, 2, 3]), (1, [0, 4, 5])):
        for k, col in enumerate(cols):
            assert torch.equal(out[row, col], soft[row, k])
    assert torch.equal(out[~mask], hidden[~mask])
    added = inject(hidden, soft, mask, Site("resid_post", 1, "add_normmatched", 2.0))
    h, v = hidden[1, 4], soft[1, 1]
    torch.testing.assert_close(added[1, 4], h + 2.0 * h.norm() * v / v.norm())


def test_one_soft_token_of_shape_b_1_d_is_used_at_every_masked_position():
    hidden, soft, mask = _case(6)
    assert torch.equal(inject(hidden, soft[:, None, :], mask, Site()), inject(hidden, soft, mask, Site()))


@pytest.mark.parametrize("marked", [2, 4])
def test_k_soft_tokens_need_exactly_k_masked_positions(marked):
    hidden, soft = torch.zeros(1, 6, 4), torch.ones(1, 3, 4)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, :marked] = True
    with pytest.raises(BackendError, match=r"3 soft tokens per row but the prompt marks \[" + str(marked) + r"\] positions"):
        inject(hidden, soft, mask, Site())


def test_a_zero_vector_adds_nothing():
    """torch's normalize (v / max(‖v‖, 1e-12), as the reference's hook): 0 stays 0, no NaN."""
    hidden, soft, mask = _case(7)
    out = inject(hidden, soft * 0, mask, Site("resid_post", 0, "add_normmatched", 1.0))
    assert torch.equal(out, hidden)


# ---- what a user reads when a site is wrong (each message names the fix) ---------------------

SITES_HINT = ("the sites are 'embed', 'resid_pre.K' and 'resid_post.K' (K = 0 .. n_layers-1), or TransformerLens' "
              "'hook_embed', 'blocks.K.hook_resid_pre' and 'blocks.K.hook_resid_post'.")
INSIDE_A_BLOCK = " (a soft token or vector lives in the residual stream between blocks, not inside one)"


@pytest.mark.parametrize("spec, hint", [("blocks.3.hook_attn_out", INSIDE_A_BLOCK), ("mlp_out.2", INSIDE_A_BLOCK),
                                        ("layer3", "")])
def test_parse_message_says_which_sites_exist_and_why_one_inside_a_block_is_not_one(spec, hint):
    with pytest.raises(BackendError) as err:
        Site.parse(spec)
    assert str(err.value) == f"Cannot read site {spec!r}{hint}; {SITES_HINT}"


def test_parse_of_a_non_string_names_its_type():
    with pytest.raises(BackendError) as err:
        Site.parse(3)
    assert str(err.value) == "A site is a name such as 'embed' or 'resid_post.10' (or a Site), not int 3; pass one."


def test_constructor_messages_name_the_field_and_the_fix():
    with pytest.raises(BackendError) as err:
        Site("attn_out", 1)
    assert str(err.value) == ("Site: field kind should be 'embed', 'resid_pre' or 'resid_post' (got 'attn_out'); use a "
                              "kind of ('embed', 'resid_pre', 'resid_post'), a layer >= 0, a mode of ('replace', "
                              "'add_normmatched') and a finite coef.")
    with pytest.raises(BackendError) as err:
        Site("resid_pre", None)
    assert str(err.value) == "Site resid_pre needs a layer index >= 0, e.g. 'resid_pre.10'."


def test_parse_keeps_coef_for_every_spelling():
    for spec in ("embed", "resid_pre.2", "blocks.2.hook_resid_post"):
        assert Site.parse(spec, mode="add_normmatched", coef=0.25).coef == 0.25


def test_from_dict_ignores_unknown_keys_and_names_file_and_field_in_its_message():
    assert Site.from_dict({"kind": "resid_pre", "layer": 1, "written_by": "v9"}) == Site("resid_pre", 1)
    with pytest.raises(ArtifactError) as err:
        Site.from_dict({"kind": "resid_pre", "layer": -2})
    assert str(err.value) == "Site config: field layer should be greater than or equal to 0 (got -2); re-save the explainer."
    with pytest.raises(ArtifactError) as err:
        Site.from_dict({"kind": "resid_pre", "layer": -2}, source="explainer_config.json", prefix="adapter.site")
    assert str(err.value) == ("explainer_config.json: field adapter.site.layer should be greater than or equal to 0 "
                              "(got -2); re-save the explainer.")


def test_add_normmatched_direction_of_a_tiny_soft_token():
    """v̂ = v / max(‖v‖, 1e-12) (torch's normalize, as the reference's hook): a soft token of norm
    1e-8 is still a unit direction, one of norm 1e-13 gives a direction of norm 0.1; by hand."""
    hidden = torch.tensor([[[3.0, 4.0]]])  # ‖h‖ = 5
    mask, site = torch.ones(1, 1, dtype=torch.bool), Site("resid_pre", 0, "add_normmatched", 1.0)
    torch.testing.assert_close(inject(hidden, torch.tensor([[1e-8, 0.0]]), mask, site), torch.tensor([[[3.0 + 5, 4.0]]]))
    torch.testing.assert_close(inject(hidden, torch.tensor([[1e-13, 0.0]]), mask, site),
                               torch.tensor([[[3.0 + 5 * 0.1, 4.0]]]))
