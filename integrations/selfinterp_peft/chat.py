"""DIT's chat prompts; the generic chat facts (`chat_ids`, `end_of_answer_ids`, `empty_think_block`)
are the core's `selfinterp_plugins.chat`.

DIT's reference renders every chat with the tokenizer's own template and `enable_thinking=False`
(`qa_train_dataset.py` line 71-83, `train_weight_to_text.py` lines 131-145 and 289-295, the
inspect_ai provider of `ask_qs_to_loras.py`): on Qwen3 the generation prompt ends with an empty
think block, `<think>\n\n</think>\n\n`. `dit_prompt`, `dit_prompt_ids`, `dit_ask_ids` and
`diff_turn_ids` write DIT's prompts that way, for the diffs' training data, DIT's training and asking."""

from __future__ import annotations

from selfinterp_plugins.chat import empty_think_block


def dit_prompt(tokenizer, user: str) -> str:
    """A user turn and the assistant's generation prompt as DIT's reference renders them: the chat
    template itself with `enable_thinking=False` (Qwen3: the empty think block after the assistant
    header; Gemma 3: BOS and its turns), where the template adds no system turn; where it adds one
    (SmolLM2's default system prompt, Llama 3's date block) the written-out user turn of `user_turn`,
    since the reference's models (Qwen3, Gemma 3) see none."""
    from selfinterp_plugins.templates import user_turn

    written = user_turn(tokenizer, user)  # refuses a tokenizer without a chat template
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
    return written if "system" in rendered.split(user, 1)[0].lower() else rendered


def dit_prompt_ids(tokenizer, user: str) -> list[int]:
    """`dit_prompt` tokenised as `apply_chat_template(..., tokenize=True)` does (no special tokens
    added): the prompt of DIT's training sequences (`train_weight_to_text.py` lines 289-295)."""
    return tokenizer(dit_prompt(tokenizer, user), add_special_tokens=False)["input_ids"]


def dit_ask_ids(tokenizer, user: str) -> list[int]:
    """`dit_prompt` tokenised as the reference's evaluation asks (`ask_qs_to_loras.py` through the
    inspect_ai HF provider at the pinned commit: the rendered chat passed to the tokenizer with its
    defaults): special tokens added, so a tokenizer that adds BOS (Gemma 3's) puts a second one before
    the template's."""
    return tokenizer(dit_prompt(tokenizer, user))["input_ids"]


def diff_turn_ids(tokenizer, user: str) -> tuple[list[int], list[int]]:
    """(prompt ids, ids that open the answer): `dit_prompt_ids` split after the assistant header,
    where the reference's diff-training labels begin (`qa_train_dataset.py` lines 89-103 search for
    `<|im_start|>assistant\n` / `<start_of_turn>model\n`), so Qwen3's empty think block is
    supervised as part of the answer; the second part is [] for other templates."""
    ids = dit_prompt_ids(tokenizer, user)
    block = empty_think_block(tokenizer)
    opening = tokenizer(block, add_special_tokens=False)["input_ids"] if block else []
    if not opening or ids[len(ids) - len(opening):] != opening:
        return ids, []
    return ids[:len(ids) - len(opening)], opening
