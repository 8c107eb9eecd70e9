"""OpenCLIP (``open_clip_torch``) dual encoders, explained with :func:`gae_utils.explain_dual` as
Hugging Face CLIP: each tower read at the token it pools (image CLS or patch mean, text EOT).

Both towers' attention is ``torch.nn.MultiheadAttention``
(:func:`~gae_utils.adapters.seq2seq.mha_eager`).
Inputs: ``{"pixel_values": (B_i, 3, H, W), "input_ids": (B_t, L)}``
    (``open_clip.get_tokenizer(name)(texts)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..capture import OutputItem
from ..layout import Readout, Segment, TokenLayout
from .base import (
    Adapter,
    AttentionSite,
    UnsupportedModelError,
    check_image_batch,
    check_image_size,
    check_text,
)
from .seq2seq import mha_eager

__all__ = ["OPEN_CLIP", "open_clip_text_index"]


def open_clip_text_index(model: Any, input_ids: Tensor) -> Tensor:
    """``(B,)`` index of the token the text tower pools, as
    ``open_clip.transformer.text_global_pool`` picks it."""
    pool = model.text_pool_type
    if pool == "argmax":  # the EOT token has the largest id
        return input_ids.argmax(dim=-1)
    if pool == "eos":
        return (input_ids == model.text_eos_id).int().argmax(dim=-1)
    if pool in ("first", "last"):
        return input_ids.new_full(
            input_ids.shape[:1], 0 if pool == "first" else input_ids.shape[1] - 1
        )
    raise UnsupportedModelError(
        f"OpenCLIP text_pool_type={pool!r} has no relevancy readout; use 'argmax' or 'eos'"
    )


def _check(model: Any, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "pixel_values" not in inputs or "input_ids" not in inputs:
        raise TypeError(
            "OpenCLIP takes a dict with 'pixel_values' (images) and 'input_ids' "
            "(open_clip.get_tokenizer(name)(texts))"
        )
    check_text(model, {"input_ids": inputs["input_ids"]})
    check_image_batch(inputs["pixel_values"], model.visual.conv1)
    check_image_size(
        inputs["pixel_values"], model.visual.image_size, fix=" (open_clip's preprocess does)"
    )


def _layout(model: Any, inputs: Any) -> TokenLayout:
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or visual.pool_type not in ("tok", "avg"):
        raise UnsupportedModelError(
            f"OpenCLIP vision pool_type={visual.pool_type!r} with an attentional pooler has no "
            "relevancy readout; "
            "models pooling the CLS token ('tok') or the patch mean ('avg') are served"
        )
    grid = tuple(visual.grid_size)
    ids = inputs["input_ids"]
    eot = F.one_hot(open_clip_text_index(model, ids), ids.shape[1]).float()  # (B_t, L)
    rows = (0,) if visual.pool_type == "tok" else None
    segments = (Segment("image", 1 + grid[0] * grid[1], 1, grid), Segment("text", ids.shape[1], 0))
    readouts = (
        Readout("image", "image", "image", rows),
        Readout("text", "text", "text", per_example_rows=True),
    )
    return TokenLayout(segments, readouts, {"text": eot})


def _logits(output: Any) -> Tensor:
    """``(B_i, B_t)`` similarity logits from
    ``(image_features, text_features, logit_scale[, logit_bias])``."""
    if isinstance(output, Mapping):
        output = (
            output["image_features"],
            output["text_features"],
            output["logit_scale"],
            output.get("logit_bias"),
        )
    image, text, scale, *bias = output
    logits = scale * image @ text.T  # (B_i, B_t), features already normalised
    return logits + bias[0] if bias and bias[0] is not None else logits


OPEN_CLIP = Adapter(
    name="open-clip",
    model_classes=(),
    accepts=lambda model: (
        type(model).__module__.startswith("open_clip.") and hasattr(model, "text_pool_type")
    ),
    sites=(  # the image tower first: its blocks' names also contain "transformer"
        AttentionSite(
            "MultiheadAttention",
            OutputItem(1),
            query="image",
            key="image",
            within="visual",
            graph_base=True,
        ),
        AttentionSite(
            "MultiheadAttention",
            OutputItem(1),
            query="text",
            key="text",
            within="transformer",
            graph_base=True,
        ),
    ),
    eager=mha_eager,
    call=lambda model, inputs: model(inputs["pixel_values"], inputs["input_ids"]),
    logits=_logits,
    check=_check,
    layout=_layout,
    family="OpenCLIP CLIP / CustomTextCLIP with ViT towers (image CLS or mean, text EOT), via "
    "gae_utils.explain_dual",
    target=None,
    task="dual",
)
