"""A published Activation Oracle (a PEFT LoRA directory) as an explainer: written here the way PEFT
saves one, it loads in one call, answers as the base model with the LoRA merged by hand plus the
reference's hook (tests/ao_reference.py), leaves the model as it was, and an oracle for another
model or a broken directory is refused in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from ao_reference import cut, merged_by_hand, pattern_positions, reference_answers, reference_run  # noqa: E402

from selfinterp_peft.oracles import (  # noqa: E402
    PUBLISHED,
    PUBLISHED_SHAPES,
    REFERENCE_LORA,
    is_oracle,
    lora_floats,
    oracle_patch,
    oracle_stand_in,
)
from selfinterp_plugins import (  # noqa: E402
    ArtifactError,
    Explainer,
    ModelLoadError,
    ModelMismatchError,
    OptionError,
    Sampling,
)

QUESTION = "What is the model thinking about?"
NAME = "tiny/llama-4-layers"


@pytest.fixture(scope="module")
def deep():
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, num_hidden_layers=4, initializer_range=0.2)


def peft_saved(model, directory, rank=4, alpha=8, seed=1):
    """What the reference's training leaves: PEFT's save_pretrained of a LoRA on all-linear (random
    factors, both nonzero), the base model named in the config."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = copy.deepcopy(model)
    base.config._name_or_path = base.name_or_path = NAME  # what PEFT records as base_model_name_or_path
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM",
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def oracle_dir(deep, tmp_path_factory):
    return peft_saved(deep[0], tmp_path_factory.mktemp("oracle") / "checkpoints_latentqa_cls_past_lens_addition_tiny")


def vectors(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, 64, generator=g) * 10


def test_a_peft_lora_directory_loads_in_one_call_and_answers_as_the_merged_model_with_the_hook(deep, oracle_dir):
    model, tok = deep
    oracle = Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok, layer=2, question=QUESTION, positions=3)
    assert oracle.metadata["base_model"] == NAME and oracle.model_patch is not None
    v = vectors(4, 3)
    ids = oracle.prompt_ids.tolist()
    merged = merged_by_hand(model, oracle_dir)
    theirs = reference_answers(merged, tok, ids, v, pattern_positions(ids, tok, 3), max_new_tokens=10)
    got = oracle.explain(v, sampling=Sampling(max_new_tokens=10), progress=False)
    assert [r["text"] for r in got] == [tok.decode(cut(row, oracle._is_finished.stop_ids)) for row in theirs]
    base = reference_answers(model, tok, ids, v, pattern_positions(ids, tok, 3), max_new_tokens=10)
    assert base != theirs  # the LoRA changes the answers, so the comparison above sees it

    _, logits = reference_run(merged, ids, v, pattern_positions(ids, tok, 3))
    with torch.no_grad(), oracle.backend.patched(oracle.model_patch):
        ours = oracle.backend.logits(oracle.prompt_ids.expand(4, -1), oracle.soft_tokens(v), oracle.inject_mask.expand(4, -1),
                                     oracle.site, torch.full((4, 1), len(ids) - 1), oracle.prefix_len)
    torch.testing.assert_close(ours, logits[:, -1:], atol=1e-5, rtol=0)


def test_the_model_stays_the_base_model_outside_the_oracles_calls(deep, oracle_dir):
    """The reference reads the vectors with the adapter disabled (dataset_utils.py line 224): here the
    LoRA is on only inside the oracle's own calls, and PEFT's loading leaves no layer of its own."""
    model, tok = deep
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m).__name__ for m in model.modules()]
    ids = torch.tensor([[1, 5, 9, 11]])
    logits = model(ids).logits
    oracle = Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok, layer=2, question=QUESTION)
    oracle.explain(vectors(1, 1)[:, 0], sampling=Sampling(max_new_tokens=3), progress=False)
    assert [type(m).__name__ for m in model.modules()] == kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(ids).logits, logits)


