"""`selfinterp sae …` on a tiny model saved to disk: import a Neuronpedia file, label with resume
and a Neuronpedia copy, score it; user errors print one line, no traceback."""

from __future__ import annotations

import json

import pytest
import torch

from selfinterp_plugins import Explainer, HFBackend
from selfinterp_plugins.cli import main
from selfinterp_plugins.models import tiny_model

from sae_fixtures import planted_sae, random_sae


def run(argv, capsys, code=0):
    try:
        main(argv)
        got = 0
    except SystemExit as exit_:
        got = exit_.code or 0
    out, err = capsys.readouterr()
    assert got == code, err
    return out, err


def test_sae_commands(tmp_path, capsys):
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    m = ["--model", str(tmp_path / "tiny")]
    backend = HFBackend(model, tok)
    sae = planted_sae(backend)
    sae.save_model(tmp_path / "sae")
    rows = [{"modelId": "planted", "layer": "hook_embed", "index": str(i), "description": w.strip()} for i, w in
            enumerate([" cat", " dog", " river", " sun", " moon", " tree", " road", " sky"])]
    (tmp_path / "np.json").write_text(json.dumps(rows))

    out, _ = run(["sae", "import-neuronpedia", str(tmp_path / "np.json"), "--sae", str(tmp_path / "sae"),
                  "--out", str(tmp_path / "data")], capsys)
    assert json.loads(out)["rows"] == 8

    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed")
    explainer.save_pretrained(tmp_path / "explainer")
    label = ["sae", "label", str(tmp_path / "explainer"), "--sae", str(tmp_path / "sae"), *m, "--features", "0:3",
             "--max-new-tokens", "3", "--output", str(tmp_path / "labels.jsonl"), "--neuronpedia", str(tmp_path / "labels.json")]
    out, _ = run(label, capsys)
    assert json.loads(out)["labels"] == 3
    first = (tmp_path / "labels.jsonl").read_text()
    run(label, capsys)  # resumed: nothing new to do, nothing duplicated
    assert (tmp_path / "labels.jsonl").read_text() == first
    assert [r["index"] for r in json.loads((tmp_path / "labels.json").read_text())] == ["0", "1", "2"]

    score = ["sae", "score", str(tmp_path / "np.json"), "--sae", str(tmp_path / "sae"), *m]
    out, _ = run([*score, "--samples", "2", "--max-new-tokens", "12", "--output", str(tmp_path / "gen.jsonl")], capsys)
    result = json.loads(out)
    assert result["labels"] == 8 and 0.0 <= result["mean_max_hit_rate"] <= 1.0
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 8 * 2  # one record per label and sample

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("The cat sat by the river while the dog slept under a tree. " * 40)
    (tmp_path / "corpus" / "b.txt").write_text("Numbers and letters fill the page of an old ledger book. " * 40)
    out, _ = run([*score, "--scorer", "detection", "--corpus", str(tmp_path / "corpus"), "--output", str(tmp_path / "det.jsonl")],
                 capsys)
    result = json.loads(out)
    # latents 0-2 fire in a.txt (cat, dog, river) and never in b.txt: scored; the other five never fire: reported
    assert result["labels"] == 3 and result["no_activations"] == [3, 4, 5, 6, 7]
    assert 0.0 <= result["auc"] <= 1.0 and len((tmp_path / "det.jsonl").read_text().splitlines()) == 3


def test_sae_cli_errors_are_one_line(tmp_path, capsys):
    sae = random_sae(d_in=64, d_sae=4)
    sae.save_model(tmp_path / "sae")
    (tmp_path / "np.jsonl").write_text(json.dumps({"index": "9", "description": "x"}) + "\n")
    _, err = run(["sae", "import-neuronpedia", str(tmp_path / "np.jsonl"), "--sae", str(tmp_path / "sae"),
                  "--out", str(tmp_path / "d")], capsys, code=2)
    assert err.startswith("Error: Row 1 explains latent 9, but this SAE has 4 latents") and "Traceback" not in err
    _, err = run(["sae", "import-neuronpedia", str(tmp_path / "np.jsonl"), "--sae", str(tmp_path / "nothing"),
                  "--out", str(tmp_path / "d")], capsys, code=2)
    assert "No SAE at" in err and len(err.strip().splitlines()) == 1
    _, err = run(["sae", "label", "x", "--sae", str(tmp_path / "sae"), "--features", "a:b", "--output", "o.jsonl"],
                 capsys, code=2)
    assert "Cannot read features 'a:b'" in err
    assert not (tmp_path / "d").exists()


