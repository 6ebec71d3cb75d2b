"""The answer format of the causal explainer tasks (Li et al. 2025, Transluce) and their metrics.

Both activation patching and input ablation ask "what happens to the model's next token if ...?";
the explainer answers `The output would remain unchanged from <<<X>>>.` or
`The most likely output would change to <<<Y>>>.` The metrics are the reference's
(`causal_exact_match_eval.py`; docs/fidelity.md): both texts are stripped, lower-cased and
stripped of dots; an answer is valid when it and the target both parse (the "unchanged" form is
tried first); exact match needs the whole normalised strings equal and the same decision, content
match only the same X; both count over ALL answers (an unparseable one is a miss), while the
changed/unchanged F1 ("changed" positive) counts the valid answers only. `decision_accuracy`
(every answer, an unparseable one counted wrong) is this project's addition.
"""

from __future__ import annotations

import re

UNCHANGED = "The output would remain unchanged from <<<{token}>>>."
CHANGED = "The most likely output would change to <<<{token}>>>."
_UNCHANGED_RE = re.compile(r".*remain\s+unchanged\s+from\s+<<<([^>]*(?:>[^>]*)*?)>>>", re.IGNORECASE)
_CHANGED_RE = re.compile(r".*change\s+to\s+<<<([^>]*(?:>[^>]*)*?)>>>", re.IGNORECASE)


def causal_target(original: str, new: str) -> str:
    """The sentence the explainer should say, given the next token without and with the change."""
    return UNCHANGED.format(token=original) if original == new else CHANGED.format(token=new)


def parse_causal(text: str) -> tuple[bool | None, str | None]:
    """(changed?, X stripped) read back from an answer as the reference reads it (the unchanged
    form first); (None, None) if it has neither form."""
    for pattern, changed in ((_UNCHANGED_RE, False), (_CHANGED_RE, True)):
        match = pattern.search(text)
        if match:
            return changed, match.group(1).strip()
    return None, None


def normalise(text: str) -> str:
    """The reference's normalisation before comparing: strip, lower-case, strip dots."""
    return text.strip().lower().strip(".")


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def causal_metrics(predictions: list[str], targets: list[str]) -> dict:
    """The reference's exact match, content match, valid fraction and changed / unchanged F1, plus
    this project's decision accuracy and the fraction of targets that say "changed"."""
    if len(predictions) != len(targets):
        raise ValueError("predictions and targets differ in length")
    exact = content = valid = right = tp = fp = fn = tn = 0
    for p, t in zip(predictions, targets):
        p, t = normalise(p), normalise(t)
        changed, said = parse_causal(p)
        truth, meant = parse_causal(t)
        if changed is None or truth is None:
            continue
        valid += 1
        exact += p == t and changed == truth
        content += said == meant
        right += changed == truth
        tp += changed and truth
        fp += changed and not truth
        fn += (not changed) and truth
        tn += (not changed) and not truth
    n = max(1, len(targets))
    return {"exact_match": exact / n, "content_match": content / n, "valid": valid / n,
            "changed_f1": _f1(tp, fp, fn), "unchanged_f1": _f1(tn, fn, fp), "decision_accuracy": right / n,
            "unreadable": len(targets) - valid, "n": len(targets),
            "changed_fraction": sum(parse_causal(t)[0] is True for t in targets) / n}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: what the columns of the causal-task schemas hold, as (test, description)
INT_OR_INTS = (lambda v: _is_int(v) or (isinstance(v, list) and bool(v) and all(map(_is_int, v))), "an integer or a list of integers")
TOKENS = (lambda v: isinstance(v, list) and bool(v) and all(isinstance(t, str) for t in v), "a non-empty list of token strings")
TEXT_OR_TOKENS = (lambda v: (isinstance(v, str) and bool(v)) or TOKENS[0](v), "a token string or a non-empty list of them")
TEXT = (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
BOOL = (lambda v: isinstance(v, bool), "true or false")
VECTOR = (lambda v: isinstance(v, list) and bool(v) and all(map(_is_finite_number, v)), "a non-empty list of finite numbers")
ANSWER = (lambda v: (isinstance(v, str) and bool(v.strip())) or _is_int(v), "an answer letter (a string)")


def check_fields(row: dict, n: int, what: str, spec: dict) -> None:
    """Each column named in `spec` (dotted for nested ones, e.g. `patch_position.orig_pos`) holds what
    its test expects, else an ArtifactError naming the row, the column and what it should hold.
    Columns missing from `row` are not checked here (the callers decide which are required)."""
    from selfinterp_plugins.errors import ArtifactError

    for key, (test, expected) in spec.items():
        value, present = row, True
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                present = False
                break
            value = value[part]
        if present and not test(value):
            raise ArtifactError(f"{what} row {n}: {key} should be {expected}, not {str(value)[:60]!r}; fix or drop that row.")


def read_task_rows(path, check) -> list[dict]:
    """Rows of a causal-task dataset (ours or the published Transluce one exported from the hub):
    .jsonl, .json (a list) or .parquet; every row passes `check(row, n)` or the load fails naming it."""
    from pathlib import Path

    from selfinterp_plugins.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"No task data at {path}; build it with `selfinterp lora-explainer make-data` or export the hub dataset.")
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
        rows = [_plain(r) for r in rows]
    elif path.suffix == ".json":
        from selfinterp_plugins.storage import read_json
        from selfinterp_plugins.storage.validation import MAX_JSONL_BYTES

        # bounded, and checked like every JSON file (a lone surrogate in a prompt is refused there)
        rows = read_json(path, MAX_JSONL_BYTES, expect=list, fix="export the dataset as a list (or as .jsonl)")
    else:
        from selfinterp_plugins.storage import read_jsonl

        rows = read_jsonl(path)
    return [check(row, n) for n, row in enumerate(rows, 1)]


def _plain(value):
    """numpy arrays and scalars (what parquet gives back) as plain Python values, nested dicts too."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