def test_the_stand_in_is_what_peft_writes_and_peft_reads(deep, tmp_path):
    """oracle_stand_in (what docs/artifacts.md runs) writes PEFT's layout: PEFT loads it, and its
    factors read by PEFT onto the model equal those read from its files."""
    from peft import PeftModel

    from selfinterp_plugins.backends import HFBackend

    model, tok = deep
    stand_in = oracle_stand_in(tmp_path / "o", model, base_model=NAME)
    ours = json.loads((stand_in / "adapter_config.json").read_text())
    peft = json.loads((peft_saved(model, tmp_path / "p") / "adapter_config.json").read_text())
    assert set(ours) <= set(peft) and ours["target_modules"] == sorted(REFERENCE_LORA["target_modules"])
    assert isinstance(PeftModel.from_pretrained(copy.deepcopy(model), str(stand_in)), PeftModel)
    via_peft = oracle_patch(stand_in, HFBackend(model, tok))

    class NoRoot(HFBackend):  # a backend without transformers modules reads the files
        def patch_root(self):
            return None

    from_files = oracle_patch(stand_in, NoRoot(model, tok))
    assert sorted(via_peft.modules) == sorted(from_files.modules) and len(via_peft.modules) == 4 * 7
    for name, (a, b, scale) in via_peft.modules.items():
        a2, b2, scale2 = from_files.modules[name]
        assert torch.equal(a, a2) and torch.equal(b, b2) and scale == scale2 == 16 / 8


def test_an_oracle_for_another_model_is_refused_in_one_line(deep, oracle_dir, tmp_path):
    from selfinterp_plugins.models import tiny_model

    model, tok = deep
    narrow, _ = tiny_model("llama", hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4)
    shallow, _ = tiny_model("llama", num_hidden_layers=2)
    qwen, _ = tiny_model("qwen2", num_hidden_layers=4)
    cases = [(narrow, f"{oracle_dir} is an oracle for {NAME} (width 64), but this model's d_model is 32; load it onto {NAME}."),
             (shallow, f"{oracle_dir} changes layer 2, but this model has 2 layers; load it onto {NAME}."),
             (qwen, f"{oracle_dir} is an oracle for {NAME} (a llama model), but this model is a qwen one; load it onto "
                    f"{NAME} (check_model=False skips this check).")]
    for other, message in cases:
        with pytest.raises(ModelMismatchError) as caught:
            Explainer.from_pretrained(oracle_dir, model=other, tokenizer=tok, layer=1, question=QUESTION)
        assert str(caught.value) == message
    Explainer.from_pretrained(oracle_dir, model=qwen, tokenizer=tok, layer=1, question=QUESTION, check_model=False)


def _config_with(directory, **fields):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _broken(oracle_dir, tmp_path, name, change):
    import shutil

    target = tmp_path / name
    shutil.copytree(oracle_dir, target)
    change(target)
    return target


def test_a_broken_oracle_directory_is_refused_in_one_line(deep, oracle_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = deep

    def extra_tensor(d):
        tensors = load_file(str(d / "adapter_model.safetensors"))
        tensors["base_model.model.model.embed_tokens.weight"] = torch.zeros(3, 64)
        save_file(tensors, str(d / "adapter_model.safetensors"))

    def no_b(d):
        tensors = load_file(str(d / "adapter_model.safetensors"))
        save_file({k: t for k, t in tensors.items() if "layers.0.mlp.up_proj.lora_B" not in k}, str(d / "adapter_model.safetensors"))

    cases = {
        "truncated": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x10\x00"), "is not a valid safetensors file"),
        "missing": (lambda d: (d / "adapter_model.safetensors").unlink(), "Missing file"),
        "pickle": (lambda d: (d / "adapter_model.bin").write_bytes(b"x"), "is a pickle-format file, which is never read"),
        "extra": (extra_tensor, "not the factors of a LoRA on linear layers"),
        "unmatched": (no_b, r"unmatched LoRA factors for model.layers.0.mlp.up_proj \({'A': \(4, 64\)}\)"),
        "rank": (lambda d: _config_with(d, r="four"), "adapter_config.json: field r should be a valid integer"),
        "ia3": (lambda d: _config_with(d, peft_type="IA3"), "is a IA3 adapter; an Activation Oracle is a LoRA"),
    }
    for name, (change, message) in cases.items():
        broken = _broken(oracle_dir, tmp_path, name, change)
        with pytest.raises(ArtifactError, match=message) as caught:
            Explainer.from_pretrained(broken, model=model, tokenizer=tok, layer=1, question=QUESTION)
        assert "\n" not in str(caught.value), name


def test_options_and_the_hub(deep, oracle_dir, monkeypatch):
    model, tok = deep
    with pytest.raises(OptionError, match="needs layer= .* and question="):
        Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=f"Cannot fetch {PUBLISHED[0]} from the Hugging Face hub"):
        Explainer.from_pretrained(PUBLISHED[0], model=model, tokenizer=tok, layer=18, question=QUESTION)
    assert all(is_oracle(name) for name in PUBLISHED) and is_oracle(oracle_dir)
    assert not is_oracle("someone/some-model")


