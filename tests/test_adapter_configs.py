"""adapter_configs.py: the config class a kind's dict or options build (with the registry given),
and every refusal's message as a user reads it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from selfinterp_plugins.adapter_configs import AdapterConfig, LowRankConfig, adapter_class
from selfinterp_plugins.adapters import BUILTIN_ADAPTERS, RawVector
from selfinterp_plugins.errors import ArtifactError, OptionError, UnknownNameError


@dataclass
class _WidthConfig(AdapterConfig):
    width: int = 3


class _PrivateKind(RawVector):
    """A kind only the registry passed here knows (no plugin registers it)."""

    kind = "private_kind_of_this_test"
    config_class = _WidthConfig


REGISTRY = {**BUILTIN_ADAPTERS, _PrivateKind.kind: _PrivateKind}


def test_for_kind_and_from_dict_use_the_registry_they_are_given():
    config = AdapterConfig.for_kind(_PrivateKind.kind, 8, registry=REGISTRY, width=5)
    assert type(config) is _WidthConfig and config.width == 5
    loaded = AdapterConfig.from_dict({"kind": _PrivateKind.kind, "d_model": 8, "width": 6}, registry=REGISTRY)
    assert type(loaded) is _WidthConfig and loaded.width == 6


def test_from_dict_on_a_subclass_builds_that_subclass_whatever_the_kind_says():
    config = LowRankConfig.from_dict({"kind": "scalar_affine", "d_model": 4, "rank": 2})
    assert type(config) is LowRankConfig and config.rank == 2


def test_messages_of_a_bad_config_in_python():
    """Built in Python, a bad field is the caller's OptionError, not a file's ArtifactError saying
    "fix the config" (there is no config file); a keyword option of `for_kind` (what
    `Explainer.create(..., init_scale=-1)` passes) is named as an option."""
    with pytest.raises(OptionError) as err:
        AdapterConfig("scalar_affine", 0)
    assert not isinstance(err.value, ArtifactError)
    assert str(err.value) == ("Adapter config (AdapterConfig): field d_model should be greater than or equal to 1 "
                              "(got 0); pass a value in that range.")
    with pytest.raises(OptionError) as err:
        LowRankConfig(kind="low_rank", d_model=4, rank=0)
    assert str(err.value) == ("Adapter config (LowRankConfig): field rank should be greater than or equal to 1 (got 0); "
                              "pass a value in that range.")
    with pytest.raises(OptionError) as err:
        AdapterConfig.for_kind("scalar_affine", 4, registry=BUILTIN_ADAPTERS, init_scale=-1)
    assert str(err.value) == ("Adapter kind 'scalar_affine': option init_scale should be greater than 0 (got -1); fix "
                              "that option (the kind's options: init_scale).")
    with pytest.raises(OptionError) as err:
        AdapterConfig.for_kind("low_rank", 4, registry=BUILTIN_ADAPTERS, rank=2.5)
    assert str(err.value) == ("Adapter kind 'low_rank': option rank should be a valid integer (got 2.5); fix that "
                              "option (the kind's options: init_scale, low_rank_init_factor, rank).")
    with pytest.raises(UnknownNameError) as err:
        AdapterConfig.for_kind("scalar_affine", 4, registry=BUILTIN_ADAPTERS, rnk=2)
    assert str(err.value) == "Adapter kind 'scalar_affine' has no option(s) ['rnk']; its options are: init_scale."


def test_messages_of_a_bad_config_file():
    cases = [
        (dict(data=[1]), "Adapter config: the adapter config should be a JSON object, got list; re-save the explainer."),
        (dict(data=[1], source="x.json", prefix="adapter"),
         "x.json: adapter should be a JSON object, got list; re-save the explainer."),
        (dict(data={}), "Adapter config: field kind is missing; re-save the explainer with save_pretrained()."),
        (dict(data={}, source="x.json", prefix="adapter"),
         "x.json: field adapter.kind is missing; re-save the explainer with save_pretrained()."),
        (dict(data={"kind": "scalar_affine", "d_model": 0}),
         "Adapter config (adapter kind 'scalar_affine'): field d_model should be greater than or equal to 1 (got 0); "
         "re-save the explainer with save_pretrained()."),
    ]
    for kwargs, message in cases:
        with pytest.raises(ArtifactError) as err:
            AdapterConfig.from_dict(**kwargs)
        assert str(err.value) == message


@pytest.mark.parametrize("kind", ["", 3, None])
def test_adapter_class_refuses_what_is_not_a_name(kind):
    with pytest.raises(ArtifactError) as err:
        adapter_class(kind, BUILTIN_ADAPTERS)
    assert str(err.value) == f"Adapter kind must be a name such as 'scalar_affine', got {kind!r}; fix the config."


def test_adapter_class_lists_the_known_kinds_sorted():
    with pytest.raises(UnknownNameError) as err:
        adapter_class("nope", {"b": RawVector, "a": RawVector})
    assert str(err.value) == "Unknown adapter kind 'nope'; choose one of: a, b."
