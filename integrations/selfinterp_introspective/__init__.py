"""The explainer fine-tuned to explain its own computations (Li et al. 2025, Transluce), and its
three tasks: feature descriptions, activation patching, input ablation.

- `config`: `LoRAExplainerConfig`, `TaskExample`, the reference's prompts and stop strings;
- `explainer`: `LoRAExplainer` (a PEFT LoRA or full fine-tune with vector soft tokens);
- `tasks`: the task families as examples and metrics (registered by `plugin`);
- `act_patch_task`, `input_ablation_task`: their data, run for real on the subject model;
- `causal_targets`: the answer format of the two causal tasks and its metrics;
- `cli`: `selfinterp lora-explainer …`.

A plugin of its own: what it shares with the PEFT plugin (chat ids, epoch checkpoints, the checked
reading of a PEFT directory, weight-sharing copies) is the core's public API (`selfinterp_plugins.chat`,
`.epoch_checkpoints`, `.peft_files`, `.model_copies`); it never imports another plugin.
"""