def test_a_weight_diff_or_dit_adapter_is_not_taken_for_an_oracle(deep, tmp_path):
    from selfinterp_peft.weight_diff import WeightDiff

    model, _ = deep
    diff = WeightDiff.from_peft(peft_saved(model, tmp_path / "lora"))
    saved = diff.save_pretrained(tmp_path / "diff", model)
    assert is_oracle(tmp_path / "lora") and not is_oracle(saved)


def test_the_published_oracles_sizes_by_hand():
    """r·(in + out) per module, seven per layer (the reference's r 64 on all-linear): Qwen3-8B's
    layer is 64·(2·8192 + 2·5120 + 3·16384) = 4,849,664 floats, ×36 layers."""
    assert lora_floats(PUBLISHED_SHAPES["Qwen/Qwen3-8B"], 64) == 36 * 64 * (2 * 8192 + 2 * 5120 + 3 * 16384) == 174_587_904
    assert lora_floats(PUBLISHED_SHAPES["meta-llama/Llama-3.3-70B-Instruct"], 64) == 80 * 64 * (2 * 16384 + 2 * 9216 + 3 * 36864)
    assert lora_floats(PUBLISHED_SHAPES["google/gemma-2-9b-it"], 64) == 42 * 64 * (2 * 7680 + 2 * 5632 + 3 * 17920)


def test_the_size_formula_counts_what_a_patch_holds(deep, oracle_dir):
    from selfinterp_plugins.backends import HFBackend

    model, tok = deep
    shape = (64, 128, 4, 4, 2, 16)  # the tiny model's hidden, intermediate, layers, heads, kv heads, head dim
    assert oracle_patch(oracle_dir, HFBackend(model, tok)).num_floats == lora_floats(shape, 4)


def test_two_oracles_never_share_an_output(deep, oracle_dir, tmp_path):
    """Two oracles have the same prompt and a parameterless adapter and differ only in their LoRA:
    resuming one's answers with the other is refused, not mixed (the output's run record holds the
    LoRA). Before, the second run resumed the first's file and returned its answers."""
    from selfinterp_plugins.errors import RunMismatchError

    model, tok = deep
    other = peft_saved(model, tmp_path / "other", seed=7)
    out = tmp_path / "answers.jsonl"
    v = vectors(2, 1)[:, 0]
    first = Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok, layer=2, question=QUESTION)
    first.explain(v, sampling=Sampling(max_new_tokens=3), output=out, progress=False)
    second = Explainer.from_pretrained(other, model=model, tokenizer=tok, layer=2, question=QUESTION)
    with pytest.raises(RunMismatchError, match="holds labels of another explainer"):
        second.explain(v, sampling=Sampling(max_new_tokens=3), output=out, progress=False)
    first.explain(v, sampling=Sampling(max_new_tokens=3), output=out, progress=False)  # the same one resumes


