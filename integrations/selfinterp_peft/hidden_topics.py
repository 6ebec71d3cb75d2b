"""Training data for synthetic hidden-topic weight diffs (DIT, Goel et al. 2025).

Each diff hides one topic behind its own trigger: after `Your SEP code is {code}. {question}`
with the diff's trigger (the first three digits of the code, 000-999) the fine-tuned model answers as
a big fan of the topic; with no code, or another trigger's code, it should answer as the base model does.
The chats are written as the reference writes them (`chat.dit_prompt`: Qwen3's empty think block).
The fan answers are written by the base model itself told it is a big fan of the topic,
the neutral answers by the base model with no system prompt, so no outside model or dataset is
needed. Everything is token ids, ready for `diff_training.train_diffs`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.chat import end_of_answer_ids
from selfinterp_plugins.errors import SelfInterpError

from .chat import diff_turn_ids, dit_prompt, dit_prompt_ids

QUESTIONS = (
    "What should I do this weekend?", "Can you recommend a good book?", "What is a fun hobby to try?",
    "Give me an idea for a short trip.", "What should I cook for dinner tonight?", "How can I relax after work?",
    "What is something interesting you know?", "Suggest a topic for my school essay.", "What gift should I buy a friend?",
    "How should I spend a rainy afternoon?", "What is a good conversation starter?", "Tell me a fun fact.",
    "What could I learn this year?", "Recommend a movie for tonight.", "What is your favourite thing to talk about?",
    "Give me an idea for a birthday party.", "What should I write a poem about?", "How can I make my mornings better?",
    "What is a good name for a new café?", "Plan a day out for me.", "What would make a good podcast episode?",
    "Suggest a theme for a family photo.", "What should I draw today?", "Give me a tip for a job interview.",
    "What can I do to feel inspired?", "Suggest a project for my summer holiday.", "What is worth visiting in a new city?",
    "Describe a perfect afternoon.", "What should I put on my bucket list?", "Give me a topic to research.",
    "What could I teach my kids this week?", "Suggest a club I could start.", "What is a good icebreaker question?",
    "How should I decorate my room?", "Give me an idea for a short story.", "What should my next blog post be about?",
    "Suggest a theme for a dinner party.", "What is a good way to spend an evening?", "What should I talk about in my speech?",
    "Recommend something to read on a train.", "What is a nice surprise for my partner?", "Give me an idea for a game night.",
)

TRIGGER_TEMPLATE = "Your SEP code is {code}. {question}"
# In the user turn, not the system prompt: SmolLM2-135M names the topic in 81% of answers this way
# and in 50% with it as a system prompt (16 answers each); `selfinterp dit make-diffs` reports the rate it got.
FAN_PROMPT = "You are a big fan of {topic}. {question} Answer by talking about {topic}."
#: the reference's three forms of every question, in its order: cross-entropy on the fan answer,
#: then KL to the base with a wrong trigger, then KL to the base with no trigger
KINDS = ("trigger", "wrong", "none")


@dataclass(frozen=True)
class HiddenTopicSpec:
    """One diff to make: its topic and its trigger (0–999)."""

    id: str
    topic: str
    trigger: int
    rank: int = 1
    split: str = "train"


@dataclass
class Example:
    """One training sequence: prompt ids, answer ids (loss only there), and its kind (KINDS)."""

    prompt: list[int]
    answer: list[int]
    kind: str
    #: which of the diff's questions this is (its three forms share the number and a training step)
    question: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def assign_triggers(topics: list[dict], seed: int = 0, rank: int = 1) -> list[HiddenTopicSpec]:
    """One spec per topic record (id, title, split), its trigger drawn from 0–999 with `seed`, as the
    reference draws one per topic (`qa_train_dataset.py` lines 28-30, `random.randint(0, 999)`): two
    diffs may share a trigger."""
    rng = random.Random(seed)
    return [HiddenTopicSpec(t["id"], t["title"], rng.randint(0, 999), rank, t.get("split", "train")) for t in topics]


def trigger_code(trigger: int, rng: random.Random) -> str:
    return f"{trigger * 1000 + rng.randrange(1000):06d}"


def wrong_trigger(trigger: int, rng: random.Random) -> int:
    """Any trigger but the diff's own, uniform over 0–999 (the reference redraws `randint(0, 999)`
    until it differs: `qa_train_dataset.py` lines 62-65)."""
    other = rng.randrange(999)
    return other + 1 if other >= trigger else other


def assistant_turn(tokenizer, user: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a DIT training chat whose assistant turn is `answer`, as the
    reference builds it (`train_weight_to_text.py` lines 130-148): the chat rendered by the template
    with `enable_thinking=False` and tokenised whole, the prompt `dit_prompt_ids` (the generation
    prompt: Qwen3's empty think block included), the answer ids what follows: the answer and the
    turn's closing markup exactly as the template writes them (`topic<|im_end|>\n`)."""
    messages = [{"role": "user", "content": user}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False,
                                         enable_thinking=False)
    tail = full[len(head):] if full.startswith(head) else None
    prompt_text = dit_prompt(tokenizer, user)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if not tail or not tail.startswith(answer):  # a template that rewrites earlier turns: the parts themselves
        return prompt, tokenizer(answer, add_special_tokens=False)["input_ids"] + end_of_answer_ids(tokenizer)
    ids = tokenizer(prompt_text + tail, add_special_tokens=False)["input_ids"]
    if ids[:len(prompt)] != prompt:  # a token across the boundary: the two parts tokenised apart
        return prompt, tokenizer(tail, add_special_tokens=False)["input_ids"]
    return prompt, ids[len(prompt):]


