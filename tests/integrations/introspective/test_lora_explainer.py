"""The LoRA-tuned explainer on tiny models: the soft token sits between its markers unscaled (or
projected when sizes differ), only answer tokens are trained, training teaches it, save/load
reproduces its answers."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("peft")

from selfinterp_introspective.config import FEATURE_PROMPTS_RAW, LoRAExplainerConfig  # noqa: E402
from selfinterp_introspective.explainer import LoRAExplainer  # noqa: E402

from selfinterp_plugins.errors import TemplateError, VectorError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402


def tiny():
    # initializer_range 0.2: with the default 0.02 a tiny model's logits are nearly uniform and the
    # end-of-turn token shares the zero embedding row of padding, so a LoRA has too little to work with
    return tiny_model("llama", seed=1, initializer_range=0.2)


def make(**overrides):
    model, tok = tiny()
    settings = dict(rank=8, alpha=16, dropout=0.0, lr=1e-2, epochs=100, batch_size=4, max_new_tokens=2)
    config = LoRAExplainerConfig(**{**settings, **overrides})
    return LoRAExplainer.create(model, tok, config), model, tok


def test_soft_token_between_markers_unscaled_and_only_answers_labelled():
    explainer, model, tok = make()
    vector = torch.randn(model.config.hidden_size) * 7
    ex = explainer.feature_example(vector, "cats", layer=3, rng=random.Random(0))
    ids = ex.prompt_ids
    assert ids[ex.feature_pos - 1] == explainer.begin_id and ids[ex.feature_pos] == explainer.feature_id
    assert ids[ex.feature_pos + 1] == explainer.end_id and "layer 3" in tok.decode(ids)
    embeds, mask, _ = explainer._embeds([ids], [ex], left_pad=True)
    torch.testing.assert_close(embeds[0, ex.feature_pos], vector)  # unscaled, exactly the vector
    plain = model.get_input_embeddings()(torch.tensor(ids))
    others = [i for i in range(len(ids)) if i != ex.feature_pos]
    torch.testing.assert_close(embeds[0, others], plain[others])
    with pytest.raises(VectorError, match="NaN"):
        explainer.feature_example(torch.full((model.config.hidden_size,), float("nan")), "x", 3, random.Random(0))
    with pytest.raises(TemplateError, match="exactly one"):
        explainer.vector_example("no slot", vector, "x", 3)


def test_training_teaches_answers_and_save_load_reproduces_them(tmp_path):
    explainer, model, tok = make()
    rng = random.Random(0)
    torch.manual_seed(0)
    vectors = torch.randn(4, model.config.hidden_size) * 3
    labels = ["red apples", "blue sea", "green grass", "yellow sun"]
    examples = [explainer.feature_example(v, label, 5, rng) for v, label in zip(vectors, labels)]
    before = explainer.loss(examples).item()
    history = explainer.train(examples)
    assert history[-1] < 0.5 * before  # the end-of-turn token stays hard: a tiny model ties it to padding
    answers = explainer.generate(examples, batch_size=3)  # two new tokens: each label is two tokens
    assert answers == labels  # the vector decides the answer: each of four says its own label
    explainer.save_pretrained(tmp_path / "lx")
    fresh, _ = tiny()
    loaded = LoRAExplainer.from_pretrained(tmp_path / "lx", fresh, tok)
    assert loaded.generate(examples) == answers


def test_foreign_vectors_go_through_a_projection_per_layer(tmp_path):
    explainer, model, tok = make(subject_d_model=24, subject_layers=[2, 7])
    assert set(explainer.projections) == {"2", "7"}
    v = torch.randn(24)
    ex = explainer.feature_example(v, "x", 7, random.Random(0))
    embeds, _, _ = explainer._embeds([ex.prompt_ids], [ex], left_pad=False)
    torch.testing.assert_close(embeds[0, ex.feature_pos], explainer.projections["7"](v))
    with pytest.raises(VectorError, match="no projection"):
        explainer._embeds([ex.prompt_ids], [explainer.feature_example(v, "x", 4, random.Random(0))], left_pad=False)
    examples = [explainer.feature_example(torch.randn(24), w, 2, random.Random(i)) for i, w in enumerate(["one", "two"])]
    explainer.config.epochs = 2
    explainer.train(examples)
    assert explainer.projections["2"].weight.grad is not None  # the projection trains with the LoRA
    explainer.save_pretrained(tmp_path / "p")
    loaded = LoRAExplainer.from_pretrained(tmp_path / "p", tiny()[0], tok)
    torch.testing.assert_close(loaded.projections["2"].weight, explainer.projections["2"].weight)
    assert loaded.generate(examples) == explainer.generate(examples)


def test_resume_after_an_epoch_equals_an_uninterrupted_run(tmp_path):
    """Dropout on (0.1, the paper's): the resumed run must also replay the same random draws."""
    def run(epochs, checkpoint):
        explainer, model, tok = make(dropout=0.1)
        explainer.config.epochs = epochs
        examples = [explainer.feature_example(torch.ones(model.config.hidden_size) * i, w, 1, random.Random(i))
                    for i, w in enumerate(["one", "two", "three", "four", "five"])]
        history = explainer.train(examples, checkpoint_dir=checkpoint)
        return history, {n: p.detach().clone() for n, p in explainer.model.named_parameters() if p.requires_grad}

    full_history, full = run(3, tmp_path / "a")
    run(1, tmp_path / "b")  # "killed" after its first epoch's checkpoint
    resumed_history, resumed = run(3, tmp_path / "b")
    assert resumed_history == pytest.approx(full_history, abs=1e-6)
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("reduction", ["padded", "token"])
def test_loss_on_answer_positions_equals_the_full_sequence_loss(reduction):
    """The head runs only from the shortest prompt on; the loss must equal the one over all positions:
    the reference's (each row's summed cross-entropy over the padded length, then the mean over rows)
    or the mean over every answer token."""
    explainer, model, tok = make(rank=4, loss_reduction=reduction)
    examples = [explainer.feature_example(torch.randn(model.config.hidden_size), label, 5, random.Random(i))
                for i, label in enumerate(["a b c", "a longer label here", "x"])]
    examples.append(explainer.text_example("a much longer prompt than the others, " * 4, "answer"))
    embeds, mask, target = explainer.training_batch(examples)
    for ex, row in zip(examples, target):  # labels exactly on the answer tokens
        answer = explainer._answer_ids(ex.answer)
        assert row[len(ex.prompt_ids) : len(ex.prompt_ids) + len(answer)].tolist() == answer
        assert (row[: len(ex.prompt_ids)] == -100).all() and (row[len(ex.prompt_ids) + len(answer) :] == -100).all()
    with torch.no_grad():
        logits = explainer.model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
        if reduction == "token":
            full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1),
                                                     ignore_index=-100)
        else:
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target[:, 1:], ignore_index=-100,
                                                          reduction="none")
            full = (per_token.sum(1) / mask.shape[1]).mean()
        torch.testing.assert_close(explainer.loss(examples), full, atol=1e-5, rtol=1e-5)


