"""`selfinterp sae …` on a tiny model saved to disk: import a Neuronpedia file, label with resume
and a Neuronpedia copy, score it; user errors print one line, no traceback."""

from __future__ import annotations

import json

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
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 8

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
