"""The scorers on the real SmolLM2 with a planted latent (fires on " cat" at the input embedding):
the model itself writes the conversations and judges the contexts, so a label naming the token
must beat an unrelated one end to end."""

from __future__ import annotations

import pytest

from selfinterp_plugins import HFBackend
from selfinterp_sae_lens.detection_scoring import ContextPool, ModelJudge, detection_score
from selfinterp_sae_lens.generation_scoring import ConversationWriter, generation_score

from sae_fixtures import planted_sae

pytestmark = pytest.mark.real_model

CAT = ["My cat sleeps on the sofa all day.", "The cat chased a mouse.", "She fed the cat some fish.",
       "A black cat crossed the road.", "Our cat likes warm milk.", "The cat purred on my lap."]
OTHER = ["The bank raised interest rates.", "He paid his taxes in April.", "The train left at noon.",
         "Rain fell over the hills.", "She wrote a letter to her aunt.", "The market opened early."]


@pytest.fixture(scope="module")
def setup(smollm2):
    model, tok = smollm2
    backend = HFBackend(model, tok)
    return backend, planted_sae(backend)


def test_generation_scoring_prefers_the_label_naming_the_token(setup):
    """With the reference's writer prompt and sampling (top-k 50), SmolLM2 writes " cat" into 2 of 6
    conversations for "cats" (CI, 2026-12-01) and fewer for "tax law": a 135M writer is weak, so the test holds
    the ordering, not a level."""
    backend, sae = setup
    writer = ConversationWriter(backend, max_new_tokens=60)
    records = [{"id": "0", "feature": 0, "scale": 1.0, "label": "cats"}, {"id": "0", "feature": 0, "scale": 2.0, "label": "tax law"}]
    result = generation_score(records, sae, backend, writer, n_samples=6, progress=False)
    assert result["per_scale"][1.0] > 0 and result["per_scale"][1.0] > result["per_scale"][2.0]


def test_detection_scoring_with_the_model_as_judge(setup):
    """The pipeline on the real model: the pool picks exactly the sentences with " cat" as activating
    contexts, and SmolLM2 judges all of them (batched and one by one alike). How well a 135M judge
    does is a measurement, not a property to assert: on this planted case its AUC is 0.53 for "cats"
    vs 0.44 for "tax law", chance level (docs/results.md, "SAE features on SmolLM2")."""
    backend, sae = setup
    tok = backend.tokenizer
    windows = [[tok.bos_token_id] + tok(s, add_special_tokens=False)["input_ids"] for s in CAT + OTHER]
    pool = ContextPool.build(backend, sae, windows, [0])
    active, inactive = pool.examples(0, 6, 6)
    assert sorted(active) == list(range(6)) and sorted(inactive) == list(range(6, 12))
    judge = ModelJudge(backend, batch_size=5)
    result = detection_score([{"id": "0", "label": "cats"}], pool, judge, tok, 6, 6, progress=False)
    assert result["labels"] == 1 and 0.0 <= result["auc"] <= 1.0
    texts = [tok.decode(w, skip_special_tokens=True) for w in windows[:3]]
    assert judge("cats", texts) == pytest.approx([judge("cats", [t])[0] for t in texts], abs=1e-3)


def test_sae_label_takes_a_shipped_explainer_by_name(smollm2, tmp_path, monkeypatch, capsys):
    """`selfinterp sae label smollm2-topics` (and `shipped`) failed: the command took only a
    directory, while `selfinterp explain shipped` worked."""
    from selfinterp_plugins.cli import main

    from sae_fixtures import random_sae

    monkeypatch.chdir(tmp_path)
    random_sae(d_in=576, d_sae=4).save_model(tmp_path / "sae")
    for name in ("smollm2-topics", "shipped"):
        try:
            main(["sae", "label", name, "--sae", str(tmp_path / "sae"), "--features", "0:2", "--max-new-tokens", "3",
                  "--output", str(tmp_path / f"{name}.jsonl")])
        except SystemExit as exit_:
            assert not exit_.code, capsys.readouterr().err
        assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == 2
