"""selfinterp plugin for sae_lens (see plugin.py)."""
