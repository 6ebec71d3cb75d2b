"""Adapter kinds from plugins (issue 18, item 2): a kind's own config class (its options through
`Explainer.create`, saved and reloaded, unknown keys warned about), files of the single config
class still loading, a kind without a ridge start under init="ridge" (API and CLI), and the
example of docs/plugins.md run as written."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from selfinterp_plugins import Adapter, AdapterConfig, Explainer, Sampling, TrainConfig, VectorLabelDataset, plugins
from selfinterp_plugins.adapters import normalize
from selfinterp_plugins.errors import UnknownNameError, UnsupportedInitError
from selfinterp_plugins.explainer import CONFIG_FILE

from plugin_fakes import FakeEntryPoint, module, run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
SHORT = Sampling(max_new_tokens=4)
WORDS = ["dog", "tree", "house", "river"]


@dataclass
class TwoLayerConfig(AdapterConfig):
    hidden: int = 32


class TwoLayer(Adapter):
    """soft = tanh(x̂·W1ᵀ)·W2ᵀ + b: a small MLP with an option of its own and no closed-form start."""

    kind = "two_layer"
    config_class = TwoLayerConfig

    def __init__(self, config: TwoLayerConfig):
        super().__init__(config)
        self.w1 = nn.Parameter(torch.randn(config.hidden, config.d_model) / math.sqrt(config.d_model))
        self.w2 = nn.Parameter(torch.randn(config.d_model, config.hidden) * config.init_scale / math.sqrt(config.hidden))
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    @staticmethod
    def math(params, x, scale=None):
        return torch.tanh(normalize(x, scale) @ params["w1"].T) @ params["w2"].T + params["bias"]


def install(monkeypatch, name, plugin):
    """Make `plugin` the only third-party selfinterp plugin; other entry-point groups (pydantic's,
    which importing nnsight reads) stay as installed."""
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kwargs):
        if group == plugins.ENTRY_POINT_GROUP:
            return [FakeEntryPoint(name, lambda: plugin)]
        return real(group=group, **kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    plugins.reset()


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    install(monkeypatch, "two_layer_plugin", module("two_layer_plugin", register_adapters=lambda register: register(TwoLayer)))
    yield
    plugins.reset()


def data(n=8, d=64):
    g = torch.Generator().manual_seed(0)
    return VectorLabelDataset(torch.randn(n, d, generator=g) * 3,
                              [{"id": str(i), "label": WORDS[i % 4], "split": "train"} for i in range(n)])


# ---- a kind's own options --------------------------------------------------------------------


def test_create_passes_a_kinds_own_options_to_its_config(tiny_llama):
    explainer = Explainer.create(*tiny_llama, adapter="two_layer", template="echo", hidden=16)
    assert type(explainer.adapter.config) is TwoLayerConfig and explainer.adapter.config.hidden == 16
    assert explainer.adapter.w1.shape == (16, 64)
    with pytest.raises(UnknownNameError, match=r"'two_layer' has no option\(s\) \['hiden'\]; its options are: hidden, "
                                               r"init_scale"):
        Explainer.create(*tiny_llama, adapter="two_layer", hiden=16)


def test_a_config_with_an_extra_field_round_trips_through_save_and_load(tiny_llama, tmp_path):
    explainer = Explainer.create(*tiny_llama, adapter="two_layer", template="echo", hidden=16, init_scale=3.0)
    path = explainer.save_pretrained(tmp_path / "ex")
    saved = json.loads((path / CONFIG_FILE).read_text())["adapter"]
    assert saved == {"kind": "two_layer", "d_model": 64, "init_scale": 3.0, "hidden": 16}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert again.adapter.config == explainer.adapter.config and type(again.adapter.config) is TwoLayerConfig
    vectors = data().vectors
    assert torch.equal(again.soft_tokens(vectors), explainer.soft_tokens(vectors))


def test_a_saved_config_with_an_unknown_key_loads_with_a_warning(tiny_llama, tmp_path):
    path = Explainer.create(*tiny_llama, adapter="two_layer", template="echo").save_pretrained(tmp_path / "ex")
    config = json.loads((path / CONFIG_FILE).read_text())
    config["adapter"]["activation"] = "gelu"  # say, written by a newer version of the plugin
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="unknown field 'adapter.activation'; ignored"):
        again = Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert again.adapter.config == TwoLayerConfig("two_layer", 64)


def test_an_explainer_saved_with_the_single_config_class_loads_without_a_warning(tiny_llama, tmp_path):
    """Before per-kind configs, every explainer_config.json held rank and low_rank_init_factor."""
    explainer = Explainer.create(*tiny_llama, adapter="scalar_affine", template="echo")
    path = explainer.save_pretrained(tmp_path / "ex")
    config = json.loads((path / CONFIG_FILE).read_text())
    config["adapter"].update(rank=64, low_rank_init_factor=0.01)
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert again.adapter.config == explainer.adapter.config
    assert torch.equal(again.soft_tokens(data().vectors), explainer.soft_tokens(data().vectors))


# ---- a kind without a ridge start ------------------------------------------------------------


def test_ridge_init_of_a_kind_without_one_says_to_use_the_paper_init(tiny_llama):
    explainer = Explainer.create(*tiny_llama, adapter="two_layer", template="echo")
    with pytest.raises(UnsupportedInitError) as error:
        explainer.train(data(), config=TrainConfig(init="ridge", max_steps=1), progress=False)
    assert str(error.value) == ("Adapter kind 'two_layer' has no ridge initialisation; train it with init='paper' "
                                "(selfinterp train --init paper).")
    history = explainer.train(data(), config=TrainConfig(init="paper", max_steps=1), progress=False)
    assert history["steps"] == 1


def test_the_cli_trains_a_plugin_kind_without_a_ridge_start_by_default(tiny_llama, tmp_path, capsys):
    """`--init ridge` was the default and failed for every kind without a ridge start: the default
    is now paper for such kinds (`train --help` says so), and an explicit --init ridge is refused
    in one line saying how."""
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    dataset = data().save(tmp_path / "data")
    argv = ["train", str(dataset), "--model", str(tmp_path / "model"), "--adapter", "two_layer", "--epochs", "1",
            "--batch-size", "4"]
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "default"))
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    assert json.loads((tmp_path / "default" / CONFIG_FILE).read_text())["adapter"]["kind"] == "two_layer"
    code, _, err = run_cli(capsys, *argv, "--init", "ridge", "--out", str(tmp_path / "ridge"))
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == ("Error: Adapter kind 'two_layer' has no ridge initialisation; train it with "
                                    "init='paper' (selfinterp train --init paper).")  # after transformers' progress bars
    code, out, _ = run_cli(capsys, "train", "--help")
    assert "[default: ridge for a kind with a ridge start (every built-in one but raw), paper for a kind without " \
           "one, where ridge fails]" in " ".join(out.split())
    assert TwoLayer.has_ridge_init() is False and plugins.get_adapter_classes()["full_rank"].has_ridge_init() is True


# ---- the example of docs/plugins.md ----------------------------------------------------------


@pytest.fixture
def docs_plugin(monkeypatch, tmp_path):
    """docs/plugins.md's plugin module, written to a file and imported as a package would be."""
    source = re.search(r"```python\n(# my_package/selfinterp_plugin\.py\n.*?)```", DOCS.read_text(), re.S).group(1)
    path = tmp_path / "docs_plugin_example.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("docs_plugin_example", path)
    plugin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "docs_plugin_example", plugin)
    spec.loader.exec_module(plugin)
    install(monkeypatch, "docs_example", plugin)
    return plugin


