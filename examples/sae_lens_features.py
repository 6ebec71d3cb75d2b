"""SAE-Lens features, labelled by the model itself and scored, offline on SmolLM2.

    python examples/sae_lens_features.py                  # trains a small SAE first (whole run ~1.5 min on 2 free cores)
    python examples/sae_lens_features.py --sae my-sae     # any SAE saved with sae.save_model()

1. An SAE-Lens `SAE` on SmolLM2's residual stream (yours, or a small TopK SAE trained here with
   SAE-Lens's SAETrainer on Shakespeare's plays).
2. Weak labels for its latents from their top-activating words, through Neuronpedia's export
   format (what you would download for a published SAE) into a VectorLabelDataset.
3. An adapter trained on the train latents; the held-out latents labelled (JSONL + Neuronpedia copy).
4. Generation scoring (Pepper et al. 2026) of the adapter's labels next to the weak labels.
"""

from __future__ import annotations

import argparse

from selfinterp_plugins import Explainer, HFBackend, Sampling, TrainConfig
from selfinterp_plugins.models import load_model
from selfinterp_sae_lens.corpus import shakespeare_texts, token_windows
from selfinterp_sae_lens.generation_scoring import ConversationWriter, generation_score
from selfinterp_sae_lens.labelling import label_features
from selfinterp_sae_lens.neuronpedia import labelled_dataset, read_explanations, split_features, write_explanations
from selfinterp_sae_lens.sae_training import SAETrainConfig, train_sae
from selfinterp_sae_lens.source import load_sae
from selfinterp_sae_lens.weak_labels import top_activations, weak_labels

parser = argparse.ArgumentParser()
parser.add_argument("--sae", default=None, help="an SAE directory (sae.save_model); default: train a small one")
parser.add_argument("--tokens", type=int, default=60_000, help="SAE training tokens when training one here")
parser.add_argument("--score", type=int, default=4, help="held-out latents to score")
args = parser.parse_args()

model, tokenizer = load_model("smollm2-135m-instruct")
backend = HFBackend(model, tokenizer)
windows = token_windows(tokenizer, shakespeare_texts(), context=64, seed=0)

# 1. the SAE
if args.sae:
    sae = load_sae(args.sae)
else:
    config = SAETrainConfig(d_sae=1152, k=16, total_tokens=args.tokens, lr=1e-3)
    sae = train_sae(backend, windows[:2000], "resid_post.6", config, out="example-sae", model_name="smollm2-135m-instruct")
print(f"SAE: {sae.cfg.d_sae} latents at {sae.cfg.metadata.hook_name}")

# 2. weak labels -> Neuronpedia format -> dataset (for a published SAE, start from its export file)
top = top_activations(backend, sae, windows[2000:2400])
labels, report = weak_labels(top, tokenizer, min_count=5)
print(f"weak labels for {report['labelled']} of {report['latents']} latents")
rows = [{"id": str(i), "label": label} for i, label in sorted(labels.items())]
write_explanations(rows, "example-explanations.json", "smollm2-135m-instruct", "6-res-example", "top-activating word")
explanations = read_explanations("example-explanations.json")
data = labelled_dataset(sae, explanations, splits=split_features([e.index for e in explanations], (0.8, 0.0, 0.2)))
train, test = data.split("train"), data.split("test")

# 3. an adapter on the train latents (the recipe that works on SmolLM2: full_rank, echo, ridge init)
explainer = Explainer.create(model, tokenizer, adapter="full_rank", template="echo", site="embed")
explainer.train(train, None, TrainConfig(epochs=1, init="ridge"))
explainer.save_pretrained("example-sae-explainer")
held_out = [int(i) for i in test.ids[: args.score]]
records = label_features(explainer, sae, held_out, output="example-sae-labels.jsonl", sampling=Sampling(max_new_tokens=12),
                         neuronpedia_output="example-sae-labels.json")
truth = dict(zip(test.ids, test.labels))
for r in records:
    print(f"latent {r['feature']}: weak label {truth[r['id']]!r} -> adapter {r['label']!r}")

# 4. generation scoring: the subject model writes 3 short conversations per label; does the latent fire?
writer = ConversationWriter(backend, max_new_tokens=60)
ours = generation_score(records, sae, backend, writer, n_samples=3)
weak = generation_score([{"id": r["id"], "label": truth[r["id"]]} for r in records], sae, backend, writer, n_samples=3)
print(f"generation scoring (mean-max hit rate, {len(records)} held-out latents, 3 samples): "
      f"adapter {ours['mean_max_hit_rate']:.2f}, weak labels {weak['mean_max_hit_rate']:.2f}")
