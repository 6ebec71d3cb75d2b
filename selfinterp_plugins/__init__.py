"""selfinterp-plugins: teach a frozen language model to read its own vectors aloud.

Public API; everything not listed here may change.
"""

__version__ = "0.1.0"

from .adapters import Adapter, AdapterConfig, LowRankConfig, make_adapter  # noqa: E402
from .backends import Backend, HFBackend, Sampling  # noqa: E402
from .datasets import VectorLabelDataset  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    BackendError,
    LabelError,
    ModelLoadError,
    ModelMismatchError,
    OptionError,
    PluginNotInstalledError,
    SelfInterpError,
    TemplateError,
    UnknownNameError,
    UnsupportedInitError,
    VectorError,
)
from .explainer import Explainer  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .sites import Site  # noqa: E402
from .templates import PromptTemplate  # noqa: E402
from .training import TrainConfig  # noqa: E402

__all__ = [
    "Adapter", "AdapterConfig", "ArtifactError", "Backend", "BackendError", "Explainer", "HFBackend",
    "LabelError", "LowRankConfig", "ModelLoadError", "ModelMismatchError", "OptionError", "PluginNotInstalledError",
    "PromptTemplate", "Sampling",
    "SelfInterpError", "Site", "TemplateError", "TrainConfig", "UnknownNameError", "UnsupportedInitError",
    "VectorError", "VectorLabelDataset", "hookimpl", "make_adapter",
]
