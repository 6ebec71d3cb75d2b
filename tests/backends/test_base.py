"""backends/base.py: the verbs every backend inherits (logits and loss with the shared-prefix
cache, the default cache expand / select, check_site), on a fake backend whose forward pass is
written out: hidden = 500 · one_hot(id), logits = hidden."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins.backends.base import Backend
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.sites import Site

V = 4


class FakeBackend(Backend):
    name = "fake"

    def __init__(self):
        self.calls = []

    d_model = property(lambda self: V)
    n_layers = property(lambda self: 4)
    device = property(lambda self: torch.device("cpu"))

    def embed_tokens(self, ids):
        return torch.nn.functional.one_hot(ids, V).float()

    def fingerprint(self):
        return "fake"

    def run(self, input_ids, injection=None, past=None, keep_past=False):
        self.calls.append((input_ids.tolist(), past, keep_past))
        hidden = 500.0 * torch.nn.functional.one_hot(input_ids, V).float()
        return hidden, ({"ids": input_ids.clone()} if keep_past else None)

    def head(self, hidden):
        return hidden

    def read(self, input_ids, sites, positions=None):
        raise NotImplementedError


def test_default_expand_and_select_past_walk_tuples_lists_and_dicts():
    backend = FakeBackend()
    past = ((torch.tensor([[1.0, 2.0]]),), [torch.tensor([[3.0]])], {"k": torch.tensor([[4.0]])}, None)
    wide = backend.expand_past(past, 3)
    assert torch.equal(wide[0][0], torch.tensor([[1.0, 2.0]] * 3))
    assert type(wide[1]) is list and torch.equal(wide[1][0], torch.tensor([[3.0]] * 3))
    assert torch.equal(wide[2]["k"], torch.tensor([[4.0]] * 3)) and wide[3] is None
    rows = backend.select_past({"k": torch.tensor([[0.0], [1.0], [2.0]])}, torch.tensor([2, 0]))
    assert torch.equal(rows["k"], torch.tensor([[2.0], [0.0]]))
    with pytest.raises(BackendError) as err:
        backend.expand_past(("x",), 2)
    assert str(err.value) == ("Cannot expand or select rows of a str cache; override Backend.expand_past and "
                              "Backend.select_past for it.")
    assert backend.reuses_prefix() is True


def test_check_site_names_the_last_layer_and_what_a_site_is():
    backend = FakeBackend()
    assert backend.check_site(Site("resid_post", 3)) == Site("resid_post", 3)
    with pytest.raises(BackendError) as err:
        backend.check_site(Site("resid_post", 4))
    assert str(err.value) == "Site resid_post.4 is past the last layer (3); pick a smaller layer."
    with pytest.raises(BackendError) as err:
        backend.check_site("embed")
    assert str(err.value) == "Not a site: 'embed'; pass Site.parse('embed' | 'resid_pre.K' | 'resid_post.K')."


def _batch():
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 1]])
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 2] = True
    return ids, torch.zeros(2, V), mask, torch.tensor([[3], [3]]), torch.tensor([[1], [0]])


def test_loss_clamps_each_token_at_100_by_default_and_runs_the_whole_batch_once():
    """At position 3 the logits are 500 on the id there and 0 elsewhere; gold is another token, so
    its cross-entropy is 500 + log(1 + 3e-500) ≈ 500, clamped to 100."""
    backend = FakeBackend()
    ids, soft, mask, positions, gold = _batch()
    assert float(backend.loss(ids, soft, mask, Site(), positions, gold)) == pytest.approx(100.0)
    assert float(backend.loss(ids, soft, mask, Site(), positions, gold, clamp=1000.0)) == pytest.approx(500.0)
    assert backend.calls[0] == (ids.tolist(), None, False)  # no prefix reuse, no cache kept


@pytest.mark.parametrize("prefix_len, start", [(1, 1), (2, 2), (3, 0), (4, 0), (0, 0)])
def test_a_shared_prefix_runs_once_and_is_reused_unless_it_is_injected_or_the_whole_row(prefix_len, start):
    """Rows share ids 0, 1, 2; position 2 carries the injection: prefixes of 1 or 2 tokens are reused,
    one reaching the injection (3) or past the shared ids (4) is not."""
    backend = FakeBackend()
    ids, soft, mask, positions, gold = _batch()
    logits = backend.logits(ids, soft, mask, Site(), positions, prefix_len=prefix_len)
    expected = 500.0 * torch.nn.functional.one_hot(ids[:, 3:4], V).float()
    assert torch.equal(logits, expected)
    if start:
        assert backend.calls[0] == ([ids[0, :start].tolist()], None, True)  # the prefix, one row, its cache kept
        assert backend.calls[1][0] == ids[:, start:].tolist() and backend.calls[1][2] is False
        assert torch.equal(backend.calls[1][1]["ids"], ids[:, :start])  # the prefix's cache, expanded to both rows
    else:
        assert backend.calls == [(ids.tolist(), None, False)]


def test_a_prefix_as_long_as_the_rows_is_not_reused():
    """Identical rows, nothing injected: a prefix of every token would leave nothing to run."""
    backend = FakeBackend()
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    mask = torch.zeros(2, 4, dtype=torch.bool)
    logits = backend.logits(ids, torch.zeros(2, V), mask, Site(), torch.tensor([[3], [3]]), prefix_len=4)
    assert torch.equal(logits, 500.0 * torch.nn.functional.one_hot(ids[:, 3:4], V).float())
    assert backend.calls == [(ids.tolist(), None, False)]


def test_loss_reuses_the_shared_prefix_it_is_given():
    backend = FakeBackend()
    ids, soft, mask, positions, gold = _batch()
    assert float(backend.loss(ids, soft, mask, Site(), positions, gold, prefix_len=2)) == pytest.approx(100.0)
    assert [call[0] for call in backend.calls] == [[[0, 1]], ids[:, 2:].tolist()]
