"""PEFT bridge plugin. So far it offers `selfinterp_peft.weight_diff.WeightDiff` (weight diffs from
PEFT LoRA adapters or full fine-tunes, applied to a base model, saved as PEFT adapters); the DIT
task, scorers and CLI commands of issue 6 will register here. Loading it imports nothing heavy."""

from selfinterp_plugins.plugins import require

require("peft", "peft")