def test_ridge_projection_starts_each_vector_at_its_answer_word(tmp_path):
    """projection='ridge': a projection per layer, even for same-size vectors, whose start maps a
    training vector to (near) the embedding of its answer's first token; saved and reloaded."""
    explainer, model, tok = make(projection="ridge", ridge=1e-3, epochs=0)
    d = model.config.hidden_size
    words = ["cat", "dog", "river", "sun", "tree", "house"]
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(len(words), d, generator=g) * 3
    examples = [explainer.feature_example(centres[i % 6] + 0.05 * torch.randn(d, generator=g), words[i % 6], 4 + i % 2,
                                          random.Random(i)) for i in range(48)]
    explainer.train(examples)  # 0 epochs: only the ridge start
    assert set(explainer.projections) == {"4", "5"} and explainer.config.subject_layers == [4, 5]
    embed = model.get_input_embeddings().weight
    hits = 0
    for ex in examples:
        soft = explainer._soft(ex)
        target = tok(ex.answer, add_special_tokens=False)["input_ids"][0]
        hits += int(torch.cdist(soft[None], embed.detach()).argmin()) == target
    assert hits == len(examples)  # every soft token starts nearest its answer's first token
    explainer.save_pretrained(tmp_path / "r")
    loaded = LoRAExplainer.from_pretrained(tmp_path / "r", tiny()[0], tok)
    assert loaded.config.projection == "ridge" and set(loaded.projections) == {"4", "5"}
    torch.testing.assert_close(loaded._soft(examples[0]), explainer._soft(examples[0]))
    with pytest.raises(VectorError, match="no projection"):
        loaded._soft(explainer.feature_example(centres[0], "cat", 9, random.Random(0)))


