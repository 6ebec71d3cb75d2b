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
