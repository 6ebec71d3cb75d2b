"""Detection scoring of SAE labels, in the manner of EleutherAI's delphi.

A judge reads the label and one context and says whether the latent fires in it. Activating
contexts are corpus windows where the latent fires (after the first token), drawn evenly across
10 activation quantiles so a label must cover weak activations too, not just the top ones;
non-activating contexts are random windows where it never fires. The judge here is a local model
(the subject model by default) scored by one forward pass: its logit for "Yes" minus "No" after
the question, so the metrics are AUC (threshold-free), and accuracy / F1 at "Yes" > "No".
Differences from delphi: one context per judge prompt (delphi batches several), the judge's
answer is read from logits instead of parsed from generated text, and 20 + 20 contexts per
latent by default instead of delphi's 50 + 50 (2 CPU cores). Any callable
`judge(label, texts) -> scores` can replace the model judge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.errors import ArtifactError, LabelError

from .latents import latent_acts, max_acts

JUDGE_PROMPT = ('A feature of a language model is described as: "{label}".\n'
                'Text: "{text}"\n'
                "Does this text contain what the description describes? Answer Yes or No.")


@dataclass
class ContextPool:
    """Corpus windows (token ids) and each window's peak activation of the latents scored."""

    windows: list[list[int]]
    peaks: torch.Tensor  # (n_windows, n_features)
    features: list[int]
    d_sae: int | None = None  # the SAE's width, when built from it (a record's latent is checked against it)

    @classmethod
    def build(cls, backend, sae, windows: list[list[int]], features: list[int], batch_size: int = 32) -> ContextPool:
        from .latent_ids import feature_index
        from .sae_info import sae_info

        d_sae = sae_info(sae).d_sae
        features = sorted({feature_index(f, d_sae) for f in features})  # int(2.7) or -1 would be another latent
        peaks = max_acts(latent_acts(backend, sae, windows, features, batch_size))
        return cls(windows, peaks, features, d_sae)

    def examples(self, feature: int, n_active: int = 20, n_inactive: int = 20, quantiles: int = 10,
                 seed: int = 0) -> tuple[list[int], list[int]]:
        """Window indices of activating contexts (spread over activation quantiles) and of
        non-activating ones, seeded per feature."""
        if feature not in self.features:
            raise ArtifactError(f"Latent {feature} was not in this context pool; build it with that feature.")
        column = self.peaks[:, self.features.index(feature)]
        rng = random.Random(seed * 1_000_003 + feature)
        active = column.gt(0).nonzero().flatten()
        active = active[column[active].argsort()].tolist()  # weakest first
        chosen = []
        if active:
            bins = [active[len(active) * q // quantiles : len(active) * (q + 1) // quantiles] for q in range(quantiles)]
            bins = [b for b in bins if b]
            per_bin = max(1, n_active // len(bins))
            for b in bins:
                chosen.extend(rng.sample(b, min(per_bin, len(b))))
            rest = [i for i in active if i not in set(chosen)]
            chosen.extend(rng.sample(rest, min(max(0, n_active - len(chosen)), len(rest))))
            chosen = chosen[:n_active]
        inactive = column.eq(0).nonzero().flatten().tolist()
        return chosen, rng.sample(inactive, min(n_inactive, len(inactive)))


class ModelJudge:
    """A local chat model as the detection judge: score = logit("Yes") - logit("No")."""

    def __init__(self, backend, batch_size: int = 32):
        self.backend = backend
        self.batch_size = batch_size
        tok = backend.tokenizer
        self.yes = _first_token(tok, "Yes")
        self.no = _first_token(tok, "No")

    def _prompt(self, label: str, text: str) -> list[int]:
        tok = self.backend.tokenizer
        content = JUDGE_PROMPT.format(label=label, text=text.strip())
        if getattr(tok, "chat_template", None):
            chat = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
            return tok(chat, add_special_tokens=False)["input_ids"]
        return tok(content + "\nAnswer:")["input_ids"]

    @torch.no_grad()
    def __call__(self, label: str, texts: list[str]) -> list[float]:
        return self.score_pairs([(label, t) for t in texts])

    @torch.no_grad()
    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        from selfinterp_plugins.sites import Site

        from .latents import pad_batch

        pad = pad_token_id(self.backend.tokenizer)
        prompts = [self._prompt(label, text) for label, text in pairs]
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, mask = pad_batch(chunk, pad)
            last = (mask.sum(1) - 1)[:, None]
            soft = torch.zeros(len(chunk), self.backend.d_model)
            logits = self.backend.logits(ids, soft, torch.zeros_like(mask), Site(), last)[:, 0].float()
            scores.extend((logits[:, self.yes] - logits[:, self.no]).tolist())
        return scores


def _first_token(tokenizer, word: str) -> int:
    return tokenizer(word, add_special_tokens=False)["input_ids"][0]


def auc(positive: list[float], negative: list[float]) -> float:
    """Probability that a random activating context outscores a random non-activating one (ties 1/2)."""
    if not positive or not negative:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def binary_metrics(positive: list[float], negative: list[float], threshold: float = 0.0) -> dict:
    tp = sum(s > threshold for s in positive)
    fp = sum(s > threshold for s in negative)
    fn = len(positive) - tp
    tn = len(negative) - fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / max(1, len(positive) + len(negative)), "f1": f1, "auc": auc(positive, negative)}


def detection_score(records, pool: ContextPool, judge, tokenizer, n_active: int = 20, n_inactive: int = 20,
                    seed: int = 0, progress: bool = True) -> dict:
    """Accuracy, F1 and AUC of each label record (id, scale, label, feature) and their means.

    Latents with no activating context in the pool are counted in `no_activations` and left out of
    the means (nothing can be detected for them)."""
    from tqdm.auto import tqdm

    from .latent_ids import feature_of

    per_label, skipped = [], []
    features = [feature_of(r, None, pool.d_sae, n) for n, r in enumerate(records, 1)]  # all checked before any judging
    if not features:
        raise LabelError("No label records to score; pass the records of `sae label` or of a Neuronpedia export.")
    for r, feature in zip(tqdm(records, disable=not progress, desc="detection scoring", unit="label"), features):
        active, inactive = pool.examples(feature, n_active, n_inactive, seed=seed)
        if not active or not inactive:
            skipped.append(feature)
            continue
        texts = [tokenizer.decode(pool.windows[i], skip_special_tokens=True) for i in active + inactive]
        scores = judge(r["label"], texts)
        metrics = binary_metrics(scores[: len(active)], scores[len(active) :])
        per_label.append({"id": str(r["id"]), "scale": float(r.get("scale", 1.0)), "feature": feature,
                          "label": r["label"], "n_active": len(active), "n_inactive": len(inactive), **metrics})
    means = {k: sum(p[k] for p in per_label) / len(per_label) if per_label else float("nan") for k in ("accuracy", "f1", "auc")}
    return {**means, "labels": len(per_label), "no_activations": sorted(set(skipped)), "per_label": per_label}
