"""The introspective-interpretation plugin: the explainer fine-tuned to explain its own
computations (Li et al. 2025, Transluce; `explainer.LoRAExplainer`), its three task families and
`selfinterp lora-explainer …`. Registered through the `selfinterp` entry-point group exactly as a
third-party plugin would be; it uses PEFT for its LoRA, so without PEFT installed the plugin is
reported absent. Loading it imports nothing heavy."""

from selfinterp_plugins.hookspecs import hookimpl
from selfinterp_plugins.plugins import require

require("peft", "introspective")


@hookimpl
def register_commands(cli):
    from .cli import register

    register(cli)


@hookimpl
def register_tasks(register):
    from .tasks import TASKS, LoRATask

    for name in TASKS:  # the fine-tuned explainer's families (Li et al. 2025)
        register(name, LoRATask(name))
