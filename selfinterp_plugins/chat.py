"""Chat-format token ids for prompts and answers: how a user turn is written, what closes an
assistant turn, what Qwen3's `enable_thinking=False` adds. In the core's public API because every
method that fine-tunes or asks a chat model needs the same facts (DIT in the PEFT plugin, Li et al.
in the introspective plugin), and a plugin never imports another plugin."""

from __future__ import annotations

__all__ = ["chat_ids", "empty_think_block", "end_of_answer_ids", "turn_closing"]


def chat_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Prompt ids in the model's chat format, generation prompt included. With no `system`, the
    chat has no system turn even where the tokenizer's template would add a default one
    (SmolLM2's does): the prompts of the reference's models (Qwen3, Gemma-3) have none."""
    from selfinterp_plugins.templates import user_turn

    if system:
        text = tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                             tokenize=False, add_generation_prompt=True)
    else:
        text = user_turn(tokenizer, user)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def turn_closing(tokenizer) -> str:
    """What the chat template writes after an assistant's message (`<|im_end|>\n`, `<end_of_turn>\n`):
    the tokens the reference supervises after an answer in a chat."""
    marker = "XQZJ"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    return text.split(marker, 1)[1] or (tokenizer.eos_token or "")


def end_of_answer_ids(tokenizer) -> list[int]:
    """What closes an assistant turn (end-of-turn marker, or EOS), so a diff learns to stop."""
    from selfinterp_plugins.templates import end_of_turn

    end = end_of_turn(tokenizer)
    if end:
        return tokenizer(end, add_special_tokens=False)["input_ids"]
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def empty_think_block(tokenizer) -> str:
    """What `enable_thinking=False` adds to the generation prompt (Qwen3: `<think>\n\n</think>\n\n`);
    "" for a template without the switch."""
    messages = [{"role": "user", "content": "u"}]
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    return off[len(on):] if off.startswith(on) else ""
