"""Hugging Face CLIP: a dual encoder, each tower read at the token it pools (image CLS, text EOT)
and explained on its own with :func:`gae_utils.explain_dual`.

The text readout is the EOT row of ``R`` with its identity (1 on the EOT entry), as the authors'
``R_text``; causal LMs read ``R - I`` (why: :class:`~gae_utils.dual.DualExplanation`,
docs/models.md "Dual encoders and sentence encoders")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..capture import OutputItem
from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_image_batch, check_image_size, check_text, hf_eager

__all__ = ["CLIP", "clip_eot_index"]


def clip_eot_index(model: Any, input_ids: Tensor) -> Tensor:
    """Index of the token CLIP's text tower pools (EOT), as ``CLIPTextTransformer`` picks it:
    ``(B,)``."""
    eos = model.config.text_config.eos_token_id
    if eos == 2:  # legacy configs: the EOT token has the largest id
        return input_ids.argmax(dim=-1)
    return (input_ids == eos).int().argmax(dim=-1)


def _clip_check(model: Any, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "pixel_values" not in inputs or "input_ids" not in inputs:
        raise TypeError(
            "CLIP takes a dict with 'pixel_values' (images) and 'input_ids'/'attention_mask' "
            "(texts)"
        )
    check_text(model, inputs)
    vision = model.config.vision_config
    check_image_batch(inputs["pixel_values"], None, channels=vision.num_channels)
    check_image_size(inputs["pixel_values"], vision.image_size, "vision_config.image_size ")


def _clip_layout(model: Any, inputs: Any) -> TokenLayout:
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    ids = inputs["input_ids"]
    eot = F.one_hot(clip_eot_index(model, ids), ids.shape[1]).float()  # (B_t, L)
    segments = (
        Segment("image", 1 + side * side, 1, (side, side)),
        Segment("text", ids.shape[1], 0),
    )
    readouts = (
        Readout("image", "image", "image", (0,)),
        Readout("text", "text", "text", per_example_rows=True),
    )
    return TokenLayout(segments, readouts, {"text": eot})


CLIP = Adapter(
    name="hf-clip",
    model_classes=("CLIPModel",),
    sites=(
        AttentionSite(
            "CLIPAttention", OutputItem(1), query="image", key="image", within="vision_model"
        ),
        AttentionSite(
            "CLIPAttention", OutputItem(1), query="text", key="text", within="text_model"
        ),
    ),
    eager=hf_eager,
    call=lambda model, inputs: model(**inputs),
    logits=lambda out: out.logits_per_image,
    check=_clip_check,
    layout=_clip_layout,
    family="Hugging Face CLIPModel (image tower read at CLS, text tower at EOT), via "
    "gae_utils.explain_dual",
    target=None,
    task="dual",
)
