"""Scorers on a planted SAE (latents that fire on known tokens): a label naming the trigger token
must beat an unrelated one; metrics, resume and the model judge's plumbing."""

from __future__ import annotations

import json
import math

import pytest

from selfinterp_plugins.plugins import get_scorer
from selfinterp_sae_lens.detection_scoring import ContextPool, ModelJudge, auc, binary_metrics, detection_score
from selfinterp_sae_lens.generation_scoring import conversation_ids, generation_score, parse_conversation
from selfinterp_sae_lens.latents import latent_acts, max_acts

from sae_fixtures import planted_sae


class EchoWriter:
    """Writes conversations that contain the label's words; counts how many labels it was asked."""

    def __init__(self):
        self.calls = 0

    def __call__(self, labels, n_samples):
        self.calls += len(labels)
        return [[f"[USER] Tell me about {label}. [ASSISTANT] Here is one{'' if k % 2 else ' more'}: {label}."
                 for k in range(n_samples)] for label in labels]


def keyword_judge(label, texts):
    """Says yes when a word of the label appears in the text: a perfect judge for token latents."""
    words = [w for w in label.lower().split() if len(w) > 2]
    return [float(any(w in t.lower() for w in words)) for t in texts]


def test_planted_latents_fire_only_on_their_token(tiny_backend):
    sae = planted_sae(tiny_backend)
    tok = tiny_backend.tokenizer
    ids = tok("The cat and the dog sat by the river, not the cats.", add_special_tokens=False)["input_ids"]
    acts = latent_acts(tiny_backend, sae, [ids, ids[:4]], features=[0, 1, 2, 3])
    assert acts[0].shape == (len(ids), 4) and acts[1].shape == (4, 4)
    firing = {tok.decode([ids[t]]): [j for j in range(4) if acts[0][t, j] > 0] for t in range(len(ids)) if (acts[0][t] > 0).any()}
    assert firing == {" cat": [0], " dog": [1], " river": [2]}
    # the first token never counts: a window starting with " cat" peaks at 0 for latent 0
    assert max_acts(latent_acts(tiny_backend, sae, [ids[1:3]], [0]))[0, 0] == 0


