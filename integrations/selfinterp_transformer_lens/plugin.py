"""transformer_lens plugin (placeholder until its issue lands)."""

from selfinterp_plugins.plugins import require

require("transformer_lens", "transformer-lens")
