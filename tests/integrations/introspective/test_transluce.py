"""Transluce's published explainer layouts (`selfinterp_introspective.transluce`), written here the
way the reference's training saves them, on the tiny Llama-3.1 and Qwen3 models with their real
tokenizers.

How the reference writes them (TransluceAI/introspective-interp at 594d533): the marker rows of the
input and output embeddings re-drawn as mean + std * N(0, 1) of the matrix (`utils.py` lines
152-210), then either the whole model trained and saved as a transformers directory (`train.py`
line 315) or a LoRA r 128, alpha 16, dropout 0.1 on q,k,v,o,gate,up,down (`model/utils.py` lines
240-264) saved with `save_embedding_layers=True` (`model/continuous_peft.py` lines 78-88).
How it answers: the feature marker's input embedding replaced by the vector
(`model/continuous_base.py` lines 182-276), greedy decoding stopped at EOS or, for a non-Qwen3
explainer, at " [END]", "\\n" or ">>>." (`evaluator/base_evaluator.py` lines 94-102; a Qwen3
explainer gets no stop strings).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("peft")

from selfinterp_introspective.transluce import load_transluce  # noqa: E402

from selfinterp_plugins.errors import ArtifactError, OptionError, SelfInterpError, TemplateError  # noqa: E402

LLAMA_MARKERS = ("<|reserved_special_token_10|>", "<|reserved_special_token_12|>", "<|reserved_special_token_11|>")
QWEN_MARKERS = ("<|vision_start|>", "<|vision_pad|>", "<|vision_end|>")
FEATURES_BASE = "Transluce/features_explain_llama3.1_8b_llama3.1_8b"
PATCH_LLAMA = "Transluce/act_patch_llama3.1_8b_llama3.1_8b"
PATCH_QWEN = "Transluce/act_patch_qwen3_8b_qwen3_8b"
ABLATION_QWEN = "Transluce/input_ablation_qwen3_8b_qwen3_8b_hint"


def _redraw_markers(model, tok, markers, seed=1):
    """The reference's marker initialisation, re-stated: each row mean + std * randn."""
    gen = torch.Generator().manual_seed(seed)
    ids = [tok.convert_tokens_to_ids(m) for m in markers]
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            w = layer.weight
            mean, std = w.mean(0), w.var(0).sqrt()
            for i in ids:
                w[i] = mean + std * torch.randn(w.shape[1], generator=gen)
    return model