def test_parse_conversation_as_the_reference_does():
    # text before the first tag is the user's; a tag starts a turn; parts of one turn join with spaces
    assert parse_conversation("Sure!\n[USER]: Hi\n[ASSISTANT] Hello\nthere [USER] Bye") == [
        {"role": "user", "content": "Sure!"}, {"role": "user", "content": ": Hi"},
        {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"}]
    assert parse_conversation("no markers at all") == [{"role": "user", "content": "no markers at all"}]
    assert parse_conversation("[user] lower-case tags are text") == [
        {"role": "user", "content": "[user] lower-case tags are text"}]
    assert parse_conversation("[USER]") == [{"role": "assistant", "content": "[USER]"}]  # nothing usable: kept whole
    assert parse_conversation("  ") == []


def test_generation_score_names_the_token(tiny_backend, tmp_path):
    sae = planted_sae(tiny_backend)
    records = [{"id": "0", "scale": 1.0, "label": "the cat"}, {"id": "0", "scale": 2.0, "label": "tax law"},
               {"id": "1", "scale": 1.0, "label": "tax law"}, {"id": "2", "scale": 1.0, "label": "a river bank"}]
    writer = EchoWriter()
    out = tmp_path / "gen.jsonl"
    result = generation_score(records, sae, tiny_backend, writer, n_samples=3, output=out, chunk=2, progress=False)
    assert result["per_scale"] == {1.0: pytest.approx(2 / 3), 2.0: 0.0}
    assert result["per_feature"] == {0: 1.0, 1: 0.0, 2: 1.0}  # max over a latent's labels
    assert result["mean_max_hit_rate"] == pytest.approx(2 / 3)
    assert writer.calls == 3  # "tax law" (two latents) is written about once
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 * 3  # one record per (label record, sample)
    # resume: a crash in the first batch ("the cat", "tax law": 3 + 2 x 3 rows) redoes that batch and
    # writes only its missing rows; a crash after it redoes only "a river bank"
    lines = out.read_text().splitlines()
    for kept, asked in ((5, 3), (9, 1)):
        out.write_text("\n".join(lines[:kept]) + "\n" + lines[kept][:10])
        again = EchoWriter()
        assert generation_score(records, sae, tiny_backend, again, n_samples=3, output=out, chunk=2, progress=False) == result
        assert again.calls == asked
        keys = [(r["id"], r["scale"], r["label"], r["sample"]) for r in map(json.loads, out.read_text().splitlines())]
        assert len(keys) == 12 and len(set(keys)) == 12


def test_conversation_is_retokenised_with_the_chat_template(tiny_backend):
    tok = tiny_backend.tokenizer
    ids = conversation_ids(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the cat"}])
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>") and "<|im_start|>assistant\nthe cat<|im_end|>" in text


def test_detection_score_with_a_perfect_judge(tiny_backend):
    sae = planted_sae(tiny_backend)
    tok = tiny_backend.tokenizer
    sentences = ["I fed the cat today.", "The cat sleeps.", "Taxes are due soon.", "We walked to the river.",
                 "My dog barks.", "Rain fell all day.", "The old cat purrs.", "Numbers add up."]
    windows = [[tok.bos_token_id or 0] + tok(s, add_special_tokens=False)["input_ids"] for s in sentences * 3]
    pool = ContextPool.build(tiny_backend, sae, windows, [0, 1, 2])
    active, inactive = pool.examples(0, n_active=5, n_inactive=5)
    assert all(" cat" in tok.decode(windows[i]) for i in active) and len(active) == 5
    assert not any(" cat" in tok.decode(windows[i]) for i in inactive) and len(inactive) == 5
    good = detection_score([{"id": "0", "label": "the cat"}], pool, keyword_judge, tok, 5, 5, progress=False)
    bad = detection_score([{"id": "0", "label": "taxes"}], pool, keyword_judge, tok, 5, 5, progress=False)
    assert good["auc"] == 1.0 and good["accuracy"] == 1.0 and good["f1"] == 1.0
    assert bad["auc"] < good["auc"] and bad["f1"] == 0.0
    # a latent that never fires in the pool is reported, not averaged in
    none = detection_score([{"id": "3", "label": "x"}], ContextPool.build(tiny_backend, sae, windows, [3]), keyword_judge, tok,
                           progress=False)
    assert none["labels"] == 0 and none["no_activations"] == [3]


def test_metrics():
    assert auc([3, 2], [1, 0]) == 1.0 and auc([1], [1]) == 0.5 and auc([0], [1]) == 0.0
    assert math.isnan(auc([], [1]))
    m = binary_metrics([1.0, -1.0, 2.0], [-1.0, 0.5])  # tp 2, fn 1, fp 1, tn 1
    assert m["accuracy"] == pytest.approx(3 / 5) and m["f1"] == pytest.approx(2 / 3)


def test_model_judge_scores_in_batches(tiny_backend):
    judge = ModelJudge(tiny_backend, batch_size=2)
    texts = ["a cat", "a much longer text about taxes and rivers", "x"]
    scores = judge("cats", texts)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # batching and padding do not change a row's score
    alone = [judge("cats", [t])[0] for t in texts]
    assert scores == pytest.approx(alone, abs=1e-4)


def test_scorers_are_registered(tiny_backend):
    sae = planted_sae(tiny_backend)
    result = get_scorer("generation")([{"id": "0", "scale": 1.0, "label": "cat"}], None, sae=sae, backend=tiny_backend,
                                      writer=EchoWriter(), n_samples=2, progress=False)
    assert result["generation"]["mean_max_hit_rate"] == 1.0
    tok = tiny_backend.tokenizer
    windows = [[1] + tok(s, add_special_tokens=False)["input_ids"] for s in ["the cat", "the sea", "a cat", "a sea"]]
    result = get_scorer("detection")([{"id": "0", "label": "cat"}], None, sae=sae, backend=tiny_backend, windows=windows,
                                     judge=keyword_judge, progress=False)
    assert result["detection"]["auc"] == 1.0


def test_conversation_writing_shows_progress_per_step_and_writes_the_same(tiny_backend, capsys):
    """`sae score`'s bar counted labels, so one chunk of conversations (minutes on CPU) showed as a
    jump from 0 to 100%; the writer's own bar now moves per decoding step, drawing nothing."""
    from selfinterp_sae_lens.generation_scoring import ConversationWriter

    writer = ConversationWriter(tiny_backend, max_new_tokens=6, batch_size=4)
    quiet = writer(["cats", "rivers", "taxes"], 2)
    capsys.readouterr()
    shown = writer(["cats", "rivers", "taxes"], 2, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet  # the counting stops nothing and draws no random number
    assert "write conversations" in err and "0/12" in err  # 2 generate calls × 6 steps (the bar clears at the end)
    assert [line for line in err.replace("\r", "\n").splitlines() if "write conversations" in line and "/12" in line
            and not line.strip().startswith("write conversations: 100%")]  # it moved before the end


@pytest.mark.parametrize("record, match", [
    ({"id": "cat", "label": "x"}, r"Label record 1 \(id 'cat'\) names no SAE latent"),  # was ValueError: int('cat')
    ({"id": "-1", "label": "x"}, r"names no SAE latent"),
    ({"id": "0", "feature": -1, "label": "x"}, r"feature -1 is outside this SAE's 8 latents"),  # was the last latent
    ({"id": "0", "feature": 2.5, "label": "x"}, r"feature 2.5 is not a latent number"),  # was latent 2
    ({"id": "9", "label": "x"}, r"latent 9 is outside this SAE's 8 latents"),  # was an IndexError traceback
])
def test_a_record_that_names_no_latent_or_another_is_refused(tiny_backend, record, match):
    from selfinterp_plugins.errors import VectorError

    sae = planted_sae(tiny_backend)
    writer = EchoWriter()
    with pytest.raises(VectorError, match=match):
        generation_score([record], sae, tiny_backend, writer, n_samples=1, progress=False)
    assert writer.calls == 0  # refused before any conversation is written
    pool = ContextPool.build(tiny_backend, sae, [[1, 2, 3]], [0])
    with pytest.raises(VectorError, match=match):
        detection_score([record], pool, keyword_judge, tiny_backend.tokenizer, progress=False)


def test_feature_lists_are_checked_where_latents_are_read(tiny_backend):
    from selfinterp_plugins.errors import LabelError, VectorError
    from selfinterp_sae_lens.generation_scoring import feature_of

    sae = planted_sae(tiny_backend)
    for features in ([-1], [8], [1.5]):
        with pytest.raises(VectorError, match="latent"):
            latent_acts(tiny_backend, sae, [[1, 2, 3]], features)
        with pytest.raises(VectorError, match="latent"):
            ContextPool.build(tiny_backend, sae, [[1, 2, 3]], features)
    assert feature_of({"id": "3.1"}, None, 8) == 3  # a latent's second explanation (labelled_dataset's ids)
    with pytest.raises(LabelError, match="No label records to score"):
        generation_score([], sae, tiny_backend, EchoWriter(), progress=False)
    with pytest.raises(LabelError, match="No label records to score"):
        detection_score([], ContextPool.build(tiny_backend, sae, [[1, 2, 3]], [0]), keyword_judge,
                        tiny_backend.tokenizer, progress=False)


def test_a_scoring_output_resumes_only_for_the_same_sae_and_settings(tiny_backend, tmp_path):
    """A rerun into a scoring output kept every hit rate found under (id, scale, label), whatever
    SAE, subject or sample count made it; `<output>.run.json` now records them."""
    from selfinterp_plugins.errors import RunMismatchError

    records = [{"id": "0", "scale": 1.0, "label": "the cat"}, {"id": "1", "scale": 1.0, "label": "tax law"}]
    out = tmp_path / "gen.jsonl"
    sae = planted_sae(tiny_backend)
    generation_score(records, sae, tiny_backend, EchoWriter(), n_samples=3, output=out, progress=False)
    before = out.read_bytes()
    with pytest.raises(RunMismatchError, match=r"gen.jsonl was written from another sae \(its SHA-256 differs\)"):
        generation_score(records, planted_sae(tiny_backend, margin=0.5), tiny_backend, EchoWriter(), n_samples=3,
                         output=out, progress=False)
    with pytest.raises(RunMismatchError, match=r"samples=3, this run asks 2; rerun with samples=3 \(--samples 3\)"):
        generation_score(records, sae, tiny_backend, EchoWriter(), n_samples=2, output=out, progress=False)
    assert out.read_bytes() == before
    again = EchoWriter()
    generation_score(records, sae, tiny_backend, again, n_samples=3, output=out, progress=False)
    assert again.calls == 0 and out.read_bytes() == before  # the same run: nothing rescored
