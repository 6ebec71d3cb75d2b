"""selfinterp plugin for peft (see plugin.py)."""
