"""The padding id every batch uses: pad token, else EOS, else 0."""

from types import SimpleNamespace

from selfinterp_plugins.backends import pad_token_id


def test_pad_token_id_falls_back_from_pad_to_eos_to_zero(tokenizer):
    assert pad_token_id(SimpleNamespace(pad_token_id=5, eos_token_id=2)) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is a pad id, not "unset"
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
    assert pad_token_id(object()) == 0  # a backend's tokenizer may lack the attributes
    assert pad_token_id(tokenizer) == tokenizer.pad_token_id
