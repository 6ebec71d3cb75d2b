"""`--model`, `--backend` and `--remote` (selfinterp_plugins.cli_options): the options every model
command shares, and each of their mistakes as one line with exit code 2, caught before a model
loads. Runs of each backend against hf are in tests/integrations/{nnsight,transformer_lens}/."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from selfinterp_plugins import plugins
from selfinterp_plugins.cli import cli
from selfinterp_plugins.cli_options import DEFAULT_MODEL, check_backend_options, load_backend
from selfinterp_plugins.errors import OptionError, PluginNotInstalledError, UnknownNameError

from cli_models import one_line_error, save_dataset
from plugin_fakes import FakeEntryPoint, install_entry_points, run_cli

pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture
def data(tmp_path):
    return save_dataset(tmp_path / "data")


def commands(data, tmp_path):
    """train, explain and eval, each complete but for the backend flags (appended by the tests)."""
    return {
        "train": ["train", data, "--out", str(tmp_path / "ex")],
        "explain": ["explain", "shipped", "--vectors", data, "--output", str(tmp_path / "labels.jsonl")],
        "eval": ["eval", "shipped", "--vectors", data],
    }


NAMES = ["train", "explain", "eval"]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_backend(capsys, data, tmp_path, name):
    line = one_line_error(capsys, *commands(data, tmp_path)[name], "--backend", "vllm")
    assert "Unknown backend 'vllm'" in line and "hf" in line
    assert not (tmp_path / "ex").exists() and not (tmp_path / "labels.jsonl").exists()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("remote", ["local", "ndif", "https://ndif.example.org"])
def test_remote_needs_nnsight(capsys, data, tmp_path, name, remote):
    line = one_line_error(capsys, *commands(data, tmp_path)[name], "--remote", remote)
    assert f"--remote {remote} needs --backend nnsight" in line


def test_remote_off_is_the_default_and_fine_with_any_backend():
    assert check_backend_options("hf", "off") is False
    assert check_backend_options("hf", "OFF") is False


def test_a_backend_left_out_by_selfinterp_plugins(capsys, data, tmp_path, monkeypatch):
    """The plugin is installed but not loaded: the install command, and why it may be missing."""
    monkeypatch.setenv("SELFINTERP_PLUGINS", "")
    for name, argv in commands(data, tmp_path).items():
        line = one_line_error(capsys, *argv, "--backend", "nnsight")
        assert "The nnsight backend is not available" in line and "SELFINTERP_PLUGINS" in line, name
        assert "pip install 'selfinterp-plugins[nnsight]'" in line


def test_a_backend_whose_plugin_failed_to_load(capsys, data, tmp_path, monkeypatch):
    """What `require` raises when the library is missing reaches the user as the plugin's failure."""
    def broken():
        raise ImportError("transformer_lens is not installed; pip install 'selfinterp-plugins[transformer-lens]'")

    install_entry_points(monkeypatch, FakeEntryPoint("transformer_lens", broken))
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    line = one_line_error(capsys, *commands(data, tmp_path)["train"], "--backend", "transformer_lens")
    assert "its plugin failed to load (ImportError: transformer_lens is not installed; " in line
    assert "pip install 'selfinterp-plugins[transformer-lens]'" in line


