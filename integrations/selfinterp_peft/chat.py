"""Chat-format token ids for prompts and answers, shared by DIT (`hidden_topics`, `dit`) and the
LoRA-tuned explainer of Li et al. (`li`): how a user turn is written, and what closes an assistant
turn. In a module of its own so that neither method imports the other's data code."""

from __future__ import annotations


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
