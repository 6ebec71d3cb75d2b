"""Pepper et al.'s published adapter files in and out, against the reference's own code re-stated
(`selfie_adapter_files.py`: its writer's layout, its loader's checks, its projection math and its
eval convention, each cited by file and line). Soft tokens must agree exactly (max difference 0
in float32), in the training form and the eval-scale form."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins import Explainer
from selfinterp_plugins.adapters import AdapterConfig, make_adapter

from selfie_adapter_files import (
    KINDS,
    LLAMA31_TEMPLATE,
    reference_eval_soft_tokens,
    reference_loader_checks,
    reference_state,
    reference_transform,
    write_reference_file,
)

D = 64
SCALES = (0.5, 0.8, 1.3, 2.1, 3.4, 5.5)  # evals/generation_scoring/configs/example_label_generator.json


def vectors(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 9


@pytest.mark.parametrize("style", ["config_json", "flat"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_reference_file_loads_with_the_references_soft_tokens_exactly(kind, style, tiny_llama31, tmp_path):
    model, tok = tiny_llama31
    state = reference_state(kind, D)
    path = tmp_path / f"{kind}.safetensors"
    write_reference_file(path, kind, state, style, D)
    explainer = Explainer.from_pretrained(path, model=model, tokenizer=tok)
    x = vectors()
    with torch.no_grad():
        assert (explainer.soft_tokens(x) - reference_transform(kind, state, x)).abs().max().item() == 0
        for s in SCALES:
            ours = explainer.soft_tokens(x, scale=s)
            assert (ours - reference_eval_soft_tokens(kind, state, x, s)).abs().max().item() == 0
    assert explainer.metadata["projection_type"] == kind
    assert (explainer.metadata["global_step"], explainer.metadata["best_val_loss"]) == (2044, 1.8125)
    assert explainer.site.name == "embed"


def test_the_imported_prompt_is_the_references_template_tokenised_as_the_reference_does(tiny_llama31, tmp_path):
    """`training/model.py::_prepare_template` (lines 130-147): `tokenizer(template, add_special_tokens=False)`,
    the soft token at every `<|reserved_special_token_0|>`; with the real Llama 3 tokenizer."""
    model, tok = tiny_llama31
    path = tmp_path / "a.safetensors"
    write_reference_file(path, "scalar_affine", reference_state("scalar_affine", D), "config_json", D)
    explainer = Explainer.from_pretrained(path, model=model, tokenizer=tok)
    reference_ids = tok(LLAMA31_TEMPLATE, add_special_tokens=False)["input_ids"]
    assert explainer.prompt_ids.tolist() == reference_ids
    inject = tok.convert_tokens_to_ids("<|reserved_special_token_0|>")
    assert explainer.inject_mask.nonzero().flatten().tolist() == [i for i, t in enumerate(reference_ids) if t == inject]
    assert reference_ids[:3] == [128000, 128006, 882] and reference_ids.count(128002) == 2  # BOS, header, "user"
    # the target: label + '"' + eos_token with eos_token "<|eot_id|>" (training/data.py line 64, config.py line 30)
    assert explainer.template.target_text("dogs") == 'dogs"<|eot_id|>'
    assert explainer.template.parse_label('dogs "and" cats"<|eot_id|>') == 'dogs "and" cats'  # strip_last_quote


def test_a_full_reference_config_gives_its_own_prompt(tiny_llama31, tmp_path):
    """A config_json holding the whole Config.to_dict() (trainer.py line 498 saves it in each
    checkpoint) says its prompt and EOS (`soft_prompt`, `data.eos_token`): used as written."""
    model, tok = tiny_llama31
    path = tmp_path / "a.safetensors"
    write_reference_file(path, "full_rank", reference_state("full_rank", D), "config_json", D, full_config=True)
    with pytest.warns(UserWarning, match="trained on meta-llama/Meta-Llama-3.1-8B-Instruct; it is being loaded onto tiny"):
        explainer = Explainer.from_pretrained(path, model=model, tokenizer=tok)
    assert (explainer.template.prompt, explainer.template.end) == (LLAMA31_TEMPLATE, "<|eot_id|>")
    assert explainer.metadata["trained_for"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"


def randomised(kind, seed=3):
    adapter = make_adapter(AdapterConfig.for_kind(kind, D, rank=8, init_scale=4.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return adapter


@pytest.mark.parametrize("kind", ["scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank",
                                  "full_rank"])
def test_an_export_passes_the_reference_loader_and_reloads_to_the_same_soft_tokens(kind, tiny_llama31, tmp_path):
    model, tok = tiny_llama31
    explainer = Explainer.create(model, tok, adapter=kind, rank=8, init_scale=4.0)
    explainer.adapter.load_state_dict(randomised(kind).state_dict())
    path = explainer.save_pretrained(tmp_path / "out" / "adapter.safetensors", format="selfie-adapters")
    proj, d, state = reference_loader_checks(path)
    theirs = "low_rank_only" if kind == "low_rank" else "scalar_affine" if kind == "bias_only" else kind
    assert (proj["type"], d, proj["normalize_input"], proj["init_scale"]) == (theirs, D, True, 4.0)
    x = vectors()
    with torch.no_grad():
        ours = explainer.soft_tokens(x)
        assert (reference_transform(theirs, state, x) - ours).abs().max().item() == 0
        again = Explainer.from_pretrained(path, model=model, tokenizer=tok)
        assert again.adapter.kind == kind and again.template == explainer.template
        assert (again.soft_tokens(x) - ours).abs().max().item() == 0
        assert (again.soft_tokens(x, scale=2.1) - explainer.soft_tokens(x, scale=2.1)).abs().max().item() == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["adapter.safetensors"]  # one file, no leftovers
