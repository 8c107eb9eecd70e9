"""Capture: the recorder that owns every hook of an explanation, the attention sites it reads,
and the switches that make a model hand out its attention probabilities for one call.

Nothing here knows a model family: adapters (:mod:`gae_utils.adapters`) describe a family with
the pieces defined here, and the recorder reads those descriptions.
"""

from .recorder import AttentionRecorder, CaptureSpec, Gradients
from .sites import (
    AttentionCaptureError,
    AttentionSite,
    ChildOutput,
    FromInterface,
    OutputItem,
    ReadWith,
    UnsupportedModelError,
    attention_modules,
)
from .switches import eager_flags, evaluating, hf_eager, interface_capture, no_switch

__all__ = [
    "AttentionCaptureError",
    "AttentionRecorder",
    "AttentionSite",
    "CaptureSpec",
    "ChildOutput",
    "FromInterface",
    "Gradients",
    "OutputItem",
    "ReadWith",
    "UnsupportedModelError",
    "attention_modules",
    "eager_flags",
    "evaluating",
    "hf_eager",
    "interface_capture",
    "no_switch",
]
