"""selfinterp plugin for nnsight (see plugin.py)."""