def test_the_helper_raises_the_same_errors_before_loading_anything(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("selfinterp_plugins.models.load_model", no_loading)
    with pytest.raises(UnknownNameError, match="Unknown backend 'vllm'"):
        load_backend("anything", "vllm")
    with pytest.raises(OptionError, match="needs --backend nnsight"):
        load_backend("anything", "hf", "local")
    with pytest.raises(OptionError, match="--remote takes off, local, ndif or an NDIF host URL"):
        load_backend("anything", "hf", "yes")
    monkeypatch.setenv("SELFINTERP_PLUGINS", "")
    plugins.reset()
    with pytest.raises(PluginNotInstalledError, match="nnsight"):
        load_backend("anything", "nnsight", "local")
    assert issubclass(PluginNotInstalledError, UnknownNameError)


def test_every_model_command_shares_one_model_option():
    """Each command that runs a model, core and plugin, takes --model with DEFAULT_MODEL (report
    names it in its help: its model may also come from --config)."""
    def walk(group, prefix=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, prefix + (name,))
            else:
                yield prefix + (name,), command

    from selfinterp_plugins.cli import _load_plugin_commands

    _load_plugin_commands()
    seen = 0
    for path, command in walk(cli):
        option = next((p for p in command.params if "--model" in getattr(p, "opts", ())), None)
        if option is None:
            continue
        seen += 1
        if path == ("report",):
            assert option.default is None and DEFAULT_MODEL in option.help
        else:
            assert option.default == DEFAULT_MODEL and option.name == "model_name", path
    assert seen >= 5


def test_help_lists_the_registered_backends_and_remote_values(capsys):
    for name in NAMES + ["vectors topics"]:
        code, out, _ = run_cli(capsys, *name.split(), "--help")
        assert code in (0, None)
        backends = "|".join(sorted(plugins.registry().backends))
        assert f"--backend [{backends}]" in out, name
        assert "--remote off|local|ndif|URL" in out and "rehearsal" in out


def test_backend_help_names_the_registry_not_three_fixed_names(capsys, monkeypatch):
    """The help text said "hf (transformers), nnsight or transformer_lens" whatever was installed:
    with only a plugin's `toy` next to hf it now names exactly those two."""
    from plugin_fakes import module

    plugin = module("toy_plugin", register_backends=lambda register: register("toy", lambda model, **o: None))
    install_entry_points(monkeypatch, FakeEntryPoint("toy", lambda: plugin))
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    plugins.reset()
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code in (0, None)
    backend_help = " ".join(out.split()).split("--backend [hf|toy]", 1)[1].split("--remote", 1)[0]
    assert backend_help.startswith(" library that runs the model, one of the registered backends: hf, toy (hf: "
                                   "transformers;"), backend_help
    assert "nnsight" not in backend_help and "transformer_lens" not in backend_help


def test_a_backend_refusing_the_loaded_model_is_one_line(capsys, data, tmp_path, monkeypatch):
    """The example toy backend (docs/plugins.md) took the transformers model the CLI hands every
    backend and failed later with AttributeError ('LlamaForCausalLM' has no attribute 'weights'), a
    traceback; its factory now raises the declared UnsupportedModelError: one line, exit 2."""
    import importlib.util
    from pathlib import Path

    from cli_models import refused, save_tiny_model

    source = Path(__file__).resolve().parents[1] / "examples/selfinterp-toy-backend/selfinterp_toy_backend/__init__.py"
    spec = importlib.util.spec_from_file_location("toy_backend_source", source)  # this checkout's, not an installed copy
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    install_entry_points(monkeypatch, FakeEntryPoint("toy", lambda: toy))
    monkeypatch.delenv("SELFINTERP_PLUGINS", raising=False)
    plugins.reset()
    model = save_tiny_model(tmp_path / "model")
    line = refused(capsys, "train", data, "--model", model, "--backend", "toy", "--out", str(tmp_path / "ex"))
    assert line == ("Error: The toy backend runs a ToyModel, got a LlamaForCausalLM; build one in Python with "
                    "ToyModel.from_gpt2(model, tokenizer), or use --backend hf.")
    assert not (tmp_path / "ex" / "adapter.safetensors").exists()


def test_subprocess_prints_one_line_without_traceback(data, tmp_path):
    result = subprocess.run([sys.executable, "-m", "selfinterp_plugins.cli", "train", data, "--out", str(tmp_path / "ex"),
                             "--remote", "local"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --remote local needs --backend nnsight (only nnsight models run remotely); add --backend nnsight, "
        "or drop --remote."]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "tpu", "gpu0"])
def test_a_device_this_machine_lacks_is_one_line_before_loading(capsys, data, tmp_path, name, device, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(capsys, *commands(data, tmp_path)[name], "--device", device)
    assert f"--device {device}: torch sees no CUDA" in line or f"--device takes cpu, cuda, cuda:N or auto, got {device!r}" in line
    assert not (tmp_path / "ex").exists() and not (tmp_path / "labels.jsonl").exists()


def test_dtype_is_one_of_three(capsys, data, tmp_path):
    with pytest.raises(OptionError, match="--dtype takes float32, bfloat16, float16"):
        check_backend_options("hf", "off", "int8")
    code, out, err = run_cli(capsys, *commands(data, tmp_path)["train"], "--dtype", "int8")
    assert code == 2 and "int8" in err


def test_dtype_and_device_reach_the_loaded_weights(tmp_path):
    """`load_backend(..., dtype=, device=)` is what every model command calls: bfloat16 weights on
    the CPU, the adapter's soft tokens cast to them at the injection site."""
    import torch

    from selfinterp_plugins import Explainer

    from cli_models import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "m")
    runner = load_backend(model_dir, "hf", "off", "bfloat16", "cpu")
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    assert runner.model.device.type == "cpu"
    explainer = Explainer.create(runner, adapter="scale_only", template="echo")
    loss = explainer.loss(torch.randn(2, runner.d_model), ["a", "b"])
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert explainer.adapter.log_scale.grad is not None