def test_a_bad_option_of_a_plugin_kind_is_an_option_error(docs_plugin, tiny_llama):
    """A keyword option out of its annotated range (the docs example's `max_scale: PositiveFloat`,
    the core's `init_scale`) was `ArtifactError ... fix the config` from Python; it is an
    OptionError naming the option."""
    from selfinterp_plugins.errors import ArtifactError, OptionError

    for option, kind, options in [({"max_scale": -1.0}, "diagonal_affine", "init_scale, max_scale"),
                                  ({"init_scale": -1}, "scalar_affine", "init_scale")]:
        with pytest.raises(OptionError) as err:
            Explainer.create(*tiny_llama, adapter=kind, template="echo", **option)
        (name, value), = option.items()
        assert not isinstance(err.value, ArtifactError)
        assert str(err.value) == (f"Adapter kind {kind!r}: option {name} should be greater than 0 (got {value}); fix "
                                  f"that option (the kind's options: {options}).")


def test_the_docs_example_runs_as_written(docs_plugin, tiny_llama, tmp_path, capsys):
    assert "diagonal_affine" in plugins.get_adapter_classes() and plugins.plugin_errors() == []
    explainer = Explainer.create(*tiny_llama, adapter="diagonal_affine", template="echo", max_scale=20.0)
    assert type(explainer.adapter.config) is docs_plugin.DiagonalAffineConfig
    explainer.train(data(), config=TrainConfig(init="ridge", max_steps=2, batch_size=4), progress=False)
    vectors = data().vectors
    params = explainer.adapter.tensors()
    clamped = explainer.adapter.diag.detach().clamp(-20.0, 20.0)
    torch.testing.assert_close(explainer.soft_tokens(vectors),
                               clamped * normalize(vectors) + params["bias"].detach(), rtol=0, atol=1e-6)
    labels = explainer.explain(vectors, sampling=SHORT, progress=False)
    path = explainer.save_pretrained(tmp_path / "ex")
    assert json.loads((path / CONFIG_FILE).read_text())["adapter"]["max_scale"] == 20.0
    again = Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert again.adapter.config == explainer.adapter.config
    assert again.explain(vectors, sampling=SHORT, progress=False) == labels
    assert run_cli(capsys, "hello")[:2] == (0, "hello\n")


def test_the_docs_example_runs_inside_a_remote_nnsight_request(docs_plugin, tiny_llama):
    pytest.importorskip("nnsight")
    from nnsight import TransformersModel

    from selfinterp_nnsight.backend import NNsightBackend
    from selfinterp_nnsight.requests import modules_needed, recording_requests
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0)  # nnsight wraps a model's modules: not the shared one
    here = Explainer.create(*tiny_llama, adapter="diagonal_affine", template="echo", max_scale=2.0)
    with torch.no_grad():
        here.adapter.diag.copy_(torch.linspace(-4, 4, 64))  # some beyond ±max_scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = TransformersModel(model, tokenizer=tok)
    remote = Explainer.create(NNsightBackend(lm), adapter="diagonal_affine", template="echo", max_scale=2.0)
    remote.adapter.load_state_dict(here.adapter.state_dict())
    vectors = data().vectors
    with recording_requests() as blobs:
        got = remote.explain(vectors, sampling=SHORT, progress=False, remote="local")
    assert got == here.explain(vectors, sampling=SHORT, progress=False)
    needed = modules_needed(blobs[0], lm)
    assert not {m for m in needed if m.startswith(("selfinterp", "docs_plugin_example"))}, needed
