"""Explain and train against a model that runs on NDIF, without a GPU.

On NDIF the model stays on the server; each request carries the vectors and the adapter's own
tensors (d_model + 1 floats for scalar affine), the adapter runs inside the intervention, and a
training step brings back only the loss and the adapter's gradients. Long runs write each batch to
JSONL as it lands and a rerun resumes; server hiccups are retried with back-off.

Offline (the default here) the same code runs with `remote="local"`: nnsight serialises every
request exactly as for NDIF, deserialises it without this package and runs it on SmolLM2 from a
PyPI wheel. To run on NDIF, set NDIF_API_KEY and SELFINTERP_REMOTE=1, and pick a served model:

    SELFINTERP_REMOTE=1 SELFINTERP_MODEL=meta-llama/Llama-3.1-70B python examples/ndif_remote.py

`tests/test_examples.py` runs it offline.
"""

import os

from nnsight import TransformersModel

from selfinterp_nnsight.requests import recording_requests
from selfinterp_plugins import Explainer, Sampling, TrainConfig
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics, topic_vectors

REMOTE = True if os.environ.get("SELFINTERP_REMOTE") == "1" else "local"
if REMOTE is True:
    lm = TransformersModel(os.environ.get("SELFINTERP_MODEL", "meta-llama/Llama-3.1-70B"))  # weights stay on NDIF
else:
    model, tokenizer = load_model("smollm2-135m-instruct")
    lm = TransformersModel(model, tokenizer=tokenizer)

explainer = Explainer.create(lm, adapter="scalar_affine", template="echo", backend_options={"remote": REMOTE})
layer = explainer.backend.n_layers * 2 // 3
data = topic_vectors(explainer.backend, load_topics()[:96], layers=[layer], progress=False)[layer]  # captured remotely

with recording_requests() as requests:
    history = explainer.train(data.split("train"), config=TrainConfig(epochs=1, batch_size=16, max_steps=3),
                              progress=False)
print(f"3 remote training steps: loss {history['train_loss'][0]:.3f} to {history['train_loss'][-1]:.3f}; "
      f"{len(requests)} requests of {min(map(len, requests)):,}-{max(map(len, requests)):,} bytes")

records = explainer.explain(data.vectors[:8], ids=data.ids[:8], sampling=Sampling(max_new_tokens=12), batch_size=4,
                            output="ndif_labels.jsonl", progress=False)  # rerun: finished batches are skipped
print("labels after 3 steps (the remote path at work, not a trained explainer: examples/nnsight_explain.py is one):")
for truth, record in zip(data.labels, records):
    print(f"{truth:>24} -> {record['label']}")
print("parameters trained remotely:", explainer.adapter.num_trainable(), "floats;",
      "soft token norm", round(float(explainer.soft_tokens(data.vectors[:1]).detach().norm()), 2))
