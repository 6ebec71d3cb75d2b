"""nnsight plugin (placeholder until its issue lands)."""

from selfinterp_plugins.plugins import require

require("nnsight", "nnsight")
