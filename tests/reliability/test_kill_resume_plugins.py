"""Crash safety of the ecosystem plugins' long jobs, with real SIGKILLs (see kill_harness.py):

- `selfinterp lora-explainer train` (the epoch-checkpoint loop it shares with `selfinterp dit train`):
  killed three times mid-run, then resumed; the LoRA weights equal an uninterrupted run's
  (dropout 0.1, so the replayed dropout draws are checked too).
- `selfinterp dit make-diffs` (each diff indexed after it is saved): every diff once, equal to an
  uninterrupted run's.
- `selfinterp sae label` (every latent of an SAE, streamed to JSONL): killed three times, then
  resumed; every latent is labelled exactly once, equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from selfinterp_plugins.storage._files import load_safetensors, read_jsonl

from kill_harness import CLI, KILLS_PER_RUN, lines, run, run_with_kills

pytestmark = pytest.mark.slow


def _epochs_done(checkpoint: Path):
    def progress() -> int:
        try:
            return json.loads((checkpoint / "state.json").read_text())["epochs_done"]
        except (OSError, ValueError, KeyError):
            return 0  # not written yet (state.json is replaced atomically, never seen torn)
    return progress


def test_killed_lora_explainer_training_resumes_to_the_uninterrupted_weights(tmp_path):
    pytest.importorskip("peft")
    from selfinterp_introspective import act_patch_task

    from selfinterp_plugins import HFBackend
    from selfinterp_plugins.models import tiny_model
    from selfinterp_plugins.storage._files import JsonlWriter
    from selfinterp_plugins.topics import load_topics

    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    pairs = act_patch_task.counterfactual_pairs(load_topics(), 16, seed=1)
    (tmp_path / "data").mkdir()
    with JsonlWriter(tmp_path / "data" / "train.jsonl") as writer:
        for row in act_patch_task.patching_rows(HFBackend(model, tok), pairs, [0, 2]):
            writer.write(row)

    def cmd(out: Path) -> list[str]:
        return CLI + ["lora-explainer", "train", "--task", "activation_patching", "--data", str(tmp_path / "data"),
                      "--model", str(tmp_path / "model"), "--rank", "4", "--epochs", "24", "--batch-size", "4",
                      "--lr", "1e-3", "--out", str(out)]

    run(cmd(tmp_path / "reference"), plugins="introspective")
    killed = tmp_path / "killed"
    delivered = run_with_kills(cmd(killed), _epochs_done(killed / "checkpoint"), random.Random(3), plugins="introspective")
    assert delivered == KILLS_PER_RUN
    assert 0 < _epochs_done(killed / "checkpoint")() < 24  # the kills left a part-trained run behind
    run(cmd(killed), plugins="introspective")

    reference = load_safetensors(tmp_path / "reference" / "adapter_model.safetensors")
    resumed = load_safetensors(killed / "adapter_model.safetensors")
    assert reference.keys() == resumed.keys() and len(reference) > 0
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6)
    history = json.loads((killed / "checkpoint" / "state.json").read_text())["history"]
    assert len(history) == 24 * 4  # 16 rows / 4 per batch x 24 epochs: every step once


def test_killed_sae_labelling_has_every_latent_exactly_once(tmp_path):
    pytest.importorskip("sae_lens")
    from sae_lens import StandardSAE, StandardSAEConfig

    from selfinterp_plugins import Explainer
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae = StandardSAE(StandardSAEConfig(d_in=model.config.hidden_size, d_sae=160, dtype="float32", device="cpu"))
    sae.cfg.metadata.hook_name = "hook_embed"
    sae.cfg.metadata.model_name = "tiny"
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    sae.save_model(tmp_path / "sae")
    Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed").save_pretrained(tmp_path / "explainer")

    def cmd(output: Path) -> list[str]:
        return CLI + ["sae", "label", str(tmp_path / "explainer"), "--sae", str(tmp_path / "sae"), "--model", str(tmp_path / "model"),
                      "--batch-size", "4", "--max-new-tokens", "12", "--output", str(output)]

    run(cmd(tmp_path / "reference.jsonl"), plugins="sae_lens")
    output = tmp_path / "killed.jsonl"
    delivered = run_with_kills(cmd(output), lines(output), random.Random(4), plugins="sae_lens")
    assert delivered == KILLS_PER_RUN
    assert 0 < lines(output)() < 160
    run(cmd(output), plugins="sae_lens")

    reference = read_jsonl(tmp_path / "reference.jsonl")
    resumed = read_jsonl(output)  # strict: a torn or duplicated line would fail here
    assert len(reference) == 160
    assert sorted(map(json.dumps, resumed)) == sorted(map(json.dumps, reference))


def test_killed_dit_make_diffs_has_every_diff_exactly_once(tmp_path):
    """`selfinterp dit make-diffs` (diffs trained two side by side, each indexed after it is saved):
    killed three times, then resumed; the index lists every diff once and each diff equals the
    uninterrupted run's."""
    pytest.importorskip("peft")
    from selfinterp_peft.diff_store import diff_dir, read_index
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=2)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")

    def cmd(out: Path) -> list[str]:
        return CLI + ["dit", "make-diffs", "--model", str(tmp_path / "model"), "--n-train", "16", "--n-test", "4", "--questions", "1",
                      "--answer-tokens", "3", "--group", "2", "--epochs", "27",
                      "--out", str(out)]  # 27 epochs of 3 rows: a group takes long enough that kills land mid-run

    run(cmd(tmp_path / "reference"), plugins="peft")
    killed = tmp_path / "killed"
    delivered = run_with_kills(cmd(killed), lines(killed / "index.jsonl"), random.Random(5), plugins="peft")
    assert delivered == KILLS_PER_RUN
    assert 0 < lines(killed / "index.jsonl")() < 20  # the kills interrupted the run
    run(cmd(killed), plugins="peft")

    reference, resumed = read_index(tmp_path / "reference"), read_index(killed)
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in reference) and len(reference) == 20
    assert len({r["id"] for r in resumed}) == 20  # each once
    for row in reference:
        a = load_safetensors(diff_dir(tmp_path / "reference", row["id"]) / "adapter_model.safetensors")
        b = load_safetensors(diff_dir(killed, row["id"]) / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
