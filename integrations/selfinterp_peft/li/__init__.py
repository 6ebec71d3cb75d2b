"""The explainer fine-tuned to explain its own computations (Li et al. 2025, Transluce), and its
three tasks: feature descriptions, activation patching, input ablation.

- `config`: `LoRAExplainerConfig`, `TaskExample`, the reference's prompts and stop strings;
- `explainer`: `LoRAExplainer` (a PEFT LoRA or full fine-tune with vector soft tokens);
- `tasks`: the task families as examples and metrics (registered by `selfinterp_peft.plugin`);
- `act_patch_task`, `input_ablation_task`: their data, run for real on the subject model;
- `causal_targets`: the answer format of the two causal tasks and its metrics;
- `cli`: `selfinterp lora-explainer …`.

It shares the PEFT integration's plugin, `chat` and `epoch_checkpoints`, and nothing else: DIT
(`selfinterp_peft.dit`) and this package do not import each other.
"""
