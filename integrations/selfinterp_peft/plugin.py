"""PEFT bridge plugin (placeholder until issue 6 lands): importing it needs peft."""

import peft  # noqa: F401  - absent peft => plugin reported absent by `selfinterp plugins`