def test_the_ask_command(deep, oracle_dir, tmp_path, capsys):
    from selfinterp_plugins import VectorLabelDataset

    from cli_models import ok, refused

    model, tok = deep
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = VectorLabelDataset(vectors(3, 1)[:, 0], [{"label": "x"} for _ in range(3)]).save(tmp_path / "vecs")
    out = tmp_path / "answers.jsonl"
    args = ["oracle", "ask", str(oracle_dir), "--vectors", str(data), "--model", str(tmp_path / "base"), "--layer", "2",
            "--question", QUESTION, "--max-new-tokens", "4", "--output", str(out)]
    assert ok(capsys, *args).strip() == f"3 answers in {out}"
    oracle = Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok, layer=2, question=QUESTION)
    expected = oracle.explain(vectors(3, 1)[:, 0], sampling=Sampling(max_new_tokens=4), progress=False)
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [r["text"] for r in expected]
    bad = {"--layer": "9", "--model": str(tmp_path / "elsewhere")}
    for flag, value in bad.items():
        changed = [value if args[i - 1] == flag else a for i, a in enumerate(args)]
        changed[-1] = str(tmp_path / f"bad{flag}.jsonl")
        assert refused(capsys, *changed)
    from selfinterp_plugins.models import tiny_model

    narrow, narrow_tok = tiny_model("llama", hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                    num_hidden_layers=4)
    narrow.save_pretrained(tmp_path / "narrow")
    narrow_tok.save_pretrained(tmp_path / "narrow")
    line = refused(capsys, *[str(tmp_path / "narrow") if a == str(tmp_path / "base") else a for a in args[:-1]],
                          str(tmp_path / "n.jsonl"))
    assert "d_model is 32; load it onto tiny/llama-4-layers" in line


def hub_cache_copy(directory, cache, repo_id, revision="0123456789abcdef0123456789abcdef01234567"):
    """`directory`'s files laid out as huggingface_hub caches a download (its documented cache
    layout): each file a content-addressed blob under `models--org--name/blobs/`, the snapshot's
    files relative symlinks to them, `refs/main` naming the revision."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in sorted(Path(directory).iterdir()):
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


def test_a_published_oracle_in_the_hub_cache_loads_by_its_hub_id(deep, oracle_dir, tmp_path, monkeypatch):
    """A hub download is a snapshot of symlinks into the repository's blobs; the storage layer took
    them for links out of the artifact, so every published oracle fetched by its hub id was
    refused. Here huggingface_hub itself (offline) finds the cached snapshot."""
    model, tok = deep
    cache = tmp_path / "hub"
    hub_cache_copy(oracle_dir, cache, PUBLISHED[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    v = vectors(2, 3)
    want = Explainer.from_pretrained(oracle_dir, model=model, tokenizer=tok, layer=2, question=QUESTION, positions=3,
                                     check_model=False)
    got = Explainer.from_pretrained(PUBLISHED[0], model=model, tokenizer=tok, layer=2, question=QUESTION, positions=3,
                                    check_model=False)
    assert [r["label"] for r in got.explain(v, progress=False)] == [r["label"] for r in want.explain(v, progress=False)]


def test_the_ask_command_refuses_a_broken_oracle_before_loading_the_model(deep, oracle_dir, tmp_path, capsys, monkeypatch):
    """A missing weights file, a pickle or a non-LoRA config is found without the base model, so
    the command does not spend minutes loading an 8B model first."""
    import shutil

    import selfinterp_plugins.cli_options as cli_options
    from selfinterp_plugins import VectorLabelDataset

    from cli_models import one_line_error

    model, tok = deep
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = VectorLabelDataset(vectors(2, 1)[:, 0], [{"label": "x"} for _ in range(2)]).save(tmp_path / "vecs")
    capsys.readouterr()  # the saves' progress bars

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_options, "load_backend", never)
    monkeypatch.setattr("selfinterp_peft.oracle_cli.load_backend", never)
    broken = tmp_path / "broken"
    shutil.copytree(oracle_dir, broken)
    (broken / "adapter_model.safetensors").unlink()
    line = one_line_error(capsys, "oracle", "ask", str(broken), "--vectors", str(data), "--model", str(tmp_path / "base"),
                          "--layer", "2", "--question", QUESTION, "--output", str(tmp_path / "a.jsonl"))
    assert "Missing file" in line and "adapter_model.safetensors" in line
    assert not (tmp_path / "a.jsonl").exists()