def _full_finetune(model, tok, markers, directory, seed=1):
    tuned = _redraw_markers(copy.deepcopy(model), tok, markers, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    tuned.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return tuned.eval()


def _lora(model, tok, markers, directory, seed=1):
    from peft import LoraConfig, get_peft_model

    base = _redraw_markers(copy.deepcopy(model), tok, markers, seed)
    config = LoraConfig(r=128, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"])
    peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(directory, save_embedding_layers=True)
    tok.save_pretrained(directory)
    return peft_model.eval()


def _reference_answer(model, tok, ids, feature_pos, vector, stop_strings, max_new_tokens=12):
    """Greedy decoding as the reference runs it, re-stated: the soft token at the feature marker,
    one full forward per token, stop at EOS or once the text holds a stop string."""
    ids = list(ids)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            embeds = model.get_input_embeddings()(torch.tensor([ids]))
            if vector is not None:
                embeds[0, feature_pos] = vector
            nxt = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            ids.append(nxt)
            new.append(nxt)
            text = tok.decode(new, skip_special_tokens=True)
            hits = [text.index(s) + len(s) for s in stop_strings if s in text]
            if hits:
                return text[: min(hits)].strip()
    return tok.decode(new, skip_special_tokens=True).strip()


def _raw_prompt_ids(tok, before, after, markers):
    """The reference's raw prompt: the string tokenised with BOS; the markers are special tokens,
    so the text splits at them exactly."""
    return ([tok.bos_token_id] + tok.encode(before, add_special_tokens=False)
            + [tok.convert_tokens_to_ids(m) for m in markers] + tok.encode(after, add_special_tokens=False))


@pytest.mark.parametrize("layout", ["full", "lora"])
def test_a_llama_explainer_answers_as_the_reference_generates(tiny_llama31, tmp_path, layout):
    model, tok = tiny_llama31
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved = (_full_finetune if layout == "full" else _lora)(model, tok, LLAMA_MARKERS, tmp_path / "explainer")
    explainer = load_transluce(tmp_path / "explainer", model, tok, FEATURES_BASE if layout == "full" else PATCH_LLAMA)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(7))
    example = explainer.vector_example("At layer 1, {feature} encodes ", vector, "", 1)
    ids = _raw_prompt_ids(tok, "At layer 1, ", " encodes ", LLAMA_MARKERS)
    assert example.prompt_ids == ids
    assert example.feature_pos == len(ids) - 1 - len(tok.encode(" encodes ", add_special_tokens=False)) - 1
    expected = _reference_answer(saved, tok, ids, example.feature_pos, vector, (" [END]", "\n", ">>>."))
    assert explainer.generate([example], max_new_tokens=12) == [expected]
    assert all(torch.equal(v, before_weights[k]) for k, v in model.state_dict().items())  # the base is untouched


def test_a_qwen3_lora_answers_as_the_reference_generates(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    saved = _lora(model, tok, QWEN_MARKERS, tmp_path / "explainer")
    explainer = load_transluce(tmp_path / "explainer", model, tok, PATCH_QWEN)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    example = explainer.vector_example("If feature {feature} at layer 1 is added, how would the output change?", vector, "", 1)
    marker_ids = [tok.convert_tokens_to_ids(m) for m in QWEN_MARKERS]
    at = example.prompt_ids.index(marker_ids[0])
    assert example.prompt_ids[at : at + 3] == marker_ids and example.feature_pos == at + 1
    expected = _reference_answer(saved, tok, example.prompt_ids, example.feature_pos, vector, ())
    assert explainer.generate([example], max_new_tokens=12) == [expected]


def test_a_qwen3_explainer_has_no_stop_strings(tiny_qwen3, tmp_path):
    """The reference gives a Qwen3 explainer no stop strings; ours cut its answers at the first
    newline. A fine-tune whose head can only write ".\\n" or ",\\n" shows it."""
    model, tok = tiny_qwen3
    tuned = copy.deepcopy(model)
    dot, comma = tok.encode(".\n", add_special_tokens=False), tok.encode(",\n", add_special_tokens=False)
    assert len(dot) == len(comma) == 1
    with torch.no_grad():  # the head sees hidden dimension 0 only, where just the two tokens have weight
        tuned.model.norm.weight.zero_()
        tuned.model.norm.weight[0] = 1.0
        tuned.lm_head.weight[:, 0] = 0.0  # (tied to the input embeddings in the tiny Qwen3: column 0 only)
        tuned.lm_head.weight[dot[0], 0] = 10.0
        tuned.lm_head.weight[comma[0], 0] = -10.0
    tuned.save_pretrained(tmp_path / "explainer")
    explainer = load_transluce(tmp_path / "explainer", model, tok, ABLATION_QWEN)
    example = explainer.text_example("What is 2 + 2?", "")
    answer = explainer.generate([example], max_new_tokens=4)[0]
    assert answer == _reference_answer(tuned.eval(), tok, example.prompt_ids, None, None, (), max_new_tokens=4)
    assert answer.count("\n") >= 2


def _refused(fn, *args, kind=SelfInterpError):
    with pytest.raises(kind) as err:
        fn(*args)
    line = str(err.value)
    assert "\n" not in line and "Traceback" not in line
    return line


def test_bad_inputs_are_one_line_each(tiny_llama31, tiny_qwen3, tmp_path):
    from safetensors.torch import save_file

    from selfinterp_plugins.models import tiny_family_model

    model, tok = tiny_llama31
    qwen, qwen_tok = tiny_qwen3
    full = tmp_path / "full"
    _full_finetune(model, tok, LLAMA_MARKERS, full)
    assert "load it onto meta-llama" in _refused(load_transluce, full, qwen, qwen_tok, FEATURES_BASE)
    assert "no single token <|reserved_special_token_10|>" in _refused(load_transluce, full, model, qwen_tok,
                                                                       FEATURES_BASE, kind=TemplateError)
    wide, wide_tok = tiny_family_model("llama3.1", hidden_size=96, intermediate_size=192)
    assert "hidden_size is 64, the model given has 96" in _refused(load_transluce, full, wide, wide_tok, FEATURES_BASE,
                                                                   kind=ArtifactError)
    assert "simulator" in _refused(load_transluce, full, model, tok, "Transluce/features_explain_llama3.1_8b_simulator",
                                   kind=OptionError)
    assert "Unknown Transluce explainer" in _refused(load_transluce, full, model, tok, "Transluce/nope", kind=OptionError)
    assert "is a PEFT LoRA" in _refused(load_transluce, full, model, tok, PATCH_LLAMA, kind=ArtifactError)
    # a LoRA trained on another base: its saved embeddings differ beyond the marker rows
    other, _ = tiny_family_model("llama3.1", seed=5)
    _lora(other, tok, LLAMA_MARKERS, tmp_path / "other-lora")
    assert "beyond the marker tokens" in _refused(load_transluce, tmp_path / "other-lora", model, tok, PATCH_LLAMA,
                                                  kind=ArtifactError)
    weights = full / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    _refused(load_transluce, full, model, tok, FEATURES_BASE, kind=ArtifactError)
    weights.write_text(json.dumps({"not": "tensors"}))  # not a safetensors file at all
    _refused(load_transluce, full, model, tok, FEATURES_BASE, kind=ArtifactError)
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3, dtype=torch.int64)}, str(weights))
    assert "not floating point" in _refused(load_transluce, full, model, tok, FEATURES_BASE, kind=ArtifactError)
    (full / "training_args.bin").write_bytes(b"\x80\x04")
    line = _refused(load_transluce, full, model, tok, FEATURES_BASE, kind=ArtifactError)
    assert "training_args.bin is a pickle-format file" in line and "delete it, or download" in line and "--exclude" in line
    assert "re-save" not in line  # a download is not the user's to re-save


def test_the_cli_refuses_a_bad_published_explainer_in_one_line_and_writes_nothing(tiny_llama31, tmp_path, capsys):
    from cli_models import refused

    model, tok = tiny_llama31
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    full = tmp_path / "full"
    _full_finetune(model, tok, LLAMA_MARKERS, full)
    (full / "training_args.bin").write_bytes(b"\x80\x04")  # what the HF Trainer leaves beside a model: a pickle
    out = tmp_path / "eval.json"
    common = ["lora-explainer", "eval", str(full), "--data", str(tmp_path), "--model", str(base), "--out", str(out)]
    assert "pickle-format" in refused(capsys, *common, "--task", "feature_descriptions", "--published", FEATURES_BASE)
    assert "pass --task feature_descriptions" in refused(capsys, *common, "--task", "input_ablation",
                                                         "--published", FEATURES_BASE)
    assert "Unknown Transluce explainer" in refused(capsys, *common, "--task", "input_ablation",
                                                    "--published", "Transluce/features_explain")
    assert not out.exists() and not (tmp_path / "eval.json.answers.jsonl").exists()
