"""sae_lens plugin (placeholder until its issue lands)."""

from selfinterp_plugins.plugins import require

require("sae_lens", "sae-lens")
