"""nnsight plugin (placeholder until its issue lands): importing it needs nnsight."""

import nnsight  # noqa: F401
