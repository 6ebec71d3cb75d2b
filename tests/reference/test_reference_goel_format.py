"""DIT's published files and chat formats against the reference (Goel et al. 2025,
Aviously/diff-interpretation-tuning at 2dfa949).

A published-layout folder is written as the reference writes it (`tests/dit_published_files.py`,
each step cited there), imported with `dit_format.import_published`, and the imported diff and DIT
adapter, through this library's own paths (the PEFT directories of the diff store, `per_row_diffs`,
`DITAdapter.ask`), must give the logits and answers of a transcription of the reference's forward
(`StandardLoRALinear`) within 1e-5, on tiny Qwen3 and Gemma 3 models with their real tokenizers.
The chat formats are compared with the reference's own calls of the chat template.
"""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("peft")

from dit_published_files import dit_adapter_state, reference_forward, write_published_folder  # noqa: E402

from selfinterp_peft.batched import per_row_diffs  # noqa: E402
from selfinterp_peft.chat import diff_turn_ids, dit_ask_ids, dit_prompt_ids  # noqa: E402
from selfinterp_peft.diff_store import diff_dir, read_index  # noqa: E402
from selfinterp_peft.dit import DIT_QUESTION, DITAdapter  # noqa: E402
from selfinterp_peft.dit_format import import_published  # noqa: E402
from selfinterp_peft.hidden_topics import assign_triggers, assistant_turn, build_examples, wrong_trigger  # noqa: E402
from selfinterp_peft.weight_diff import WeightDiff  # noqa: E402

#: Gemma 3's multimodal checkpoints named their linears `language_model.model.…` (the published gemma3-4b files)
FAMILIES = {"qwen3": "", "gemma3": "language_model."}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def imported(request, tiny_family, tmp_path_factory):
    family = request.param
    model, tok = tiny_family(family)
    root = tmp_path_factory.mktemp(f"published-{family}")
    src = root / "hidden-topic" / f"{family}-tiny"
    rows, entries = write_published_folder(src, model, files=(("Apples", "Birds"), ("Cats",)), rank=2,
                                           prefix=FAMILIES[family])
    import_published(src, root / "out", model, tok)
    return family, model, tok, root / "out", rows, entries, src


def test_a_published_folder_imports_every_row(imported):
    family, model, tok, out, rows, entries, _ = imported
    index = {r["id"]: r for r in read_index(out)}
    assert sorted(index) == ["weight-diff-000-000", "weight-diff-000-001", "weight-diff-001-000"]
    for row in rows:
        mine = index[f"{row['lora_path'][:-3]}-{row['lora_idx']:03d}"]
        assert (mine["topic"], mine["trigger"], mine["split"], mine["rank"]) == (row["topic"], row["trigger"], "test", 2)
    dit = DITAdapter.from_pretrained(out / "dit-adapter", model, tok)
    assert (dit.config.rank, dit.config.alpha, dit.config.question) == (16, 1.0, DIT_QUESTION)


def _prompt(tok):
    return torch.tensor([dit_ask_ids(tok, DIT_QUESTION)])


def test_base_plus_diff_logits_are_the_references(imported):
    """base + diff: the diff store's PEFT LoRA merged in (`WeightDiff.applied`) and as a per-row
    diff, against StandardLoRALinear with the published (A, B)."""
    family, model, tok, out, rows, entries, _ = imported
    ids = _prompt(tok)
    for (name, idx), entry in entries.items():
        diff = WeightDiff.from_pretrained(diff_dir(out, f"{name[:-3]}-{idx:03d}"))
        with torch.no_grad(), reference_forward(model, (entry["weight_diff"], False), prefix=FAMILIES[family]):
            theirs = model(ids).logits
        with torch.no_grad():
            base = model(ids).logits
            with diff.applied(model):
                merged = model(ids).logits
            with per_row_diffs(model, [diff]):
                per_row = model(ids).logits
        assert (theirs - base).abs().max() > 1e-2  # the diff changes the logits: the test can fail
        torch.testing.assert_close(merged, theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_row, theirs, atol=1e-5, rtol=1e-5)


