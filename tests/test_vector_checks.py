"""Each out-of-distribution case gets its own warning, naming its cause and fix, and an
in-distribution vector none: constructed vectors around a mean of norm 20 whose training vectors
have median norm 1 (the shape of SmolLM2's: a mean of norm 126, training vectors 4.4)."""

from __future__ import annotations

import warnings

import pytest
import torch

from selfinterp_plugins.vector_inputs import prepare_vectors
from selfinterp_plugins.vector_spec import VectorSpec

D = 8
MEAN = torch.zeros(D)
MEAN[0] = 20.0
CENTRED = VectorSpec(source="topic_vectors", site="resid_post.1", prompt="Tell me about {title}.", centring="mean",
                     mean_key="topic_mean", vector_norm=1.0)
META = {"topic_mean": MEAN.tolist()}


def unit(*coords):
    """A unit vector orthogonal to the mean, along coordinates 1..D-1 (values in the order given)."""
    v = torch.zeros(D)
    v[1 : 1 + len(coords)] = torch.tensor(coords, dtype=torch.float32)
    return v / v.norm()


def messages(x, spec=CENTRED, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_vectors(spec, META, x, **options)
    return [str(w.message) for w in caught]


def test_an_activation_read_where_training_vectors_were_is_not_warned_about():
    raw = torch.stack([MEAN + unit(1.0), MEAN + 1.4 * unit(0, 1.0), MEAN + 0.7 * unit(1, 1, 1)])
    assert messages(raw) == []
    assert messages(raw[:, None].expand(3, 4, D).clone()) == []  # (N, T, d), the last position


def test_a_vector_centred_twice_is_named_as_such():
    """The old warning said 'these vectors look uncentred' here, the opposite of the cause."""
    got = messages(torch.stack([unit(1.0), unit(0, 1.0)]))
    assert len(got) == 1 and got[0].startswith("2 of 2 vectors: centred twice")
    assert "pass them to explain() as they are" in got[0] and "uncentred" not in got[0]
    assert "20×" in got[0]  # centred again: |u - mean| / 1 = sqrt(1 + 400) = 20.02


def test_a_steering_vector_given_as_an_activation_is_pointed_to_direction():
    a, b = MEAN + 2 * unit(1.0), MEAN + 2 * unit(0, 1.0)
    got = messages(a - b)  # a difference of means: no mean left
    assert len(got) == 1 and got[0].startswith("This vector: centred twice") and "direction=True" in got[0]
    assert "cosine 0.00" in got[0]


@pytest.mark.parametrize("x, ratio", [(0.5 * MEAN + unit(1.0), "10×"),  # another layer: a smaller mean
                                      (40 * unit(1.0), "44.7×")],  # an attention sink (BOS): large, no mean
                         ids=["another layer", "BOS position"])
def test_an_activation_read_elsewhere_is_told_where_to_read(x, ratio):
    """|0.5·mean + u - mean| = sqrt(100 + 1) = 10.05; |40u - mean| = sqrt(1600 + 400) = 44.72."""
    got = messages(x)
    assert len(got) == 1 and got[0].startswith("This vector: not read where the training vectors were")
    assert ratio in got[0] and "resid_post.1 at the last token of explainer.vector_prompt(topic)" in got[0]


def test_one_prompts_positions_given_as_rows_are_named():
    """nnsight 0.8's `output[0]` of a one-prompt trace is (T, d): every position became a vector."""
    positions = torch.stack([40 * unit(1.0), 0.6 * MEAN + unit(0, 1.0), 0.8 * MEAN + unit(1, 1), MEAN + unit(1.0)])
    got = messages(positions)
    assert len(got) == 1 and got[0].startswith("These 4 rows look like the positions of one prompt (T, d)")
    assert "output[0]" in got[0]
    assert messages(positions[None]) == []  # the same trace as (1, T, d): its last position


def test_a_direction_is_normalised_and_not_centred_nor_warned_about():
    v = torch.tensor([[0.0, 3.0, 4.0, 0, 0, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = prepare_vectors(CENTRED, META, v, direction=True)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.6, 0.8, 0, 0, 0, 0, 0]]), rtol=0, atol=1e-7)


def test_an_uncentred_spec_judges_the_norm_only():
    spec = VectorSpec(source="mine", site="resid_post.1", vector_norm=1.0)
    assert messages(torch.stack([unit(1.0), 2 * unit(0, 1.0)]), spec) == []
    got = messages(10 * unit(1.0), spec)
    assert len(got) == 1 and got[0].startswith("This vector: not read where the training vectors were (10× the norm")


def test_no_spec_or_no_recorded_norm_means_no_judgement():
    assert messages(100 * unit(1.0), None) == []
    assert messages(100 * unit(1.0), VectorSpec(source="mine", site="resid_post.1")) == []
