"""The evaluation suite on a tiny model: each untrained baseline's injection site, prompt and
vector; the knowledge control; the sensitivity sweep; `selfinterp report` end to end, resumed, and
rendered by a real headless browser (Debian chromium) with its plots drawn."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.evaluation.baselines import BUILTIN_BASELINES, get_baseline
from selfinterp_plugins.evaluation.knowledge import DESCRIBE_PROMPT, prompted_descriptions
from selfinterp_plugins.evaluation.report import ReportConfig, run_report
from selfinterp_plugins.evaluation.sensitivity import best_point, sweep
from selfinterp_plugins.sites import Site
from selfinterp_plugins.topics import load_topics, topic_vectors


@pytest.fixture(scope="module")
def backend(tiny):
    return HFBackend(*tiny("llama"))


EXPECTED = {  # name: (site, adapter kind, placeholders in the prompt, a phrase of the prompt)
    "selfie": (Site("resid_pre", 1), "raw", 5, "Sure, I'll summarize your message:"),
    "patchscopes": (Site("resid_post", 2), "raw", 1, "Leonardo DiCaprio: American actor"),
    "self_explaining": (Site("resid_post", 2), "scale_only", 2, 'The meaning of the word "'),
    "activation_oracle": (Site("resid_post", 1, "add_normmatched"), "scale_only", 2, "What is the meaning of"),
    "scale_only": (Site("embed"), "scale_only", 2, "What is the meaning of"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_baseline_injects_where_and_what_its_paper_says(backend, tokenizer, name):
    site, kind, placeholders, phrase = EXPECTED[name]
    baseline = get_baseline(name)
    explainer = baseline.explainer(backend)
    assert explainer.site == site and explainer.adapter.config.kind == kind
    assert explainer.adapter.num_trainable() == 0
    assert int(explainer.inject_mask.sum()) == placeholders
    assert phrase in explainer.template.prompt
    v = torch.randn(2, backend.d_model) * 7
    soft = explainer.soft_tokens(v, scale=torch.tensor([1.0, 2.0]))
    if kind == "raw":  # the vector itself, unnormalised, times the scale
        torch.testing.assert_close(soft, v * torch.tensor([[1.0], [2.0]]))
    else:  # scale · v / ‖v‖
        torch.testing.assert_close(soft.norm(dim=-1), torch.tensor([1.0, 2.0]))


def test_norm_matched_addition_adds_c_times_the_hidden_norm(backend):
    explainer = BUILTIN_BASELINES["activation_oracle"].explainer(backend, layer=0, coef=3.0)
    assert explainer.site == Site("resid_post", 0, "add_normmatched", 3.0)
    from selfinterp_plugins.sites import inject

    hidden = torch.randn(1, len(explainer.prompt_ids), backend.d_model)
    v = torch.randn(1, backend.d_model)
    mask = explainer.inject_mask[None]
    got = inject(hidden, explainer.soft_tokens(v, scale=torch.tensor([5.0])), mask, explainer.site)
    h = hidden[mask]
    torch.testing.assert_close(got[mask], h + 3.0 * h.norm(dim=-1, keepdim=True) * (v / v.norm()))
    torch.testing.assert_close(got[~mask], hidden[~mask])  # the scale does not matter, only the direction


def test_prompted_descriptions_are_plain_greedy_answers(backend, tokenizer):
    titles = ["volcano", "violin", "honey"]
    records = prompted_descriptions(backend, titles, max_new_tokens=6)
    assert [r["id"] for r in records] == ["0", "1", "2"] and all(r["scale"] == 0.0 for r in records)
    text = tokenizer.apply_chat_template([{"role": "user", "content": DESCRIBE_PROMPT.format(title="violin")}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = backend.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert records[1]["label"] == expected


def test_sweep_covers_the_grid_and_picks_the_best_point(backend):
    topics = load_topics()
    data = topic_vectors(backend, topics[:4], [1], progress=False)[1]
    candidates = sorted({t["title"] for t in topics[:40]})  # few candidates: the sweep, not retrieval, is tested
    rows = sweep(get_baseline("selfie"), backend, data, candidates, scales=(0.5, 1.0), layers=[0, 1],
                 sampling=Sampling(max_new_tokens=3))
    assert [(r["layer"], r["scale"]) for r in rows] == [(0, 0.5), (0, 1.0), (1, 0.5), (1, 1.0)]
    rows[2]["recall@1"] = 0.75
    assert best_point(rows) is rows[2]
    ao = sweep(get_baseline("activation_oracle"), backend, data, candidates, scales=(0.5, 2.0), layers=[1],
               sampling=Sampling(max_new_tokens=3))
    assert [(r["layer"], r["scale"]) for r in ao] == [(1, 0.5), (1, 2.0)]  # the coefficient c is swept


@pytest.fixture(scope="module")
def report_dir(backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    explainer = Explainer.create(backend, adapter="scalar_affine", template="echo")
    explainer.save_pretrained(out / "explainer")
    config = ReportConfig(model="tiny-llama", explainers=[str(out / "explainer")], baselines=["selfie", "scale_only"],
                          validation_topics=4, test_topics=5, sweep_layers=[0, 1], max_new_tokens=3, layer=1)
    results = run_report(config, out, progress=False, backend=backend)
    return out, config, results


def test_report_writes_every_number_and_resumes(report_dir, backend, monkeypatch):
    out, config, results = report_dir
    saved = json.loads((out / "results.json").read_text())
    methods = [h["method"] for h in saved["headline"]]
    assert methods[:4] == ["selfie", "scale_only", "trained scalar_affine", "prompted description"]
    assert methods[4:] in ([], ["prompted description, title not named"])
    # the fraction naming their title is what the "not named" row leaves out: (n - its n) / n
    not_named = saved["headline"][4]["n"] if len(methods) > 4 else 0
    assert saved["headline"][3]["title_named"] == (saved["n_test"] - not_named) / saved["n_test"]
    assert saved["n_validation"] == 4 and saved["n_test"] == 5
    sweep_methods = [r["method"] for r in saved["sweep"]]
    assert sweep_methods.count("selfie") == 2 * 5 and sweep_methods.count("scale_only") == 6
    assert sweep_methods.count("trained scalar_affine") == 5
    for name in ("report.html", "sensitivity.png", "sensitivity.html", "rows.jsonl", "plotly.min.js"):
        assert (out / name).stat().st_size > 0
    # plotly's 4.7 MB bundle is stored once, beside the pages, which load it from there
    bundle = (out / "plotly.min.js").stat().st_size
    for page in ("report.html", "sensitivity.html"):
        text = (out / page).read_text(encoding="utf-8")
        assert '<script charset="utf-8" src="plotly.min.js"></script>' in text
        assert (out / page).stat().st_size < bundle / 10

    import selfinterp_plugins.evaluation.sensitivity as sensitivity

    def no_sweeps(*args, **kwargs):
        raise AssertionError("a finished sweep was run again")

    monkeypatch.setattr(sensitivity, "sweep", no_sweeps)
    again = run_report(config, out, progress=False, backend=backend)
    assert again["sweep"] == saved["sweep"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_a_headless_browser_with_its_plots(report_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian chromium (apt-get install chromium) for this test")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out, _, _ = report_dir
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert "Held-out test topics" in dom
    assert dom.count('class="main-svg"') >= 2  # plotly ran and drew the figure
    assert dom.count('class="scatterlayer mlayer"') >= 3 and "trace scatter" in dom  # one panel per method, with lines
    assert "data:image/png;base64," in dom
    # every panel's x-axis says what its number is, and a legend names the layers
    assert "scale s (vector × s)" in dom and "scale s (trained at 1)" in dom
    assert "injection layer" in dom and dom.count('class="legendtext"') >= 2
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1200,1400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    pixels = torch.tensor(list(Image.open(shot).convert("L").tobytes()), dtype=torch.uint8)
    assert (pixels < 200).float().mean() > 0.01  # text, tables and plots, not a blank page


def test_plotly_js_inline_cdn_or_refused(tmp_path):
    from selfinterp_plugins.errors import OptionError
    from selfinterp_plugins.evaluation.sensitivity import plot_sensitivity

    rows = [{"method": m, "layer": layer, "scale": scale, "recall@1": 0.1 * layer + 0.01 * scale}
            for m in ("selfie", "activation_oracle") for layer in (0, 1) for scale in (1.0, 2.0)]
    titles = {"activation_oracle": "coefficient c (norm-matched addition)"}
    inline = plot_sensitivity(rows, html=tmp_path / "inline.html", plotly_js="inline", x_titles=titles)
    assert "plotly.min.js" not in inline["html"].read_text() and inline["html"].stat().st_size > 1_000_000
    cdn = plot_sensitivity(rows, html=tmp_path / "cdn.html", plotly_js="cdn")
    assert "https://cdn.plot.ly/" in cdn["html"].read_text() and not (tmp_path / "plotly.min.js").exists()
    figure = inline["figure"]
    assert [a.title.text for a in (figure.layout.xaxis, figure.layout.xaxis2)] == [
        "scale", "coefficient c (norm-matched addition)"]
    assert [t.name for t in figure.data if t.showlegend] == ["layer 0", "layer 1"]  # one legend entry per layer
    assert {t.line.color for t in figure.data if t.name == "layer 1"} == {figure.data[1].line.color}
    with pytest.raises(OptionError, match="plotly_js takes"):
        plot_sensitivity(rows, html=tmp_path / "x.html", plotly_js="embedded")


def test_a_resumed_report_sweeps_another_explainer_of_the_same_kind(report_dir, backend, tmp_path, monkeypatch):
    """`report --out R --explainer B` after `--explainer A`, both scalar_affine: the sweep was found
    under its name, "trained scalar_affine", and A's rows were reported as B's. Sweeps are now
    reused by the explainer's digest: B is swept, the baselines are not."""
    import selfinterp_plugins.evaluation.sensitivity as sensitivity

    out, config, results = report_dir
    copy = shutil.copytree(out, tmp_path / "report")
    other = Explainer.create(backend, adapter="scalar_affine", template="echo")
    with torch.no_grad():
        for p in other.adapter.parameters():
            p.add_(1.0)
    other.save_pretrained(tmp_path / "other")
    swept, real = [], sensitivity.sweep
    monkeypatch.setattr(sensitivity, "sweep", lambda method, *a, name, **k: swept.append(name) or real(method, *a, name=name, **k))
    config = ReportConfig(**{**config.__dict__, "explainers": [str(tmp_path / "other")]})
    run_report(config, copy, progress=False, backend=backend)
    assert swept == ["trained scalar_affine"]