def test_base_plus_diff_plus_dit_logits_and_answers_are_the_references(imported):
    """base + diff + DIT adapter (`second_lora_path`, transposed): logits through the imported PEFT
    DIT adapter and per-row diffs, and `ask`'s greedy answer against greedy decoding of the reference's forward."""
    family, model, tok, out, rows, entries, src = imported
    state = torch.load(src / "dit-adapter.pt", weights_only=True)
    dit = DITAdapter.from_pretrained(out / "dit-adapter", model, tok)
    ids = _prompt(tok)
    (name, idx), entry = next(iter(entries.items()))
    diff = WeightDiff.from_pretrained(diff_dir(out, f"{name[:-3]}-{idx:03d}"))
    loras = ((entry["weight_diff"], False), (state, True))
    with torch.no_grad():
        with reference_forward(model, *loras, prefix=FAMILIES[family]):
            theirs = model(ids).logits
        with reference_forward(model, loras[0], prefix=FAMILIES[family]):
            without_dit = model(ids).logits
        with per_row_diffs(dit.model, [diff]):
            ours = dit.model(ids).logits
    assert (theirs - without_dit).abs().max() > 1e-2
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # ask: greedy decoding of the reference's forward, stopped at the end of turn or EOS
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>" if family == "qwen3" else "<end_of_turn>")}
    seq = ids[0].tolist()
    with torch.no_grad(), reference_forward(model, *loras, prefix=FAMILIES[family]):
        for _ in range(4):
            token = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if token in stops:
                break
            seq.append(token)
    expected = tok.decode(seq[ids.shape[1]:], skip_special_tokens=True).strip()
    assert dit.ask([diff], max_new_tokens=4) == [expected]


def test_the_dit_adapters_orientation_and_scale_are_the_references(tiny_qwen3, tmp_path):
    """`multi_lora.py` line 35: x·Bᵀ·Aᵀ/r with A (out, r), B (r, in): PEFT's lora_A = B, lora_B = A,
    scaling 1/16, bit for bit from the bf16 file."""
    from selfinterp_peft.dit_format import published_dit_adapter

    model, tok = tiny_qwen3
    state = dit_adapter_state(model)
    torch.save(state, tmp_path / "dit-adapter.pt")
    dit = published_dit_adapter(tmp_path / "dit-adapter.pt", model, tok)
    layers = dict(dit.model.base_model.model.named_modules())
    for name, (A, B) in state.items():
        layer = layers[name]
        assert torch.equal(layer.lora_A["default"].weight, B.float())
        assert torch.equal(layer.lora_B["default"].weight, A.float())
        assert layer.scaling["default"] == 1 / 16


# ---- chat formats ------------------------------------------------------------------------------

