"""The plugin manager: built-in registrations, backend lookup, broken and duplicate plugins,
and SELFINTERP_PLUGINS."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfinterp_plugins import plugins
from selfinterp_plugins.adapters import BUILTIN_ADAPTERS, Adapter, RawVector, ScalarAffine
from selfinterp_plugins.backends import Backend, HFBackend
from selfinterp_plugins.errors import BackendError, UnknownNameError

from plugin_fakes import FakeEntryPoint, install_entry_points, module

SIX_KINDS = {"scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank", "full_rank"}


pytestmark = pytest.mark.usefixtures("hermetic_plugins")


def _raise_import_error():
    raise ImportError("No module named 'not_installed_dependency'")


# ---- built-ins -----------------------------------------------------------------------------


def test_builtin_registrations():
    reg = plugins.registry()
    assert "hf" in reg.backends
    assert set(reg.adapters) == SIX_KINDS | {"raw"}
    assert {"recall_at_k", "exact_match"} <= set(reg.scorers)
    assert "topics" in reg.vector_sources
    assert plugins.plugin_errors() == []
    assert plugins.get_adapter_classes() == {**BUILTIN_ADAPTERS, "raw": RawVector}
    assert callable(plugins.get_scorer("exact_match"))
    assert callable(plugins.get_vector_source("topics"))
    names = {p["name"]: p["hooks"] for p in plugins.list_plugins()}
    assert names["hf_backend"] == ["backend_for_model", "register_backends"]
    assert names["adapters"] == ["register_adapters"]
    assert "register_scorers" in names["scorers"] and "register_vector_sources" in names["topics"]


def test_registry_is_built_once_until_reset():
    reg = plugins.registry()
    assert plugins.registry() is reg
    plugins.reset()
    assert plugins.registry() is not reg


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="exact_match"):
        plugins.get_scorer("bleu")
    with pytest.raises(UnknownNameError, match="topics"):
        plugins.get_vector_source("nope")
    with pytest.raises(UnknownNameError, match="hf"):
        plugins.get_backend_factory("tensorflow")


def test_exact_match_scorer():
    import torch

    from selfinterp_plugins import VectorLabelDataset

    data = VectorLabelDataset(torch.zeros(2, 4), [{"id": "a", "label": "Dog"}, {"id": "b", "label": "tree"}])
    records = [{"id": "a", "scale": 1.0, "label": " dog "}, {"id": "b", "scale": 1.0, "label": "bush"},
               {"id": "a", "scale": 2.0, "label": "cat"}, {"id": "b", "scale": 2.0, "label": "Tree"}]
    assert plugins.get_scorer("exact_match")(records, data) == {"exact_match": {1.0: 0.5, 2.0: 0.5}}


# ---- backend lookup ------------------------------------------------------------------------


def test_backend_for_a_transformers_model(tiny_llama):
    model, tok = tiny_llama
    backend = plugins.backend_for(model, tok)
    assert isinstance(backend, HFBackend)
    assert backend.model is model and backend.tokenizer is tok
    assert plugins.backend_for(backend) is backend  # an existing backend is passed through
    assert isinstance(plugins.backend_for(model, tok, backend="hf"), HFBackend)


def test_backend_for_unknown_objects():
    with pytest.raises(BackendError, match="object"):
        plugins.backend_for(object())
    with pytest.raises(BackendError):
        plugins.backend_for("gpt2")


def test_hf_backend_needs_the_tokenizer(tiny_llama):
    with pytest.raises(BackendError, match="tokenizer"):
        plugins.backend_for(tiny_llama[0])


def test_third_party_backend_is_asked_before_hf(tiny_llama, monkeypatch):
    made = []

    class FakeBackend(HFBackend):
        name = "fake"

    def factory(model, tokenizer=None, **options):
        made.append(options)
        return FakeBackend(model, tokenizer)

    plugin = module("fake_plugin",
                    register_backends=lambda register: register("fake", factory),
                    backend_for_model=lambda model, options: "fake")
    install_entry_points(monkeypatch, FakeEntryPoint("fake", lambda: plugin))
    backend = plugins.backend_for(tiny_llama[0], tiny_llama[1], flavour="x")
    assert isinstance(backend, FakeBackend)
    assert made == [{"flavour": "x"}]
    assert plugins.plugin_errors() == []


# ---- broken and conflicting plugins --------------------------------------------------------


class DuplicateScalarAffine(Adapter):
    kind = "scalar_affine"


class Extra(ScalarAffine):
    kind = "extra_kind"


def test_duplicate_adapter_kind_is_reported_and_first_wins(monkeypatch):
    def register_adapters(register):
        register(DuplicateScalarAffine)
        register(Extra)

    plugin = module("dup_plugin", register_adapters=register_adapters)
    install_entry_points(monkeypatch, FakeEntryPoint("dup", lambda: plugin))
    kinds = plugins.get_adapter_classes()
    assert kinds["scalar_affine"] is ScalarAffine  # the built-in, registered first, wins
    assert kinds["extra_kind"] is Extra  # the plugin's other registrations still count
    assert SIX_KINDS <= set(kinds)
    errors = plugins.plugin_errors()
    assert len(errors) == 1
    assert errors[0]["plugin"] == "dup"
    assert "scalar_affine" in errors[0]["error"] and "already registered" in errors[0]["error"]
    assert "hf" in plugins.registry().backends


def test_adapters_and_baselines_register_by_name_like_every_other_kind(monkeypatch):
    """`register(name, obj)` is the one form of every register_* hook: adapters and baselines took
    only `register(obj)`, and the two-argument form was refused as "cannot register". Both forms
    work now; a name that differs from the class's kind (or the baseline's name) is refused."""
    import types

    class Other(ScalarAffine):
        kind = "other_kind"

    def register_adapters(register):
        register("extra_kind", Extra)
        register(Other)  # the form of earlier versions still works
        register("not_its_kind", DuplicateScalarAffine)

    def register_baselines(register):
        register("mine", types.SimpleNamespace(name="mine"))
        register("wrong", types.SimpleNamespace(name="theirs"))

    plugin = module("named", register_adapters=register_adapters, register_baselines=register_baselines)
    install_entry_points(monkeypatch, FakeEntryPoint("named", lambda: plugin))
    kinds = plugins.get_adapter_classes()
    assert kinds["extra_kind"] is Extra and kinds["other_kind"] is Other
    assert "not_its_kind" not in kinds and "mine" in plugins.registry().baselines
    assert {"wrong", "theirs"}.isdisjoint(plugins.registry().baselines)
    assert [e["error"] for e in plugins.plugin_errors()] == [
        "register_adapters: cannot register 'not_its_kind' (ValueError: the name 'not_its_kind' differs from its kind "
        "'scalar_affine'; register it as 'scalar_affine'); not registered",
        "register_baselines: cannot register 'wrong' (ValueError: the name 'wrong' differs from its name 'theirs'; "
        "register it as 'theirs'); not registered",
    ]


def test_register_hook_that_raises_is_reported_not_raised(monkeypatch):
    def register_scorers(register):
        register("good_before", lambda *a, **k: {})
        raise RuntimeError("boom in plugin")

    plugin = module("raising_plugin", register_scorers=register_scorers)
    install_entry_points(monkeypatch, FakeEntryPoint("raiser", lambda: plugin))
    reg = plugins.registry()
    assert {"recall_at_k", "exact_match", "good_before"} <= set(reg.scorers)
    errors = plugins.plugin_errors()
    assert len(errors) == 1
    assert errors[0]["plugin"] == "raiser"
    assert "register_scorers failed" in errors[0]["error"] and "boom in plugin" in errors[0]["error"]
    assert set(reg.adapters) == SIX_KINDS | {"raw"}


def test_plugin_registered_directly_on_the_manager(monkeypatch):
    """`pm.register(module)` before the registry is built: its registrations are collected too."""
    install_entry_points(monkeypatch)
    plugin = module("direct", register_adapters=lambda register: register(Extra))
    plugins.pm.register(plugin, name="direct")
    assert plugins.get_adapter_classes()["extra_kind"] is Extra
    plugins.reset()
    assert "extra_kind" not in plugins.get_adapter_classes()  # reset unregistered it


def test_entry_point_that_fails_to_import_is_reported(monkeypatch):
    good = module("good_plugin", register_scorers=lambda register: register("good", lambda *a, **k: {}))
    broken = FakeEntryPoint("broken", _raise_import_error)
    install_entry_points(monkeypatch, broken, FakeEntryPoint("good", lambda: good))
    errors = plugins.plugin_errors()
    assert broken.loaded == 1
    assert [e["plugin"] for e in errors] == ["broken"]
    assert errors[0]["error"].startswith("ImportError") and "not_installed_dependency" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"]
    assert "good" in plugins.registry().scorers  # the others still load
    assert "hf" in plugins.registry().backends


@pytest.mark.parametrize("allowed", ["", "  ", "good", "other, good"])
def test_selfinterp_plugins_restricts_entry_points(monkeypatch, allowed):
    good = module("good_plugin", register_scorers=lambda register: register("good", lambda *a, **k: {}))
    broken = FakeEntryPoint("broken", _raise_import_error)
    good_ep = FakeEntryPoint("good", lambda: good)
    install_entry_points(monkeypatch, broken, good_ep)
    monkeypatch.setenv("SELFINTERP_PLUGINS", allowed)
    assert plugins.plugin_errors() == []
    assert broken.loaded == 0  # never even imported
    assert ("good" in plugins.registry().scorers) == ("good" in allowed)
    assert good_ep.loaded == (1 if "good" in allowed else 0)
    # built-ins load whatever SELFINTERP_PLUGINS says
    assert set(plugins.registry().adapters) == SIX_KINDS | {"raw"} and "hf" in plugins.registry().backends


def test_selfinterp_plugins_naming_the_broken_plugin_reports_it(monkeypatch):
    install_entry_points(monkeypatch, FakeEntryPoint("broken", _raise_import_error))
    monkeypatch.setenv("SELFINTERP_PLUGINS", "broken")
    assert [e["plugin"] for e in plugins.plugin_errors()] == ["broken"]


def test_reset_clears_load_errors(monkeypatch):
    install_entry_points(monkeypatch, FakeEntryPoint("broken", _raise_import_error))
    assert plugins.plugin_errors()
    plugins.reset()
    install_entry_points(monkeypatch)
    assert plugins.plugin_errors() == []


def test_backend_base_class_is_abstract():
    with pytest.raises(TypeError):
        Backend()


# ---- shipped explainers by name (register_explainers) ---------------------------------------


def test_a_plugins_shipped_explainer_is_found_by_name_everywhere(monkeypatch, tmp_path, tiny_llama):
    """A plugin's `register(name, directory)` makes the name work in `Explainer.from_pretrained`,
    `explainer_location` (every command) and `selfinterp plugins`; the core's own name cannot be
    taken over, and a directory that exists under the name still wins."""
    from selfinterp_plugins import Explainer
    from selfinterp_plugins.defaults import explainer_location, shipped_explainer_dir, shipped_explainer_names
    from selfinterp_plugins.errors import ArtifactError

    model, tok = tiny_llama
    saved = tmp_path / "plugin-data" / "tiny-features"
    Explainer.create(model, tok, adapter="scalar_affine", template="echo").save_pretrained(saved)

    def register_explainers(register):
        register("tiny-features", saved)
        register("smollm2-topics", tmp_path / "impostor")

    plugin = module("shipping_plugin", register_explainers=register_explainers)
    install_entry_points(monkeypatch, FakeEntryPoint("shipper", lambda: plugin))
    plugins.reset()  # saving above built the registry without the plugin
    assert shipped_explainer_names() == ["smollm2-topics", "smollm2-words-in-context", "tiny-features"]
    assert explainer_location("tiny-features") == saved
    assert explainer_location("smollm2-topics") == shipped_explainer_dir()  # the core's, not the impostor
    errors = plugins.plugin_errors()
    assert [e["plugin"] for e in errors] == ["shipper"] and "already registered" in errors[0]["error"]
    loaded = Explainer.from_pretrained("tiny-features", model=model, tokenizer=tok)
    assert loaded.adapter.kind == "scalar_affine"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-features").mkdir()
    assert explainer_location("tiny-features").resolve() == tmp_path / "tiny-features"  # a local folder wins, as in transformers
    with pytest.raises(ArtifactError, match=r"shipped explainer's name \(shipped, smollm2-topics, smollm2-words-in-context, tiny-features\)\.$"):
        Explainer.from_pretrained("no-such-explainer", model=model, tokenizer=tok)


def test_shipped_explainer_dir_gives_a_plugins_directory_and_refuses_unknown_names(monkeypatch, tmp_path):
    """`shipped_explainer_dir(name)` (public) gave <core data>/explainers/<name> for a plugin's
    shipped name, a folder that does not exist; it now gives the plugin's registered directory, the
    core's for the core's names, and refuses a name nobody ships, listing the installed ones."""
    from importlib import resources

    from selfinterp_plugins import shipped_explainer_dir

    plugin = module("shipping_plugin", register_explainers=lambda register: register("tiny-features", tmp_path / "tf"))
    install_entry_points(monkeypatch, FakeEntryPoint("shipper", lambda: plugin))
    plugins.reset()
    core = Path(str(resources.files("selfinterp_plugins"))) / "data" / "explainers" / "smollm2-topics"
    assert shipped_explainer_dir("tiny-features") == tmp_path / "tf"
    assert shipped_explainer_dir() == shipped_explainer_dir("smollm2-topics") == core
    for name in ("no-such-explainer", "../smollm2-topics"):
        with pytest.raises(UnknownNameError) as err:
            shipped_explainer_dir(name)
        assert str(err.value) == (f"No shipped explainer named {name!r}; installed: smollm2-topics, smollm2-words-in-context, tiny-features "
                                  "(`selfinterp plugins` lists them).")


def test_a_name_that_is_not_a_string_is_that_plugins_error(monkeypatch, capsys, tmp_path):
    """`register(3, dir)` through `register_explainers` (or a non-string name of any kind) used to
    be stored, and sorting the names with the others (`selfinterp plugins`, every lookup's list)
    raised TypeError. Each unusable registration is now the plugin's reported error, skipped; its
    good registrations and every other plugin still count."""
    from selfinterp_plugins.defaults import explainer_location, shipped_explainer_names

    from plugin_fakes import run_cli

    good = tmp_path / "good"

    def register_explainers(register):
        register(3, tmp_path / "three")
        register(None, tmp_path / "none")
        register("", tmp_path / "empty")
        register("a/b", tmp_path / "path")
        register("late", 5)  # a directory that is not a path
        register("good", good)

    def register_scorers(register):
        register(("tuple",), lambda records, dataset: {})

    plugin = module("bad_names", register_explainers=register_explainers, register_scorers=register_scorers)
    install_entry_points(monkeypatch, FakeEntryPoint("bad_names", lambda: plugin))
    plugins.reset()
    assert shipped_explainer_names() == ["good", "smollm2-topics", "smollm2-words-in-context"]
    assert explainer_location("good") == good
    assert "exact_match" in plugins.registry().scorers and ("tuple",) not in plugins.registry().scorers
    errors = [e["error"] for e in plugins.plugin_errors()]
    assert errors == [
        "register_scorers: the name ('tuple',) is of type tuple, not a string; not registered (names are non-empty strings)",
        "register_explainers: the name 3 is of type int, not a string; not registered (names are non-empty strings)",
        "register_explainers: the name None is of type NoneType, not a string; not registered (names are non-empty strings)",
        "register_explainers: the name '' is empty; not registered (names are non-empty strings)",
        "register_explainers: cannot register 'a/b' (ValueError: the explainer name 'a/b' is a path or the reserved "
        "'shipped', which never resolves to it); not registered",
        "register_explainers: cannot register 'late' (TypeError: expected str, bytes or os.PathLike object, not int); "
        "not registered",
    ]
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0 and "Traceback" not in out + err
    assert "shipped explainers  good, smollm2-topics, smollm2-words-in-context" in out and "bad_names: register_explainers: the name 3" in out
