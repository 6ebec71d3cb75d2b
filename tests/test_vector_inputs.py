"""`prepare_vectors` refuses what holds no vector in one line (VectorError) instead of indexing
into it: an empty trace, no rows, zero width, or something that is not numbers at all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfinterp_plugins.errors import VectorError
from selfinterp_plugins.vector_inputs import prepare_vectors

D = 8


@pytest.mark.parametrize("x", [torch.zeros(2, 0, D), torch.zeros(0, 3, D), torch.zeros(0, D), torch.zeros(2, 0),
                               torch.zeros(0)],
                         ids=["no positions (N, 0, d)", "no rows (0, T, d)", "no rows (0, d)", "zero width (N, 0)",
                              "zero width (0,)"])
def test_empty_vectors_are_refused(x):
    """(N, 0, d) was an IndexError (no last position); the other shapes returned empty rows, so
    explain then ran and wrote nothing."""
    with pytest.raises(VectorError, match="empty vectors") as info:
        prepare_vectors(None, {}, x)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("x", ["abc", None, {"a": 1}, [[1.0], [1.0, 2.0]], object(), np.array(["a"])],
                         ids=["str", "None", "dict", "ragged list", "object", "str array"])
def test_what_is_not_numbers_is_refused(x):
    with pytest.raises(VectorError, match="Cannot read a") as info:
        prepare_vectors(None, {}, x)
    assert "\n" not in str(info.value)


def test_the_last_position_of_each_row_is_kept():
    x = torch.arange(2 * 3 * D, dtype=torch.float32).reshape(2, 3, D)
    rows = prepare_vectors(None, {}, x)
    # row i's last position starts at (i * 3 + 2) * D
    assert rows[:, 0].tolist() == [2 * D, 5 * D] and rows.shape == (2, D)


def _positions(n=2, t=3):
    """(n, t, D) activations whose value at row i, position j is i * 10 + j everywhere."""
    return (torch.arange(n)[:, None] * 10 + torch.arange(t)[None])[..., None].expand(n, t, D).float()


@pytest.mark.parametrize("pos, mask, want", [
    (1, None, [1, 11]),
    (-2, None, [1, 11]),
    (torch.tensor([0, 2]), None, [0, 12]),
    ([2, -3], None, [2, 10]),
    (None, [[1, 1, 1], [0, 1, 1]], [2, 12]),  # left padding: the last token is last either way
    (0, [[1, 1, 1], [0, 1, 1]], [0, 11]),  # ...but the first real token of row 1 is position 1
    (None, [[1, 1, 1], [1, 1, 0]], [2, 11]),  # right padding: row 1's last real token is position 1
    (-2, torch.tensor([[True, True, True], [False, True, True]]), [1, 11]),
], ids=["int", "negative", "per row tensor", "per row list", "left padded, last", "left padded, first",
        "right padded, last", "bool mask, negative"])
def test_pos_and_attention_mask_pick_each_rows_position(pos, mask, want):
    """There was no pos=: (N, T, d) gave the last position only, a pad token in a right-padded batch."""
    rows = prepare_vectors(None, {}, _positions(), pos=pos, attention_mask=mask)
    assert rows[:, 0].tolist() == want and rows.shape == (2, D)


@pytest.mark.parametrize("pos, mask, match", [
    (3, None, "outside row 0's 3 real tokens"),
    (-3, [[1, 1, 1], [0, 1, 1]], "outside row 1's 2 real tokens"),
    (1.5, None, "pos= is one position"),
    (True, None, "pos= is one position"),
    ([0, 1, 2], None, "pos= is one position"),
    ("last", None, "pos= is one position"),
    (None, [[1, 1, 1]], "attention_mask= should be the"),
    (None, [[1, 1, 1], [0, 0, 0]], "no real token"),
    (None, [[0.5, 1, 1], [1, 1, 1]], "attention_mask= should be the"),
], ids=["past the end", "before a padded row's start", "float", "bool", "wrong length", "a word", "mask shape",
        "empty row", "mask not 0/1"])
def test_bad_positions_are_refused_in_one_line(pos, mask, match):
    with pytest.raises(VectorError, match=match) as info:
        prepare_vectors(None, {}, _positions(), pos=pos, attention_mask=mask)
    assert "\n" not in str(info.value)


def test_pos_on_rows_is_refused_rather_than_ignored():
    with pytest.raises(VectorError, match="select positions of"):
        prepare_vectors(None, {}, torch.zeros(3, D), pos=-1)
    with pytest.raises(VectorError, match="select positions of"):
        prepare_vectors(None, {}, torch.zeros(3, D), attention_mask=torch.ones(3, D))
