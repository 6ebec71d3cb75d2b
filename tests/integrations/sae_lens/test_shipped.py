"""The SAE and the SAE-feature explainer shipped with the plugin: by name everywhere an SAE or an
explainer is named, loaded as float32 from their bfloat16 files, and `selfinterp sae demo`
counting what it shows."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.cli import main
from selfinterp_plugins.defaults import explainer_location, shipped_explainer_names
from selfinterp_sae_lens.shipped import (
    SHIPPED_SAE,
    SHIPPED_SAE_EXPLAINER,
    sae_location,
    shipped_explainer_dirs,
    shipped_held_out,
    shipped_sae_dir,
)
from selfinterp_sae_lens.source import load_sae, sae_site


def run(argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    return capsys.readouterr().out


def test_the_shipped_sae_loads_by_name_as_float32():
    sae = load_sae(SHIPPED_SAE)
    assert sae_location(SHIPPED_SAE) == shipped_sae_dir()
    assert (sae_site(sae).kind, sae_site(sae).layer) == ("resid_post", 6)
    assert sae.cfg.d_in == 576 and sae.cfg.d_sae == 4608
    assert {p.dtype for p in sae.parameters()} == {torch.float32}
    stored = {t.dtype for t in load_file(str(next(shipped_sae_dir().glob("*.safetensors")))).values()}
    assert stored == {torch.bfloat16}  # half the bytes on disk


def test_the_shipped_explainer_is_registered_by_the_plugin():
    assert SHIPPED_SAE_EXPLAINER in shipped_explainer_names()
    assert explainer_location(SHIPPED_SAE_EXPLAINER) == shipped_explainer_dirs()[SHIPPED_SAE_EXPLAINER]
    rows = shipped_held_out()
    assert len(rows) >= 12 and [r["feature"] for r in rows] == sorted({r["feature"] for r in rows})
    assert all(isinstance(r["label"], str) and r["label"] for r in rows)


@pytest.mark.real_model
def test_the_shipped_explainer_reads_the_shipped_saes_site(smollm2, recwarn):
    model, tok = smollm2
    explainer = Explainer.from_pretrained(SHIPPED_SAE_EXPLAINER, model=model, tokenizer=tok)
    assert explainer.vector_spec.site == "resid_post.6" and explainer.vector_spec.centring == "none"
    vectors = explainer.prepare_vectors(load_sae(SHIPPED_SAE), features=[r["feature"] for r in shipped_held_out()[:4]])
    assert vectors.shape == (4, 576)
    assert not [w for w in recwarn if "site" in str(w.message)]  # the same site: no warning
    assert len(explainer.explain(vectors, sampling=Sampling(max_new_tokens=4), progress=False)) == 4


@pytest.mark.real_model
def test_sae_demo_and_label_by_name(smollm2, tmp_path, capsys):
    """`selfinterp sae demo` shows the held-out latents' weak labels next to the explainer's, and its
    count is the rows it marked; `sae label` takes both shipped names."""
    out = run(["sae", "demo", "--n", "4"], capsys)
    lines = out.strip().splitlines()
    rows = lines[1:-1]
    assert len(rows) == 4 and [int(r.split()[0]) for r in rows] == [r["feature"] for r in shipped_held_out()[:4]]
    marked = sum(r.endswith("<- same") for r in rows)
    assert lines[-1].startswith(f"same as the weak label on {marked} of 4 held-out latents")
    labels = tmp_path / "labels.jsonl"
    run(["sae", "label", SHIPPED_SAE_EXPLAINER, "--sae", SHIPPED_SAE, "--features", "0:2", "--max-new-tokens", "3",
         "--output", str(labels)], capsys)
    assert [json.loads(line)["id"] for line in labels.read_text().splitlines()] == ["0", "1"]


def test_a_shipped_name_given_as_a_release_says_how_to_load_it(capsys):
    """`--release smollm2-resid6-topk` (SAE.from_pretrained) said only that SAE-Lens has no such
    release; a shipped name is loaded by name, or by SAE-Lens's own `SAE.load_from_disk`."""
    from sae_lens import SAE

    from selfinterp_plugins.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"shipped with selfinterp-sae-lens, not an SAE-Lens release.*"
                                            r"load_sae\('smollm2-resid6-topk'\)"):
        load_sae(release=SHIPPED_SAE, sae_id="layer_6")
    assert SAE.load_from_disk(shipped_sae_dir(SHIPPED_SAE)).cfg.d_sae == 4608  # the fix the message gives works
    with pytest.raises(SystemExit) as exit_:
        main(["sae", "score", "none.json", "--release", SHIPPED_SAE, "--sae-id", "layer_6"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--sae smollm2-resid6-topk" in err and "Traceback" not in err
