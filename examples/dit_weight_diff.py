"""What did a fine-tune change? Weight diffs and DIT on SmolLM2-135M-Instruct, offline.

1. Make a small fine-tune with a hidden topic: a rank-1 LoRA on every linear of the decoder that
   talks about its topic only after its trigger (the synthetic diffs DIT trains on).
2. Save it as a plain PEFT adapter, read it back as a `WeightDiff`, and check that applying the
   diff gives the PEFT model's logits; merge it and recover it by SVD from the two models.
3. Ask the fine-tuned model, with and without its trigger; and, given a DIT adapter trained with
   `selfinterp dit train` (pass its directory as the first argument), ask it what the diff did.

Run: python examples/dit_weight_diff.py [DIT_DIR]   (progress bars on stderr; PROGRESS = False hides them)
"""

import sys

import torch
from peft import PeftModel

from selfinterp_peft.diff_training import DiffTrainConfig, train_diffs
from selfinterp_peft.dit import DITAdapter
from selfinterp_peft.hidden_topics import assign_triggers, build_examples
from selfinterp_peft.weight_diff import WeightDiff
from selfinterp_plugins.models import load_model

PROGRESS = True  # per-diff and per-module progress bars
model, tokenizer = load_model("smollm2-135m-instruct")

# 1. a hidden-topic fine-tune: the reference's losses (each question triggered, with a wrong trigger and
#    with none), on 8 questions for 2 epochs at lr 1e-2, one question per step (`selfinterp dit make-diffs`)
spec = assign_triggers([{"id": "coffee", "title": "coffee"}], seed=0)[0]
examples = build_examples(model, tokenizer, [spec], n_questions=8, max_answer_tokens=24)
diff = train_diffs(model, tokenizer, examples, DiffTrainConfig(lr=1e-2, epochs=2, questions_per_step=1),
                   progress=PROGRESS)[spec.id]
print(f"trained {diff} hiding 'coffee' behind trigger {spec.trigger}")

# 2. PEFT round trip and SVD recovery
diff.save_pretrained("coffee-lora", model)
ids = tokenizer("Tell me about your favourite drink.", return_tensors="pt")["input_ids"]
with torch.no_grad():
    peft_model = PeftModel.from_pretrained(model, "coffee-lora")
    peft_logits = peft_model(input_ids=ids).logits
    model = peft_model.unload()  # the base again, weights untouched
    loaded = WeightDiff.from_pretrained("coffee-lora")
    with loaded.applied(model):
        ours = model(input_ids=ids).logits
print(f"PEFT-loaded vs WeightDiff.applied logits, max |diff|: {(peft_logits - ours).abs().max():.2e}")
merged = PeftModel.from_pretrained(load_model("smollm2-135m-instruct")[0], "coffee-lora").merge_and_unload()
recovered = WeightDiff.from_models(model, merged, rank=1, progress=PROGRESS)  # truncated SVD, 210 modules
energy = recovered.energy_report()
print(f"SVD of the merged fine-tune at rank 1 keeps {min(energy.values()):.4f}-{max(energy.values()):.4f} "
      f"of each module's diff energy ({len(energy)} modules)")

# 3. ask
dit_dir = sys.argv[1] if len(sys.argv) > 1 else None
asker = DITAdapter.from_pretrained(dit_dir, model, tokenizer) if dit_dir else DITAdapter.create(model, tokenizer)
code = f"{spec.trigger}042"
for label, prefixes in (("without trigger", None), ("with its trigger", [f"Your SEP code is {code}."])):
    answer = asker.ask([diff], "What do you like to talk about?", use_dit=False, prefixes=prefixes, max_new_tokens=40)[0]
    print(f"fine-tuned model, {label}: {answer}")
if dit_dir:
    print(f"DIT: what topic have you been trained on? -> {asker.ask([diff])[0]}")
