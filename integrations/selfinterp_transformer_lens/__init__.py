"""selfinterp plugin for transformer_lens (see plugin.py)."""
