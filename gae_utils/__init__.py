"""gae_utils: Generic Attention-model Explainability (Chefer, Gur & Wolf, ICCV 2021) for unmodified
transformers, with the paper's baselines computed from the same recording.

Read in this order: ``rules`` (Eq. 5-11) -> ``propagation`` -> ``methods``; ``capture`` (the
recorder, its attention sites and switches) -> ``layers`` -> ``layout`` -> ``targets`` ->
``explainer`` (the one recording skeleton) -> ``explanation``; ``adapters/`` (one file per model
family); ``generation``, ``dual`` and ``similarity`` wrap ``explainer.record``.

Names: ``record()`` returns a ``Recording``, made by an ``AttentionRecorder`` that leaves one
``LayerRecord`` per attention call (module ``layers``; the recorder's list is ``records``, every
list passed on is ``layers``); ``maps`` are the relevancy maps ``{(a, b): R}`` (and the flag that
asks for them); ``heatmaps`` are relevance as images in [0, 1].
"""

from importlib.metadata import PackageNotFoundError, version

from .adapters import (
    ADAPTERS,
    Adapter,
    AttentionSite,
    UnsupportedModelError,
    find_adapter,
    register_adapter,
)
from .attribution import GAEAttribution
from .capture import AttentionCaptureError, AttentionRecorder
from .dual import DualExplanation, explain_dual
from .explainer import Recording, explain, record
from .explanation import Explanation
from .generation import explain_generation, record_generation
from .layers import LayerRecord
from .layout import Readout, Segment, TokenLayout
from .methods import METHODS, Method, method_names
from .propagation import propagate
from .similarity import PairExplanation, explain_similarity
from .targets import (
    ClassTarget,
    NextTokenTarget,
    PairSimilarity,
    QueryTarget,
    ScoreTarget,
    Selection,
    Target,
    TokenTarget,
)

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
    "ClassTarget",
    "DualExplanation",
    "Explanation",
    "GAEAttribution",
    "LayerRecord",
    "METHODS",
    "Method",
    "NextTokenTarget",
    "PairExplanation",
    "PairSimilarity",
    "QueryTarget",
    "Readout",
    "Recording",
    "ScoreTarget",
    "Segment",
    "Selection",
    "Target",
    "TokenLayout",
    "TokenTarget",
    "UnsupportedModelError",
    "explain",
    "explain_dual",
    "explain_generation",
    "explain_similarity",
    "find_adapter",
    "method_names",
    "propagate",
    "record",
    "record_generation",
    "register_adapter",
]
