"""The package version, in a module of its own so `explainer.py` (which records it in every saved
explainer) and `__init__.py` (which re-exports it) both import it without importing each other."""

__version__ = "0.1.0"
