"""gae-workbook: Generic Attention-model Explainability (Chefer, Gur & Wolf, ICCV 2021) for
unmodified transformers, with baselines, metrics, plots and explorers on the same recordings."""

from importlib.metadata import PackageNotFoundError, version

from . import metrics, shapes, zoo
from .adapters import ADAPTERS, Adapter, AttentionSite, UnsupportedModelError, find_adapter, register_adapter
from .engine import METHODS, propagate
from .explainer import Recording, explain, record
from .explanation import Explanation
from .layout import Readout, Segment, TokenLayout
from .recorder import AttentionCaptureError, AttentionRecorder, LayerRecord
from .seq2seq import explain_generation

try:
    __version__ = version("gae-workbook")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AttentionCaptureError",
    "AttentionRecorder",
    "AttentionSite",
    "Explanation",
    "LayerRecord",
    "METHODS",
    "Readout",
    "Recording",
    "Segment",
    "TokenLayout",
    "UnsupportedModelError",
    "explain",
    "explain_generation",
    "find_adapter",
    "propagate",
    "record",
    "register_adapter",
    "metrics",
    "shapes",
    "zoo",
]
