"""sae_lens plugin (placeholder until its issue lands): importing it needs sae_lens."""

import sae_lens  # noqa: F401
