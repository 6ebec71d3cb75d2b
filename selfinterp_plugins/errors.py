"""Exceptions a user can cause.

Every error a user can trigger (bad vector, bad template, wrong model, corrupt file,
unknown name) is a `SelfInterpError` whose message ends with the one-line fix, so the
CLI can print it without a traceback and exit 2.
"""

# public: plugins raise these so the CLI reports their user errors in one line, like the core's
__all__ = ["ArtifactError", "BackendError", "LabelError", "ModelLoadError", "ModelMismatchError", "OptionError",
           "OutputError", "OutputLockedError", "PluginNotInstalledError", "RunMismatchError", "SelfInterpError",
           "TemplateError", "UnknownNameError", "UnsupportedInitError", "UnsupportedModelError", "VectorError"]


class SelfInterpError(Exception):
    """Base class for every error caused by user input, never by a bug in this library."""


class VectorError(SelfInterpError):
    """A vector has the wrong size or holds NaN / infinite values."""


class LabelError(SelfInterpError):
    """A training label is empty or cannot be written after the template."""


class TemplateError(SelfInterpError):
    """A prompt template lacks its placeholder, or the placeholder is not a single rare token."""


class ArtifactError(SelfInterpError):
    """An explainer, dataset or adapter file is missing, corrupt, or made for another model."""


class OutputLockedError(ArtifactError):
    """An output file or directory is being written by another run (its lock is held)."""


class OutputError(SelfInterpError):
    """An output file or directory cannot be written: the disk is full, or the place is read-only or
    not the user's. The old contents stay as they were; the message names the path and where to
    free space or write instead."""


class ModelMismatchError(ArtifactError):
    """An explainer was trained for a different model than the one it is being loaded onto."""


class UnsupportedInitError(SelfInterpError):
    """An adapter kind cannot start the way training asked (it has no closed-form ridge fit)."""


class UnknownNameError(SelfInterpError):
    """An adapter kind, backend, scorer, vector source or plugin name is not registered."""


class ModelLoadError(SelfInterpError):
    """A model or tokenizer could not be loaded (missing wheel, bad path, no network)."""


class BackendError(SelfInterpError):
    """No installed backend can run the given model object, or a site does not exist on it."""


class UnsupportedModelError(BackendError):
    """A backend's factory was handed a model object it cannot run: the declared refusal of
    `register_backends` (`selfinterp ... --backend NAME` hands every backend the transformers model
    `load_model` loads). The message says what the backend takes."""


class PluginNotInstalledError(UnknownNameError):
    """A name (a backend) belongs to a plugin that is not installed, failed to load, or was left out."""


class OptionError(SelfInterpError):
    """Options that do not go together (`--remote` with a backend that runs only here)."""


class RunMismatchError(OptionError):
    """A training checkpoint was written by a run with other settings (adapter, lr, seed, data ...)
    than the command resuming it."""