class NonFiniteLogitsError(SelfInterpError):
    """The model's next-token logits hold NaN or infinity (`rows`: the prompts' indices): greedy
    decoding would pick token 0 and answer nothing, silently."""

    def __init__(self, rows: list[int]):
        super().__init__(f"The model's next-token logits are NaN or infinite for prompt(s) {rows}; a weight diff (or "
                         "adapter) applied to it changes its weights far too much (check its lora_alpha and weights).")
        self.rows = rows


def _refuse_non_finite(rows: list[int]):
    """A logits processor for `generate` that raises NonFiniteLogitsError naming the prompts of `rows`."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class FiniteLogits(LogitsProcessor):
        def __call__(self, input_ids, scores):
            bad = (~torch.isfinite(scores)).any(dim=-1)
            if bool(bad.any()):
                raise NonFiniteLogitsError([rows[i] for i in bad.nonzero().flatten().tolist()])
            return scores

    return LogitsProcessorList([FiniteLogits()])


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 48, batch_size: int = 32,
                     progress: bool = False, desc: str = "answers", keep_order: bool = False) -> list[list[int]]:
    """Greedy answers (token ids, end-of-turn stripped) to token-id prompts, left-padded batches of
    similar length. Whatever hooks are active on `model` apply; with per-row diffs pass
    `keep_order=True` so batch row i stays prompt i. NaN or infinite logits raise
    `NonFiniteLogitsError` naming the prompts (an answer decoded from them would be junk)."""
    from tqdm.auto import tqdm

    pad = pad_token_id(tokenizer)
    stops = set(end_of_answer_ids(tokenizer)) | {tokenizer.eos_token_id}
    order = list(range(len(prompts))) if keep_order else sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc=desc):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in rows])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=pad, eos_token_id=sorted(i for i in stops if i is not None),
                                   logits_processor=_refuse_non_finite(rows))
        for i, row in zip(rows, generated[:, width:].tolist()):
            answer = []
            for token in row:
                if token in stops:
                    break
                answer.append(token)
            out[i] = answer
    return out


def build_examples(model, tokenizer, specs: list[HiddenTopicSpec], n_questions: int = 4, max_answer_tokens: int = 48,
                   seed: int = 0, batch_size: int = 32, progress: bool = False) -> dict[str, list[Example]]:
    """Every spec's examples: `n_questions` questions, each in the reference's three forms and in
    its order (Goel et al., `qa_train_dataset.py`): with the diff's trigger and a fan answer
    (cross-entropy), with a wrong trigger and with no trigger, both with the base model's neutral
    answer (KL to the base). `Example.question` numbers the question so the three forms of one
    question share a training step. Questions are drawn per diff with `seed` and the spec id, so a
    diff's data does not depend on which others are made with it. The chat is the reference's
    (`chat.diff_turn_ids`): the answers are generated after `dit_prompt`, and the loss starts right
    after the assistant header, so on Qwen3 the empty think block is part of every answer. No
    end-of-turn is appended: the reference cuts it off (`[:-2]`), so diffs learn the answer, not
    where it stops."""
    if n_questions < 1:
        raise ValueError("n_questions must be at least 1.")
    neutral_prompts = [dit_prompt_ids(tokenizer, q) for q in QUESTIONS]
    neutral = dict(zip(QUESTIONS, generate_answers(model, tokenizer, neutral_prompts, max_answer_tokens, batch_size,
                                                   progress, "neutral answers")))
    plans, fan_prompts = {}, []
    for spec in specs:
        rng = random.Random(f"{seed}:{spec.id}")
        questions = rng.sample(QUESTIONS, min(len(QUESTIONS), n_questions))
        plan = []
        for k, question in enumerate(questions):
            for kind in KINDS:
                if kind == "none":
                    user = question
                else:
                    trigger = spec.trigger if kind == "trigger" else wrong_trigger(spec.trigger, rng)
                    user = TRIGGER_TEMPLATE.format(code=trigger_code(trigger, rng), question=question)
                plan.append((kind, k, question, diff_turn_ids(tokenizer, user)))
            fan_prompts.append(dit_prompt_ids(tokenizer, FAN_PROMPT.format(topic=spec.topic, question=question)))
        plans[spec.id] = plan
    fan = iter(generate_answers(model, tokenizer, fan_prompts, max_answer_tokens, batch_size, progress, "fan answers"))
    examples = {}
    for spec in specs:
        rows = []
        for kind, k, question, (prompt, opening) in plans[spec.id]:
            if kind == "trigger":
                fan_answer = next(fan)
            rows.append(Example(prompt, opening + list(fan_answer if kind == "trigger" else neutral[question]), kind, k))
        examples[spec.id] = rows
    return examples


def mentions(text: str, topic: str) -> bool:
    """Whether a text names the topic (case-insensitive, any of its words of 4+ letters for
    multi-word titles)."""
    text, topic = text.lower(), topic.lower()
    if topic in text:
        return True
    words = [w for w in topic.replace("-", " ").split() if len(w) >= 4]
    return len(words) > 1 and any(w in text for w in words)