def _cache_release(cache, sae, release="gpt2-small-res-jb", sae_id="blocks.1.hook_resid_pre"):
    """Put `sae` in a Hugging Face cache where `SAE.from_pretrained(release, sae_id)` finds it
    offline: the release's repository, a snapshot and `refs/main`, as a download would leave it."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()[release]
    folder = lookup.saes_map[sae_id]
    repo = cache / f"models--{lookup.repo_id.replace('/', '--')}"
    commit = "0" * 40
    sae.save_model(repo / "snapshots" / commit / folder)
    from safetensors.torch import save_file

    save_file({"sparsity": torch.zeros(int(sae.cfg.d_sae))}, str(repo / "snapshots" / commit / folder / "sparsity.safetensors"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_sae_label_takes_a_pretrained_release_offline(tmp_path, capsys, monkeypatch):
    """`sae label --release R --sae-id S`, as SAE-Lens users name SAEs (`SAE.from_pretrained`),
    read offline from the Hugging Face cache; before, only a local --sae directory was taken."""
    import huggingface_hub.constants

    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    m = ["--model", str(tmp_path / "tiny")]
    _cache_release(tmp_path / "hub", random_sae(d_in=64, d_sae=4, hook="blocks.1.hook_resid_pre"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed")
    explainer.save_pretrained(tmp_path / "explainer")
    base = ["sae", "label", str(tmp_path / "explainer"), *m, "--features", "0:2", "--max-new-tokens", "3"]
    out, _ = run([*base, "--release", "gpt2-small-res-jb", "--sae-id", "blocks.1.hook_resid_pre",
                  "--output", str(tmp_path / "labels.jsonl"), "--neuronpedia", str(tmp_path / "np.json")], capsys)
    assert json.loads(out)["labels"] == 2
    rows = json.loads((tmp_path / "np.json").read_text())
    # Neuronpedia's own fields; the SAE id as Neuronpedia spells it (SAE-Lens's neuronpedia_id for this release)
    assert set(rows[0]) == {"modelId", "layer", "index", "description", "explanationModelName", "typeName"}
    assert (rows[0]["modelId"], rows[0]["layer"]) == ("gpt2-small", "1-res-jb")

    _, err = run([*base, "--release", "gpt2-small-res-jb", "--sae-id", "blocks.99.hook_resid_pre", "--output",
                  str(tmp_path / "x.jsonl")], capsys, code=2)
    assert "has no SAE 'blocks.99.hook_resid_pre'" in err and "Traceback" not in err
    _, err = run([*base, "--release", "gpt2-small-res-jbb", "--sae-id", "x", "--output", str(tmp_path / "x.jsonl")],
                 capsys, code=2)
    assert "SAE-Lens has no release 'gpt2-small-res-jbb'" in err
    _, err = run([*base, "--release", "gpt2-small-res-jb", "--sae-id", "blocks.2.hook_resid_pre", "--output",
                  str(tmp_path / "x.jsonl")], capsys, code=2)  # a real id whose files are not in the cache
    assert "not in the local Hugging Face cache" in err and len(err.strip().splitlines()) == 1
    _, err = run([*base, "--sae", str(tmp_path / "explainer"), "--sae-id", "blocks.1.hook_resid_pre", "--output",
                  str(tmp_path / "x.jsonl")], capsys, code=2)  # --sae-id next to --sae used to be ignored
    assert "not both" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_neuronpedia_export_speaks_neuronpedia(tmp_path):
    """Export rows carry Neuronpedia's fields only: `layer` is a Neuronpedia SAE id built as
    Neuronpedia builds them (it was the hook name) and no `scale` key (a scale other than 1 is
    named in the explanation model); the mixed-SAE error names the flag that exists."""
    from selfinterp_plugins.errors import ArtifactError
    from selfinterp_sae_lens.neuronpedia import labelled_dataset, neuronpedia_ids, read_explanations, write_explanations

    sae = random_sae(d_in=64, d_sae=4, hook="blocks.6.hook_resid_post")
    sae.cfg.metadata.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert neuronpedia_ids(sae) == ("smollm2-135m-instruct", "6-res-selfinterp")
    sae.cfg.metadata.hook_name = "blocks.3.hook_mlp_out"
    assert neuronpedia_ids(sae)[1] == "3-mlp-selfinterp"
    records = [{"id": "0", "feature": 0, "scale": 1.0, "label": "cats"}, {"id": "0", "feature": 0, "scale": 2.0, "label": "dogs"}]
    write_explanations(records, tmp_path / "np.jsonl", "smollm2-135m-instruct", "6-res-selfinterp", "selfinterp:x")
    rows = [json.loads(line) for line in (tmp_path / "np.jsonl").read_text().splitlines()]
    assert all("scale" not in r for r in rows)
    assert [r["explanationModelName"] for r in rows] == ["selfinterp:x", "selfinterp:x@scale=2"]
    mixed = rows + [dict(rows[0], layer="7-res-selfinterp")]
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    with pytest.raises(ArtifactError, match="--np-sae-id"):
        labelled_dataset(sae, read_explanations(tmp_path / "mixed.json"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny model and an untrained explainer on disk, and two SAEs at the same hook (widths 4, 6)."""
    root = tmp_path_factory.mktemp("sae-label")
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed").save_pretrained(root / "explainer")
    for name, width in (("narrow", 4), ("wide", 6)):
        random_sae(d_in=64, d_sae=width, hook="blocks.1.hook_resid_post", seed=width).save_model(root / name)
    return root