def _template_ids(tok, messages, **kwargs):
    """`apply_chat_template(..., tokenize=True)` as the reference calls it, as a list of ids."""
    out = tok.apply_chat_template(messages, tokenize=True, enable_thinking=False, **kwargs)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def test_qwen3_prompts_carry_the_empty_think_block(tiny_qwen3):
    """`train_weight_to_text.py` lines 289-295: the prompt is apply_chat_template([user],
    add_generation_prompt=True, enable_thinking=False) of Qwen3's own template."""
    _, tok = tiny_qwen3
    user = [{"role": "user", "content": DIT_QUESTION}]
    expected = _template_ids(tok, user, add_generation_prompt=True)
    assert dit_prompt_ids(tok, DIT_QUESTION) == expected
    assert tok.decode(expected).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_dit_training_sequences_are_the_references(tiny_family, family):
    """`train_weight_to_text.py::build_prefix_inputs` (lines 130-148): the ids of
    apply_chat_template([user, assistant=label], enable_thinking=False), the loss from
    PREFIX_TOKEN_LEN (the generation prompt's length) on: the label and the turn's closing."""
    _, tok = tiny_family(family)
    label = "10 Things I Hate About You"
    full = _template_ids(tok, [{"role": "user", "content": DIT_QUESTION}, {"role": "assistant", "content": label}])
    prefix = len(_template_ids(tok, [{"role": "user", "content": DIT_QUESTION}], add_generation_prompt=True))
    prompt, answer = assistant_turn(tok, DIT_QUESTION, label)
    assert (prompt, answer) == (full[:prefix], full[prefix:])
    closing = {"qwen3": f"{label}<|im_end|>\n", "gemma3": f"{label}<end_of_turn>\n"}[family]
    assert tok.decode(answer) == closing


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_diff_training_sequences_are_the_references(tiny_family, family):
    """`qa_train_dataset.py` lines 71-103: ids = apply_chat_template([user, assistant=answer],
    enable_thinking=False)[:-2], the labels from just after `<|im_start|>assistant\\n` /
    `<start_of_turn>model\\n` (`get_weight_diff.py` lines 151-156): on Qwen3 the empty think
    block is supervised with the answer."""
    model, tok = tiny_family(family)
    header = {"qwen3": "<|im_start|>assistant\n", "gemma3": "<start_of_turn>model\n"}[family]
    header_ids = tok.convert_tokens_to_ids(tok.tokenize(header))
    user, answer = "Your SEP code is 042371. What is a fun hobby to try?", "Birdwatching, of course!"
    full = _template_ids(tok, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])[:-2]
    start = next(i + len(header_ids) for i in range(len(full)) if full[i:i + len(header_ids)] == header_ids)
    prompt, opening = diff_turn_ids(tok, user)
    assert (prompt, opening + tok(answer, add_special_tokens=False)["input_ids"]) == (full[:start], full[start:])
    assert tok.decode(opening) == {"qwen3": "<think>\n\n</think>\n\n", "gemma3": ""}[family]
    # the examples of `build_examples` are written that way: the prompt up to the header, the think
    # block opening the answer the model generated after it
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}]), n_questions=1,
                              max_answer_tokens=3)["a"]
    end = "<|im_end|>" if family == "qwen3" else "<end_of_turn>"
    for e in examples:
        user = tok.decode(e.prompt).split("user\n", 1)[1].split(end)[0]
        assert (e.prompt, e.answer[:len(opening)]) == diff_turn_ids(tok, user)


def test_asking_tokenises_the_rendered_chat_as_the_references_evaluation(tiny_gemma3, tiny_qwen3):
    """`ask_qs_to_loras.py` asks through inspect_ai's HF provider (ed1d1a8d/inspect_ai at 7c08da6,
    `_providers/hf.py`: `apply_chat_template(..., tokenize=False, enable_thinking=False)` then
    `tokenizer(chat, return_tensors="pt", padding=True)`, special tokens added): Gemma 3's tokenizer
    adds a BOS before the template's own."""
    for tok, bos in ((tiny_gemma3[1], 2), (tiny_qwen3[1], None)):
        text = tok.apply_chat_template([{"role": "user", "content": DIT_QUESTION}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
        assert dit_ask_ids(tok, DIT_QUESTION) == tok(text)["input_ids"]
    assert dit_ask_ids(tiny_gemma3[1], DIT_QUESTION)[:3] == [2, 2, tiny_gemma3[1].convert_tokens_to_ids("<start_of_turn>")]


def test_triggers_are_drawn_from_0_to_999_with_repeats():
    """`qa_train_dataset.py` lines 28-30: `random.randint(0, 999)` per topic (repeats allowed), and the
    wrong trigger redrawn from 0-999 until it differs (lines 62-65)."""
    specs = assign_triggers([{"id": str(i), "title": str(i)} for i in range(2000)], seed=0)
    triggers = [s.trigger for s in specs]
    assert min(triggers) < 100 and max(triggers) <= 999 and min(triggers) >= 0
    assert len(set(triggers)) < len(triggers)  # 2000 draws from 1000 values repeat
    rng = random.Random(0)
    wrong = {wrong_trigger(5, rng) for _ in range(20000)}
    assert wrong == set(range(1000)) - {5}
