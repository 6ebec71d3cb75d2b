"""The explainer's chat prompts as the reference writes them (Li et al. 2025).

The reference's configs write each prompt as chat messages ending in an empty assistant turn; its
collator renders them with the tokenizer's own chat template, cuts the turn's closing markup
(`dataloaders/base_dataset.py::format_messages`, `remove_final_assistant_eot=True`) and tokenises
the text with the tokenizer's defaults (`BaseDataCollator.__call__`). So a prompt carries whatever
the template writes: Llama 3.1's system header with its knowledge and today dates, Qwen3's empty
think block (`<think>\\n\\n</think>\\n\\n`, the template's for a final assistant turn), SmolLM2's
default system turn; and the tokenizer adds its BOS before the template's own where it adds one
(Llama 3, Gemma: two BOS tokens, as the reference's explainers were trained).
"""

from __future__ import annotations

from selfinterp_plugins.errors import TemplateError

__all__ = ["reference_chat_ids"]


def reference_chat_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    """The prompt ids of a system (optional) and user turn followed by an empty assistant turn whose
    closing is cut: the reference's `format_messages` of its config prompts, tokenised as its collator does."""
    from selfinterp_plugins.chat import turn_closing

    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("This tokenizer has no chat template, which chat prompts need; use prompt_format='raw' "
                            "(the reference's form for base-model explainers).")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": ""}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # what the reference cuts: for Llama 3 templates the tokenizer's EOS (`<|eot_id|>` on an
    # instruct tokenizer; a base one's `<|end_of_text|>` cuts nothing), else the turn's closing
    llama = "<|start_header_id|>" in str(tokenizer.chat_template)
    closing = tokenizer.eos_token if llama else turn_closing(tokenizer)
    if closing and text.endswith(closing):
        text = text[: -len(closing)]
    return tokenizer(text)["input_ids"]
