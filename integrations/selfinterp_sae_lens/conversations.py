"""The writer side of generation scoring (Pepper et al. 2026; the reference's `reward_system.py`):
the prompts that ask for a conversation exhibiting a label, the model that writes it, and the
parsing of what it wrote back into chat messages for the subject model.

The prompts are the reference's word for word and the sampling is the reference's (T = 0.7, top-p
0.9 and transformers' default top-k 50, which the reference leaves unset; <= 100 new tokens).
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.backends.base import Sampling

WRITER_SYSTEM = ("You are a helpful AI assistant who generates EXTREMELY SHORT example conversations. The conversations "
                 "are between a user and an assistant, and have the following format:\n[USER] I'm a user.\n"
                 "[ASSISTANT] I'm the assistant.")
#: the label replaces the underscore (`template.replace("_", label)` in the reference)
WRITER_PROMPT = ("Produce a VERY SHORT conversation which exhibits '_'\nDo not include any other text in your response. "
                 "Start immediately with the conversation.")
#: transformers' default top-k, in force in the reference's `generate` call, which does not set it
REFERENCE_TOP_K = 50
_TAG = re.compile(r"(\[(?:USER|ASSISTANT)\])")
#: the instruction's own sentences (label left out): a sample holding one repeats what it was told
_INSTRUCTION_SENTENCES = ("produce a very short conversation which exhibits", "do not include any other text in your response",
                          "start immediately with the conversation", "generates extremely short example conversations")


def writer_prompt(label: str) -> str:
    return WRITER_PROMPT.replace("_", label)


def echoes_instruction(text: str) -> bool:
    """Whether a written sample repeats a sentence of the writer's own instructions (case and
    spacing aside). Such a sample carries the label inside the quoted instruction, so the latent can
    fire on the instruction rather than on a conversation exhibiting the label."""
    flat = " ".join(text.split()).casefold()
    return any(sentence in flat for sentence in _INSTRUCTION_SENTENCES)


def parse_conversation(text: str) -> list[dict]:
    """`[USER] ... [ASSISTANT] ...` text as chat messages, parsed as the reference's
    `_parse_meta_conversation` does: lines split at the (upper-case) tags, parts of one turn joined
    by spaces, text before the first tag taken as the user's, and text with no usable turn kept
    whole as one assistant message."""
    parts = [part for line in text.split("\n") for part in _TAG.split(line)]
    messages: list[dict] = []
    role, content = None, []

    def flush():
        joined = " ".join(content).strip()
        if role is not None and joined:
            messages.append({"role": "user" if role == "USER" else "assistant", "content": joined})

    for part in (p.strip() for p in parts):
        if not part:
            continue
        tag = re.match(r"\[(USER|ASSISTANT)\]", part)
        if tag:
            flush()
            role, content = tag.group(1), []
        elif role is not None:
            content.append(part)
        else:
            role, content = "USER", [part]
    flush()
    if not messages and text.strip():
        return [{"role": "assistant", "content": text}]
    return messages


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A conversation in the subject model's chat format, as token ids (no generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return tokenizer(text)["input_ids"]


class ConversationWriter:
    """Writes example conversations with a model behind any backend (nothing injected)."""

    def __init__(self, backend, temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 100,
                 batch_size: int = 40, seed: int = 0, top_k: int = REFERENCE_TOP_K):
        self.backend = backend
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, top_k=top_k)
        self.batch_size = batch_size

    def prompt_ids(self, label: str) -> list[int]:
        tok = self.backend.tokenizer
        messages = [{"role": "system", "content": WRITER_SYSTEM}, {"role": "user", "content": writer_prompt(label)}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(f"{WRITER_SYSTEM}\n{writer_prompt(label)}\n")["input_ids"]

    def __call__(self, labels: list[str], n_samples: int, progress: bool = False) -> list[list[str]]:
        """`n_samples` conversations per label, grouped by label."""
        texts = self.write([label for label in labels for _ in range(n_samples)], progress=progress)
        return [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(labels))]

    def write(self, labels: list[str], offset: int = 0, progress: bool = False) -> list[str]:
        """One conversation per entry of `labels` (repeat a label for several). Entries are written
        `batch_size` at a time, mixing labels; the batch starting at entry `start` draws with seed
        `sampling.seed + offset + start`, so writing a list in parts (offset = where the part starts,
        parts a multiple of `batch_size`) draws what writing it whole does: a resumed scoring run
        writes the conversations an uninterrupted one would. A transformers model pads prompts of
        different lengths on the left; other backends batch equal lengths."""
        prompts = [self.prompt_ids(label) for label in labels]
        model = getattr(self.backend, "model", None)
        if hasattr(model, "generate") and hasattr(model, "config"):
            return self._generate_hf(model, prompts, offset, progress)
        from selfinterp_plugins.evaluation.knowledge import generate_texts

        texts = []
        for start in range(0, len(prompts), self.batch_size):
            sampling = replace(self.sampling, seed=self.sampling.seed + offset + start)
            texts += generate_texts(self.backend, prompts[start : start + self.batch_size], sampling.max_new_tokens,
                                    self.batch_size, progress, desc="write conversations", sampling=sampling)
        return texts

    @torch.no_grad()
    def _generate_hf(self, model, prompts: list[list[int]], offset: int = 0, progress: bool = False) -> list[str]:
        """Conversations, `batch_size` left-padded prompts per `generate` call; with `progress`, a
        bar moves per decoding step (one call writes 40 conversations of up to 100 tokens: minutes on
        CPU, which a per-label bar showed as a jump from 0 to 100%)."""
        from tqdm.auto import tqdm
        from transformers import StoppingCriteria, StoppingCriteriaList

        from selfinterp_plugins.templates import end_of_turn_id

        class Tick(StoppingCriteria):  # stops nothing: counts decoding steps
            def __call__(self, input_ids, scores, **kwargs):
                bar.update(1)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        sampling = self.sampling
        drawn = {"do_sample": False} if sampling.greedy else {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                                            "top_k": sampling.top_k}
        calls = -(-len(prompts) // self.batch_size)
        bar = tqdm(total=calls * sampling.max_new_tokens, disable=not progress, leave=False,
                   desc="write conversations", unit="step")
        tok = self.backend.tokenizer
        pad = pad_token_id(tok)
        stop = [i for i in (tok.eos_token_id, end_of_turn_id(tok)) if i is not None]
        generator_state = torch.random.get_rng_state()
        texts = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, p in enumerate(chunk):
                    ids[i, width - len(p) :] = torch.tensor(p)
                    mask[i, width - len(p) :] = 1
                torch.manual_seed(sampling.seed + offset + start)
                out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **drawn,
                                     max_new_tokens=sampling.max_new_tokens, pad_token_id=pad, eos_token_id=stop,
                                     stopping_criteria=StoppingCriteriaList([Tick()]))
                bar.update(bar.total * (start // self.batch_size + 1) // calls - bar.n)  # a call that ended early
                for row in out[:, width:].tolist():
                    texts.append(tok.decode([t for t in row if t not in stop and t != pad], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False).strip())
        finally:
            torch.random.set_rng_state(generator_state)
            bar.close()
        return texts
