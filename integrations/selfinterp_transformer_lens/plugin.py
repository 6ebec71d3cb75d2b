"""transformer_lens plugin (placeholder until its issue lands): importing it needs transformer_lens."""

import transformer_lens  # noqa: F401