def _label(root, *flags, sae="narrow"):
    return ["sae", "label", str(root / "explainer"), "--sae", str(root / sae), "--model", str(root / "tiny"),
            "--max-new-tokens", "3", *flags]


@pytest.mark.parametrize("features, message", [
    (" ", "Invalid value for '--features': ' ' is empty"), ("5:2", "Features '5:2' select no latent"),
    ("0:99", "Feature index 4 is outside this SAE's 4 latents"), ("-1", "Cannot read features '-1'"),
])
def test_sae_label_of_no_latent_or_another_is_one_line(labelled, tmp_path, capsys, features, message):
    """`sae label --features " "` (or `5:2`) labelled nothing and exited 0; `0:99` on a 4-latent SAE
    was refused only after the model loaded. Each is now one line before anything loads (a blank
    value is click's usage error, whose Error line follows its Usage and Try lines)."""
    _, err = run(_label(labelled, "--features", features, "--output", str(tmp_path / "l.jsonl")), capsys, code=2)
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"Error: {message}") and (len(lines) == 1 or lines[0].startswith("Usage:")), err
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    assert not (tmp_path / "l.jsonl").exists()


def test_sae_score_of_records_that_name_no_latent_is_one_line(labelled, tmp_path, capsys):
    """`sae score` on an explain output whose ids are words died on `int('cat')` (a traceback), and
    one whose ids run past the SAE's width indexed another row or raised IndexError."""
    for rows, message in (([{"id": "cat", "scale": 1.0, "label": "x"}], "(id 'cat') names no SAE latent"),
                          ([{"id": "7", "scale": 1.0, "label": "x"}], "latent 7 is outside this SAE's 4 latents")):
        (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        _, err = run(["sae", "score", str(tmp_path / "labels.jsonl"), "--sae", str(labelled / "narrow"), "--model",
                      str(labelled / "tiny")], capsys, code=2)
        assert err.startswith("Error: Label record 1") and message in err and "Traceback" not in err, err
    (tmp_path / "none.json").write_text("[]")
    _, err = run(["sae", "score", str(tmp_path / "none.json"), "--sae", str(labelled / "narrow")], capsys, code=2)
    assert "holds no label records" in err


def test_two_saes_of_one_hook_export_under_their_own_ids(labelled, tmp_path, capsys):
    """Two SAEs on one model and hook exported as the same Neuronpedia model and SAE id (both
    `1-res-selfinterp`), so a file holding both could not be told apart; `--model-id` and
    `--np-sae-id` (Neuronpedia's modelId and SAE id) now set them, the export reads back through
    the library's reader, and the ids it used are printed."""
    from selfinterp_sae_lens.neuronpedia import labelled_dataset, read_explanations
    from selfinterp_sae_lens.source import load_sae

    out, _ = run(_label(labelled, "--features", "0:3", "--output", str(tmp_path / "a.jsonl"), "--neuronpedia",
                        str(tmp_path / "a.json")), capsys)
    said = json.loads(out)
    assert (said["model_id"], said["np_sae_id"], said["neuronpedia_empty_left_out"]) == ("tiny", "1-res-selfinterp", 0)
    out, _ = run(_label(labelled, "--features", "0:5", "--output", str(tmp_path / "b.jsonl"), "--neuronpedia",
                        str(tmp_path / "b.jsonl.np.jsonl"), "--model-id", "tiny-model", "--np-sae-id", "1-res-wide",
                        sae="wide"), capsys)
    assert (json.loads(out)["model_id"], json.loads(out)["np_sae_id"]) == ("tiny-model", "1-res-wide")
    a, b = read_explanations(tmp_path / "a.json"), read_explanations(tmp_path / "b.jsonl.np.jsonl")
    assert [(e.model_id, e.sae_id, e.index) for e in b] == [("tiny-model", "1-res-wide", i) for i in range(5)]
    labels = [json.loads(line)["label"].strip() for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [e.description for e in b] == labels
    (tmp_path / "both.json").write_text(json.dumps(json.loads((tmp_path / "a.json").read_text()) +
                                                   [json.loads(line) for line in (tmp_path / "b.jsonl.np.jsonl").read_text().splitlines()]))
    wide = labelled_dataset(load_sae(labelled / "wide"), read_explanations(tmp_path / "both.json"), sae_id="1-res-wide")
    assert wide.ids == ["0", "1", "2", "3", "4"] and wide.meta["skipped_other_sae"] == len(a) == 3
    _, err = run(_label(labelled, "--np-sae-id", "x", "--output", str(tmp_path / "c.jsonl")), capsys, code=2)
    assert "give --neuronpedia FILE too" in err and not (tmp_path / "c.jsonl").exists()
    _, err = run(_label(labelled, "--neuronpedia", str(tmp_path / "c.csv"), "--output", str(tmp_path / "c.jsonl")),
                 capsys, code=2)
    assert "written as .json or .jsonl" in err and not (tmp_path / "c.jsonl").exists()


def test_train_sae_prints_its_reconstruction(tmp_path, capsys):
    """`sae train-sae` printed where it saved the SAE and nothing about how well it reconstructs."""
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    (tmp_path / "corpus.txt").write_text("The cat sat by the river while the dog slept under a tree. " * 60)
    out, _ = run(["sae", "train-sae", "--model", str(tmp_path / "tiny"), "--site", "resid_post.1", "--corpus",
                  str(tmp_path / "corpus.txt"), "--context", "16", "--d-sae", "16", "--k", "2", "--tokens", "2048",
                  "--out", str(tmp_path / "sae")], capsys)
    said = json.loads(out)
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["reconstruction"]
    assert said["reconstruction"] == saved and set(saved) == {"mse", "explained_variance", "tokens"}
    assert saved["tokens"] == 8 * 1024  # 8 batches of the default 1,024 tokens
