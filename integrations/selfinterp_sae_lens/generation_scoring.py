"""Generation scoring of SAE labels (Pepper et al. 2026; the reference's `reward_system.py`).

A label is good if text written to exhibit it makes the latent fire. For each label a writer model
(the subject model by default, any other via `ConversationWriter(backend)`) is asked, with the
reference's system and user prompts word for word, for a VERY SHORT conversation in `[USER] ...
[ASSISTANT] ...` form, 10 times, sampled as the reference samples (T = 0.7, top-p 0.9 and
transformers' default top-k 50, which the reference leaves unset; <= 100 new tokens); each
conversation is parsed as the reference parses it, re-tokenised with the subject model's chat
template and run forward; a sample hits if the latent is > 0 on any token after the first. A
label's score is its hit rate; a latent's score is the max over its labels (one per scale); the
reported number is the mean over latents ("mean-max hit rate"). Per-label results stream to a
JSONL file, so a long run resumes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.backends.base import Sampling
from selfinterp_plugins.errors import LabelError
from selfinterp_plugins.storage import JsonlWriter, check_output_run, model_dtype, read_jsonl, sha256_hex

from .latent_ids import feature_of
from .latents import latent_acts, max_acts

WRITER_SYSTEM = ("You are a helpful AI assistant who generates EXTREMELY SHORT example conversations. The conversations "
                 "are between a user and an assistant, and have the following format:\n[USER] I'm a user.\n"
                 "[ASSISTANT] I'm the assistant.")
#: the label replaces the underscore (`template.replace("_", label)` in the reference)
WRITER_PROMPT = ("Produce a VERY SHORT conversation which exhibits '_'\nDo not include any other text in your response. "
                 "Start immediately with the conversation.")
#: transformers' default top-k, in force in the reference's `generate` call, which does not set it
REFERENCE_TOP_K = 50
_TAG = re.compile(r"(\[(?:USER|ASSISTANT)\])")


def writer_prompt(label: str) -> str:
    return WRITER_PROMPT.replace("_", label)


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

    def _prompt(self, label: str) -> list[int]:
        tok = self.backend.tokenizer
        messages = [{"role": "system", "content": WRITER_SYSTEM}, {"role": "user", "content": writer_prompt(label)}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(f"{WRITER_SYSTEM}\n{writer_prompt(label)}\n")["input_ids"]

    def __call__(self, labels: list[str], n_samples: int, progress: bool = False) -> list[list[str]]:
        """`n_samples` conversations per label. A transformers model generates every label's prompts
        in one left-padded batch (prompts differ in length); other backends batch equal lengths."""
        prompts = [self._prompt(label) for label in labels for _ in range(n_samples)]
        model = getattr(self.backend, "model", None)
        if hasattr(model, "generate") and hasattr(model, "config"):
            texts = self._generate_hf(model, prompts, progress)
        else:
            from selfinterp_plugins.evaluation.knowledge import generate_texts

            texts = generate_texts(self.backend, prompts, self.sampling.max_new_tokens, self.batch_size, progress,
                                   desc="write conversations", sampling=self.sampling)
        return [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(labels))]

    @torch.no_grad()
    def _generate_hf(self, model, prompts: list[list[int]], progress: bool = False) -> list[str]:
        """Sampled conversations, `batch_size` prompts per `generate` call; with `progress`, a bar
        moves per decoding step (one call writes 40 conversations of up to 100 tokens: minutes on
        CPU, which a per-label bar showed as a jump from 0 to 100%)."""
        from tqdm.auto import tqdm
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Tick(StoppingCriteria):  # stops nothing: counts decoding steps
            def __call__(self, input_ids, scores, **kwargs):
                bar.update(1)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        calls = -(-len(prompts) // self.batch_size)
        bar = tqdm(total=calls * self.sampling.max_new_tokens, disable=not progress, leave=False,
                   desc="write conversations", unit="step")
        tok = self.backend.tokenizer
        pad = pad_token_id(tok)
        from selfinterp_plugins.templates import end_of_turn_id

        stop = [i for i in (tok.eos_token_id, end_of_turn_id(tok)) if i is not None]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.sampling.seed)
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
                out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                                     temperature=self.sampling.temperature, top_p=self.sampling.top_p, top_k=self.sampling.top_k,
                                     max_new_tokens=self.sampling.max_new_tokens, pad_token_id=pad, eos_token_id=stop,
                                     stopping_criteria=StoppingCriteriaList([Tick()]))
                bar.update(bar.total * (start // self.batch_size + 1) // calls - bar.n)  # a call that ended early
                for row in out[:, width:].tolist():
                    texts.append(tok.decode([t for t in row if t not in stop and t != pad], skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False).strip())
        finally:
            torch.random.set_rng_state(generator_state)
            bar.close()
        return texts


def hit_rates(backend, sae, features: list[int], conversations: list[list[str]], batch_size: int = 16) -> list[float]:
    """For each (feature, its conversations): the fraction whose latent fires after the first token."""
    tok = backend.tokenizer
    sequences, owner = [], []
    for k, (feature, texts) in enumerate(zip(features, conversations)):
        for text in texts:
            sequences.append(conversation_ids(tok, parse_conversation(text)))
            owner.append(k)
    wanted = sorted(set(features))
    column = {f: j for j, f in enumerate(wanted)}
    peaks = max_acts(latent_acts(backend, sae, sequences, wanted, batch_size))
    hits = defaultdict(list)
    for row, k in enumerate(owner):
        hits[k].append(bool(peaks[row, column[features[k]]] > 0))
    return [sum(hits[k]) / len(hits[k]) if hits[k] else 0.0 for k in range(len(features))]


#: a scoring output's manifest keys -> the `sae score` option that sets each
SCORING_FLAGS = {"samples": "--samples", "max_new_tokens": "--max-new-tokens", "model_fingerprint": "--model",
                 "writer.model_fingerprint": "--writer-model"}


def scoring_run(sae, backend, writer, n_samples: int) -> dict:
    """What a label's hit rate depends on besides the label: the SAE (its weights), the subject
    model and its dtype, the conversations per label and their writer (model and sampling; a
    custom writer by its type). Recorded beside a scoring output, so a rerun with another SAE or
    other settings is refused instead of keeping the old rates under the same (id, scale, label)."""
    from dataclasses import asdict

    sae_weights = sha256_hex(part for name, tensor in sorted(sae.state_dict().items()) for part in (name, tensor))
    if isinstance(writer, ConversationWriter):
        who = {"model_fingerprint": writer.backend.fingerprint(), "model_dtype": model_dtype(writer.backend),
               **asdict(writer.sampling)}
    else:
        who = {"callable": f"{type(writer).__module__}.{type(writer).__qualname__}"}
    return {"sae_sha256": sae_weights, "model_fingerprint": backend.fingerprint(), "model_dtype": model_dtype(backend),
            "samples": int(n_samples), "writer": who}


def generation_score(records, sae, backend, writer=None, n_samples: int = 10, dataset=None, output=None,
                     chunk: int = 8, batch_size: int = 16, progress: bool = True) -> dict:
    """Mean-max hit rate of label records (id, scale, label) for an SAE's latents.

    `writer(labels, n_samples) -> list of lists of texts` writes the conversations (default: the
    subject model). With `output`, each scored label is appended to that JSONL and a rerun skips it;
    `<output>.run.json` records the run (`scoring_run`), and a rerun with another SAE, subject, writer
    or sample count is refused in one line.
    """
    from tqdm.auto import tqdm

    from .sae_info import sae_info

    d_sae = sae_info(sae).d_sae
    writer = writer or ConversationWriter(backend)
    keyed = [(str(r["id"]), float(r.get("scale", 1.0)), r["label"], feature_of(r, dataset, d_sae, n))
             for n, r in enumerate(records, 1)]
    if not keyed:
        raise LabelError("No label records to score; pass the records of `sae label` or of a Neuronpedia export.")
    done = {}
    writer_out = None
    if output is not None:
        path = Path(output)
        writer_out = JsonlWriter(path)  # locks the file and repairs a torn tail before it is read
        try:
            done = {(d["id"], float(d["scale"]), d["label"]): d for d in read_jsonl(path)}
            check_output_run(path, scoring_run(sae, backend, writer, n_samples), bool(done), SCORING_FLAGS)
        except BaseException:
            writer_out.close()
            raise
    todo = [k for k in keyed if k[:3] not in done]
    results = dict(done)
    bar = tqdm(total=len(keyed), initial=len(keyed) - len(todo), disable=not progress, desc="generation scoring", unit="label")
    try:
        # conversations depend on the label text only: a label shared by several latents (or scales)
        # is written about once, and each latent checks its own firing on those conversations
        by_label: dict[str, list[tuple]] = defaultdict(list)
        for key in todo:
            by_label[key[2]].append(key)
        distinct = list(by_label)
        for start in range(0, len(distinct), chunk):
            labels = distinct[start : start + chunk]
            conversations = (writer(labels, n_samples, progress=progress) if isinstance(writer, ConversationWriter)
                             else writer(labels, n_samples))
            written = dict(zip(labels, conversations))
            part = [key for label in labels for key in by_label[label]]
            texts = [written[label] for _, _, label, _ in part]
            rates = hit_rates(backend, sae, [f for *_, f in part], texts, batch_size)
            for (rid, scale, label, feature), rate, samples in zip(part, rates, texts):
                row = {"id": rid, "scale": scale, "label": label, "feature": feature, "hit_rate": rate, "samples": samples}
                results[(rid, scale, label)] = row
                if writer_out:
                    writer_out.write(row)
            bar.update(len(part))
    finally:
        bar.close()
        if writer_out:
            writer_out.close()
    rows = [results[k[:3]] for k in keyed]
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    """Mean-max hit rate over latents, plus the mean hit rate per scale."""
    per_feature: dict[int, float] = defaultdict(float)
    per_scale: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        per_feature[r["feature"]] = max(per_feature[r["feature"]], r["hit_rate"])
        per_scale[r["scale"]].append(r["hit_rate"])
    mean_max = sum(per_feature.values()) / len(per_feature) if per_feature else 0.0
    return {"mean_max_hit_rate": mean_max, "features": len(per_feature), "labels": len(rows),
            "per_scale": {s: sum(v) / len(v) for s, v in sorted(per_scale.items())},
            "per_feature": dict(sorted(per_feature.items()))}
