"""Fixtures of the SAE-Lens tests (SAE builders are in sae_fixtures.py)."""

import pytest

pytest.importorskip("sae_lens")


@pytest.fixture
def tiny_backend(tiny_llama):
    from selfinterp_plugins import HFBackend

    model, tok = tiny_llama
    return HFBackend(model, tok)
