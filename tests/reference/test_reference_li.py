"""Explainers fine-tuned on their own computations against the reference (Li et al. 2025,
TransluceAI/introspective-interp, read through a fork at the upstream merge).

Each test re-implements, from a reading of the reference code, the piece of math it checks (the
docstring names the file and function) and compares it with this library on a tiny model, to
1e-5. They fail if a setting drifts back to what it was before docs/fidelity.md: every task on
LoRA, chat-wrapped activation-patching prompts, the per-token loss mean, unclipped gradients,
shuffled data, case-sensitive exact match or an F1 counting unparseable answers.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("peft")

from selfinterp_introspective import act_patch_task  # noqa: E402
from selfinterp_introspective.causal_targets import causal_metrics, causal_target  # noqa: E402
from selfinterp_introspective.config import LoRAExplainerConfig  # noqa: E402
from selfinterp_introspective.explainer import LoRAExplainer  # noqa: E402
from selfinterp_introspective.tasks import TASK_DEFAULTS, patching_examples  # noqa: E402

from selfinterp_plugins.models import tiny_model  # noqa: E402


def tiny():
    return tiny_model("llama", seed=0, initializer_range=0.2)


def make(**overrides):
    model, tok = tiny()
    settings = dict(rank=4, alpha=16, dropout=0.0, lr=1e-2, epochs=1, batch_size=3)
    return LoRAExplainer.create(model, tok, LoRAExplainerConfig(**{**settings, **overrides})), model, tok


def test_per_task_choices_are_the_published_configs():
    """`configs/feature_descriptions/instruct_131k.yaml`, `configs/act_patch/*`, `configs/input_ablation/*`
    (after the upstream's 1e-5 change); `model/utils.py::make_model` (LoRA alpha 16, dropout 0.1);
    `train.py` (constant lr, weight decay 0.01, the Trainer's max_grad_norm 1.0, no shuffling)."""
    assert TASK_DEFAULTS["feature_descriptions"] == {"finetune": "full", "lr": 5e-5, "batch_size": 64, "epochs": 10,
                                                     "prompt_format": "chat", "max_new_tokens": 20}
    assert TASK_DEFAULTS["activation_patching"] == {"finetune": "lora", "rank": 128, "lr": 5e-5, "batch_size": 32,
                                                    "epochs": 20, "prompt_format": "raw", "max_new_tokens": 50}
    assert TASK_DEFAULTS["input_ablation"] == {"finetune": "full", "lr": 1e-5, "batch_size": 8, "epochs": 30,
                                               "prompt_format": "chat", "max_new_tokens": 50}
    c = LoRAExplainerConfig()
    assert (c.alpha, c.dropout, c.weight_decay, c.grad_clip, c.shuffle, c.loss_reduction) == (16, 0.1, 0.01, 1.0, False, "padded")


def reference_embeds(model, ids, rep_id, vector):
    """`model/continuous_base.py::_process_continuous_tokens`: embed_tokens(ids), then the
    embedding at the continuous_rep token replaced by the vector, cast, unscaled."""
    e = model.get_input_embeddings()(ids).clone()
    e[ids == rep_id] = vector.to(e.dtype)
    return e


def test_soft_token_replaces_the_feature_marker_unscaled():
    explainer, model, tok = make()
    vector = torch.randn(model.config.hidden_size) * 9
    ex = explainer.feature_example(vector, "cats", 3, random.Random(0))
    embeds, _, _ = explainer.training_batch([ex])
    ids = torch.tensor([ex.prompt_ids + explainer._answer_ids(ex.answer)])
    torch.testing.assert_close(embeds, reference_embeds(model, ids, explainer.feature_id, vector), atol=1e-6, rtol=0)


def test_projection_is_a_bias_free_linear_per_layer():
    """`ContinuousCausalLMBase.__init__`: nn.Linear(subject_dim, hidden, bias=False) per target layer."""
    explainer, model, _ = make(subject_d_model=32, subject_layers=[2, 5])
    assert set(explainer.projections) == {"2", "5"}
    assert all(p.bias is None and p.weight.shape == (model.config.hidden_size, 32) for p in explainer.projections.values())
    ex = explainer.feature_example(torch.randn(32), "cats", 5, random.Random(0))
    torch.testing.assert_close(explainer._soft(ex), ex.vector @ explainer.projections["5"].weight.T)


def reference_labels(tok, full_ids, expected):
    """`dataloaders/base_dataset.py::BaseDataCollator.__call__`: the smallest t for which the last t
    tokens decode (special tokens skipped) to the expected label, spaces ignored; all else −100."""
    for t in range(1, len(full_ids) + 1):
        if tok.decode(full_ids[-t:], skip_special_tokens=True).strip().replace(" ", "") == expected.strip().replace(" ", ""):
            return [-100] * (len(full_ids) - t) + full_ids[-t:]
    raise AssertionError("label not found")


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
def test_labels_mask_the_prompt_as_the_references_collator(prompt_format):
    explainer, model, tok = make(prompt_format=prompt_format)
    row = {"layer": 3, "input_tokens": ["The", "Ġcat", "Ġsat"], "original_continuation": [" on"],
           "ablated_continuation": [" in"], "is_different": True,
           "patch_position": {"orig_pos": 1, "orig_text_token": "Ġcat", "intervention_vector": [0.1] * model.config.hidden_size}}
    ex = patching_examples(explainer, [row])[0]
    _, _, target = explainer.training_batch([ex])
    full = ex.prompt_ids + explainer._answer_ids(ex.answer)
    theirs = reference_labels(tok, full, ex.answer)
    assert target[0].tolist()[: len(full)] == theirs
    if prompt_format == "chat":  # the reference's chat rows supervise the turn's closing markup too
        assert tok.decode(full).endswith(ex.answer + "<|im_end|>\n")
    else:  # a raw row: the prompt ends in a newline, the answer follows, no end token
        assert tok.decode(ex.prompt_ids).endswith("?\n") and tok.decode(full).endswith(ex.answer)


def test_raw_activation_patching_prompt_is_the_references_string():
    """`dataloaders/act_patch.py::get_labels_intervention` (base explainer): one of five raw strings
    ending in `?\\n`, {tokens} as `<{text_token}>`, {input} the detokenised input."""
    explainer, model, tok = make(prompt_format="raw")
    row = {"layer": 3, "input_tokens": ["The", "Ġcat", "Ġsat"], "original_continuation": [" on"],
           "ablated_continuation": [" on"], "is_different": False,
           "patch_position": {"orig_pos": 1, "orig_text_token": "Ġcat", "intervention_vector": [0.1] * model.config.hidden_size}}
    ex = patching_examples(explainer, [row], seed=0)[0]
    feature = "".join(explainer.config.markers)
    candidates = [p.format(feature=feature, layer=3, tokens="< cat>", input="The cat sat") + "\n"
                  for p in act_patch_task.EXPLAINER_PROMPTS]
    assert tok.decode(ex.prompt_ids) in candidates
    assert ex.answer == "The output would remain unchanged from <<< on>>>."


def reference_batch_loss(logits, labels):
    """`continuous_base.py::fixed_cross_entropy_batchwise`: shifted CE with reduction none, the mean
    over ALL L positions of the padded sequence (ignored ones count 0), then over the batch."""
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    per = F.cross_entropy(logits.float().transpose(1, 2), shifted, ignore_index=-100, reduction="none")
    return per.mean(-1).mean()


def test_loss_and_one_training_step_equal_the_references():
    """One step: the reference's loss, AdamW(lr, weight_decay 0.01), clip_grad_norm_(1.0), constant lr."""
    explainer, model, tok = make(finetune="full", lr=1e-3, batch_size=3, grad_clip=1.0)
    g = torch.Generator().manual_seed(0)
    examples = [explainer.feature_example(torch.randn(model.config.hidden_size, generator=g), label, 4, random.Random(i))
                for i, label in enumerate(["a cat", "the tallest tree in town", "x"])]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    embeds, mask, target = explainer.training_batch(examples)
    with torch.no_grad():
        theirs_loss = reference_batch_loss(model(inputs_embeds=embeds, attention_mask=mask).logits, target)
        assert explainer.loss(examples).item() == pytest.approx(theirs_loss.item(), abs=1e-5)
    explainer.train(examples)
    ours = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(start[n])
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    embeds, mask, target = explainer.training_batch(examples)
    loss = reference_batch_loss(model(inputs_embeds=embeds, attention_mask=mask).logits, target)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    for n, p in model.named_parameters():
        # Adam's first step is lr·g/(|g|+eps): where |g| is near eps, float noise in g flips it, so those
        # elements are held to lr, every other one to 1e-5
        sharp = p.grad.abs() > 1e-6
        torch.testing.assert_close(ours[n][sharp], p.detach()[sharp], atol=1e-5, rtol=1e-4)
        assert (ours[n] - p.detach()).abs().max() <= 2e-3
    assert any(not torch.equal(ours[n], start[n]) for n in ours if "embed" in n)  # a full fine-tune moves embeddings too


def test_full_fine_tune_saves_and_reloads_to_the_same_answers(tmp_path):
    explainer, model, tok = make(finetune="full", lr=1e-2, epochs=3, max_new_tokens=4)
    examples = [explainer.text_example("Say cat", "cat"), explainer.text_example("Say dog", "dog")]
    explainer.train(examples)
    said = explainer.generate(examples)
    explainer.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").is_file() and not list((tmp_path / "full").glob("*.bin"))
    fresh, _ = tiny()
    loaded = LoRAExplainer.from_pretrained(tmp_path / "full", fresh, tok)
    assert loaded.config.finetune == "full" and loaded.generate(examples) == said


def reference_evaluate(predictions, targets):
    """`evaluator/causal_exact_match_eval.py::evaluate_item` + `_update_metrics`: strip, lower,
    strip('.'); the unchanged regex before the changed one; an item counts only if both parse;
    exact = same string and decision; F1 of 'changed' over the valid items."""
    import re

    def parse(text):
        m = re.search(r".*remain\s+unchanged\s+from\s+<<<([^>]*(?:>[^>]*)*?)>>>", text.lower())
        if m:
            return m.group(1).strip(), False
        m = re.search(r".*change\s+to\s+<<<([^>]*(?:>[^>]*)*?)>>>", text.lower())
        return (m.group(1).strip(), True) if m else None

    exact = semantic = valid = tp = fp = fn = 0
    for p, e in zip(predictions, targets):
        p, e = p.strip().lower().strip("."), e.strip().lower().strip(".")
        pc, ec = parse(p), parse(e)
        if pc and ec:
            valid += 1
            exact += p == e and pc[1] == ec[1]
            semantic += pc[0] == ec[0]
            tp += pc[1] and ec[1]
            fn += (not pc[1]) and ec[1]
            fp += pc[1] and not ec[1]
    precision = tp / (tp + fn) if tp + fn else 0  # the reference's names are swapped; F1 is not affected
    recall = tp / (tp + fp) if tp + fp else 0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0
    n = len(targets)
    return {"exact_match": exact / n, "content_match": semantic / n, "valid": valid / n, "changed_f1": f1}


def test_causal_metrics_equal_the_references_evaluator():
    targets = [causal_target(" Paris", " Paris"), causal_target(" Paris", " Rome"), causal_target("A", "B"),
               causal_target(" x", " x"), causal_target(" y", " z")]
    predictions = ["the output would remain unchanged from <<< paris>>>", "The most likely output would change to <<< Rome>>>.",
                   "nonsense", "The most likely output would change to <<< x>>>.", "The output would change to <<< z>>>."]
    ours = causal_metrics(predictions, targets)
    theirs = reference_evaluate(predictions, targets)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key


def test_generation_stops_at_the_references_stop_strings():
    """`base_evaluator.py`: generate(..., stop_strings=[" [END]", "\\n", ">>>."]), the prediction
    decoded with special tokens skipped and stripped."""
    from selfinterp_introspective.config import STOP_STRINGS, cut_at_stop

    assert STOP_STRINGS == (" [END]", "\n", ">>>.")
    assert cut_at_stop("The output would remain unchanged from <<< a>>>. And more") == \
        "The output would remain unchanged from <<< a>>>."
    assert cut_at_stop("first line\nsecond") == "first line\n"


def reference_format_messages(tok, messages):
    """`dataloaders/base_dataset.py::format_messages(tok, messages, remove_final_assistant_eot=True,
    add_final_assistant_header=False)` as the collator calls it for `prompt_without_answer` (lines
    17-55, 283-288): the template's rendering (no generation prompt), the final assistant turn's end
    cut, the end chosen by the template's family."""
    chat = tok.apply_chat_template(messages, tokenize=False)
    template = tok.chat_template
    if "<|start_header_id|>assistant<|end_header_id|>\\n\\n" in template or "<|start_header_id|>" in template:
        eot = tok.eos_token
    elif "<start_of_turn>model\n" in template or "<start_of_turn>" in template:
        eot = "<end_of_turn>\n"
    elif "<|im_start|>assistant" in template:
        eot = "<|im_end|>\n"
    else:
        raise ValueError("unknown tokenizer")
    if messages[-1]["role"] == "assistant" and chat.endswith(eot):
        chat = chat[: -len(eot)]
    return chat


@pytest.mark.parametrize("family", ["llama3.1", "llama3.1-base", "qwen3", "gemma3", "smollm2"])
@pytest.mark.parametrize("system", [None, "Answer with one letter."])
def test_chat_prompts_are_the_references_rendering(family, system, tiny_family):
    """The config prompts end in an empty assistant turn (`config/*/*.yaml`); the collator renders
    them with `format_messages` and tokenises the text with the tokenizer's defaults (lines 310-316).
    `llama3.1-base`: a base model's tokenizer, whose EOS is `<|end_of_text|>`: the reference cuts
    only that, so the prompt keeps the turn's `<|eot_id|>`."""
    import copy

    model, tok = tiny_model("llama", seed=0) if family == "smollm2" else tiny_family(family.removesuffix("-base"))
    if family == "llama3.1-base":
        tok = copy.deepcopy(tok)
        tok.eos_token = "<|end_of_text|>"
    explainer = LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, dropout=0.0))
    user = "What does {feature} encode at layer 3?"
    ex = explainer.vector_example(user, torch.zeros(model.config.hidden_size), "x", 3, system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user.replace("{feature}", explainer.feature_text)}, {"role": "assistant", "content": ""}]
    assert ex.prompt_ids == tok(reference_format_messages(tok, messages))["input_ids"]
    text = tok.decode(ex.prompt_ids)
    if family == "qwen3":  # Qwen3's empty think block: the prompt is the template's with enable_thinking=False
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        off = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
        assert ex.prompt_ids == tok(off, add_special_tokens=False)["input_ids"]
    if family in ("llama3.1", "gemma3"):  # the tokenizer's BOS before the template's own, as the reference trained
        assert ex.prompt_ids[:2] == [tok.bos_token_id] * 2
    if family == "llama3.1":
        assert "Cutting Knowledge Date: December 2023" in text and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    if family == "llama3.1-base":
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>")


def test_the_user_turn_chat_prompt_is_one_written_out_turn(tiny_qwen3):
    """`chat_prompt="user_turn"`, the form before the reference's: no think block, no system turn."""
    model, tok = tiny_qwen3
    explainer = LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, dropout=0.0, chat_prompt="user_turn"))
    ex = explainer.text_example("Hi?", "x")
    assert tok.decode(ex.prompt_ids) == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
