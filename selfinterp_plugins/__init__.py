"""selfinterp-plugins: teach a frozen language model to read its own vectors aloud.

Public API; everything not listed here may change.
"""

from ._version import __version__
from .adapters import Adapter, AdapterConfig, LowRankConfig, make_adapter
from .backends import Backend, HFBackend, Sampling
from .datasets import VectorLabelDataset
from .defaults import shipped_explainer_dir, shipped_explainer_names
from .errors import (
    ArtifactError,
    BackendError,
    LabelError,
    ModelLoadError,
    ModelMismatchError,
    OptionError,
    OutputError,
    PluginNotInstalledError,
    SelfInterpError,
    TemplateError,
    UnknownNameError,
    UnsupportedInitError,
    UnsupportedModelError,
    VectorError,
)
from .explainer import Explainer
from .hookspecs import hookimpl
from .results import ExplainRecord, ExplainResults
from .sites import Site
from .templates import PromptTemplate
from .training import TrainConfig

__all__ = [
    "Adapter", "AdapterConfig", "ArtifactError", "Backend", "BackendError", "ExplainRecord", "ExplainResults",
    "Explainer", "HFBackend",
    "LabelError", "LowRankConfig", "ModelLoadError", "ModelMismatchError", "OptionError", "OutputError", "PluginNotInstalledError",
    "PromptTemplate", "Sampling",
    "SelfInterpError", "Site", "TemplateError", "TrainConfig", "UnknownNameError", "UnsupportedInitError",
    "UnsupportedModelError", "VectorError", "VectorLabelDataset", "__version__", "hookimpl", "make_adapter",
    "shipped_explainer_dir",
    "shipped_explainer_names",
]