def test_a_lora_explainer_leaves_its_model_alone_and_its_peft_files_pass_the_shared_checks(tmp_path):
    """create and from_pretrained wrapped the caller's model in place (PEFT's layers in it, its weights
    frozen), and a NaN or a missing lora_B in the saved adapter loaded as PEFT left it."""
    import json

    from safetensors.torch import load_file, save_file

    from selfinterp_plugins.errors import ArtifactError

    model, tok = tiny()
    before = ([type(m) for m in model.modules()], [p.requires_grad for p in model.parameters()])
    explainer = LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, alpha=4, dropout=0.0, max_new_tokens=2))
    explainer.save_pretrained(tmp_path / "lx")
    LoRAExplainer.from_pretrained(tmp_path / "lx", model, tok)
    assert ([type(m) for m in model.modules()], [p.requires_grad for p in model.parameters()]) == before
    config = json.loads((tmp_path / "lx" / "lora_explainer_config.json").read_text())
    weights = tmp_path / "lx" / config.get("adapter_model_safetensors_file", "adapter_model.safetensors")
    tensors = load_file(str(weights))
    first = sorted(k for k in tensors if k.endswith("lora_B.weight"))[0]
    save_file({k: v for k, v in tensors.items() if k != first}, str(weights))
    config.pop("adapter_model_safetensors_sha256", None)
    (tmp_path / "lx" / "lora_explainer_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=rf"has {first.replace('lora_B', 'lora_A')} but no {first}"):
        LoRAExplainer.from_pretrained(tmp_path / "lx", model, tok)


def test_a_full_fine_tune_leaves_biases_and_norm_weights_undecayed(monkeypatch):
    """The reference trains with the Hugging Face Trainer, whose AdamW exempts biases and norm
    weights from weight decay (`Trainer.get_decay_parameter_names`: names holding "bias",
    "layernorm", "rmsnorm" or a "norm" component); ours decayed every weight by 0.01."""
    from selfinterp_plugins.models import tiny_family_model

    model, tok = tiny_family_model("llama3.1", attention_bias=True)
    explainer = LoRAExplainer.create(model, tok, LoRAExplainerConfig(finetune="full", epochs=1, batch_size=1,
                                                                     prompt_format="raw"))
    seen = {}
    real = torch.optim.AdamW

    def recording(groups, **kw):
        optimizer = real(groups, **kw)
        for group in optimizer.param_groups:
            seen.update({id(p): group["weight_decay"] for p in group["params"]})
        return optimizer

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    explainer.train([explainer.text_example("Hi", "yes")])
    decay = {name: seen[id(p)] for name, p in model.named_parameters()}
    by_hand = {name: 0.0 if name.endswith(("layernorm.weight", "model.norm.weight", ".bias")) else 0.01 for name in decay}
    assert decay == by_hand
    assert {"model.layers.0.self_attn.q_proj.bias", "model.norm.weight"} <= {n for n, d in by_hand.items() if d == 0.0}


@pytest.mark.parametrize("paraphrases", ["per_pass", "per_example"])
def test_each_epoch_draws_its_own_paraphrase_as_the_references_dataset(paraphrases, monkeypatch):
    """The reference's dataset calls `random.choice(prompts)` each time it is iterated
    (`dataloaders/features_explain.py` line 134), so every epoch sees a fresh paraphrase; with
    `paraphrases="per_example"` training sees the prompt drawn when the example was built."""
    explainer, model, tok = make(epochs=4, batch_size=10, paraphrases=paraphrases, prompt_format="raw")
    examples = [explainer.feature_example(torch.ones(model.config.hidden_size) * i, "w", 1, random.Random(i))
                for i in range(10)]
    seen = []
    real = LoRAExplainer.loss
    monkeypatch.setattr(LoRAExplainer, "loss", lambda self, batch: seen.append([ex.prompt_ids for ex in batch]) or real(self, batch))
    explainer.train(examples)
    assert len(seen) == 4
    texts = {tok.decode(ex.prompt_ids) for ex in examples}
    for epoch in seen:
        for ex, ids in zip(examples, epoch):
            # one of the six raw prompts of the reference, the example's own vector slot kept
            assert ids.count(explainer.feature_id) == 1 and len(ex.paraphrases) == 6
            assert any(tok.decode(ids) == tok.decode(tok(p.replace("{layer}", "1").replace("{feature}", explainer.feature_text))
                                                      ["input_ids"]) for p in FEATURE_PROMPTS_RAW)
    per_example = [[tok.decode(ids) for ids in epoch] for epoch in seen]
    if paraphrases == "per_example":
        assert all(set(epoch) <= texts and epoch == [tok.decode(ex.prompt_ids) for ex in examples] for epoch in per_example)
    else:  # 10 examples × 4 epochs of a 1-in-6 draw: the epochs differ
        assert len({tuple(epoch) for epoch in per_example}) == 4


def test_a_config_saved_before_the_chat_and_paraphrase_fields_loads_as_it_was_trained():
    """An explainer saved before `chat_prompt` and `paraphrases` existed was trained on one written-out
    user turn with one paraphrase per example: its file, lacking the keys, must not get today's defaults."""
    old = LoRAExplainerConfig.from_dict({"finetune": "lora", "rank": 4})
    assert (old.chat_prompt, old.paraphrases) == ("user_turn", "per_example")
    new = LoRAExplainerConfig.from_dict({"chat_prompt": "template", "paraphrases": "per_pass"})
    assert (new.chat_prompt, new.paraphrases) == ("template", "per_pass") == (LoRAExplainerConfig().chat_prompt,
                                                                              LoRAExplainerConfig().paraphrases)


@pytest.mark.parametrize("paraphrases", ["per_pass", "per_example"])
def test_a_checkpoint_from_before_paraphrases_were_kept_resumes_with_per_example(paraphrases):
    """The run manifest's data digest, as checkpoints written before 2026-12-07 hold it (prompt ids,
    answer, vector, soft position, layer per example), is kept with `per_example`, so such a run
    resumes with `--paraphrases per_example`; with `per_pass` the paraphrases shape training and count."""
    from selfinterp_plugins.epoch_checkpoints import rows_sha256

    explainer, model, tok = make(paraphrases=paraphrases)
    examples = [explainer.feature_example(torch.ones(model.config.hidden_size) * i, "w", 1, random.Random(i)) for i in range(3)]
    old = rows_sha256([ex.prompt_ids, ex.answer, ex.vector, ex.feature_pos, ex.subject_layer] for ex in examples)
    assert (explainer.run_manifest(examples)["training_data_sha256"] == old) == (paraphrases == "per_example")
