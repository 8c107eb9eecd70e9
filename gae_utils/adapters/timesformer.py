"""Hugging Face ``TimesformerForVideoClassification``: divided space-time attention.

Each block runs two self-attention layers over one global token set, ``N = 1 + P * T`` tokens in
the model's order: CLS, then patch ``p`` of frame ``t`` at ``1 + p * T + t`` (``P = h * w``):

- temporal: one group per patch position, its ``T`` frames (``B * P`` maps ``(T, T)``); the CLS
  takes no part and passes through;
- spatial: one group per frame, the CLS then the frame's ``P`` patches (``B * T`` maps
  ``(1 + P, 1 + P)``); the CLS is copied into every frame and its output is the mean of its ``T``
  copies.

Groups are windows (:meth:`~gae_utils.layers.LayerRecord.with_windows`): :func:`divided_index`
gives each group position's global token, the engine scatters each group's ``Abar`` into the
global order (a token in several groups: the sum of its copies, which Eq. 5 makes the layer's own
map) and applies Eq. 6 twice per block (docs/rules.md, "Video"). The model computes its
probabilities eagerly (no fused path to switch off); they are read at each attention's
``attn_drop``. The head reads the CLS; the relevance ``"video"`` is put on the ``(T, h, w)`` grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..capture import ChildOutput, UnsupportedModelError
from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, no_switch
from .hf_video import check_video_batch
from .images import pixel_values

__all__ = ["TIMESFORMER", "divided_index"]


def divided_index(frames: int, patches: int) -> tuple[Tensor, Tensor]:
    """Global token of each group position: temporal ``(P, T)``, spatial ``(T, 1 + P)``.

    Token ``1 + p * T + t`` is patch ``p`` of frame ``t``; 0 is the CLS, in every spatial group.
    """
    tokens = 1 + torch.arange(patches * frames).view(patches, frames)  # (P, T)
    cls = torch.zeros(frames, 1, dtype=torch.long)  # (T, 1)
    return tokens, torch.cat([cls, tokens.T], dim=1)  # (P, T), (T, 1 + P)


def _sizes(model: Any, clips: Tensor) -> tuple[int, int, int]:
    patch = model.config.patch_size
    return clips.shape[1], clips.shape[-2] // patch, clips.shape[-1] // patch  # T, h, w


def _windows(model: Any, clips: Tensor) -> list[tuple[tuple[int, int], Tensor]]:
    """Two grouped layers per block, temporal then spatial, as the model runs them; the grid of
    every layer is the flat token set ``(1, N)`` (no merges)."""
    frames, h, w = _sizes(model, clips)
    temporal, spatial = (i.to(clips.device) for i in divided_index(frames, h * w))
    grid = (1, 1 + frames * h * w)
    return [(grid, index) for _ in model.timesformer.encoder.layer for index in (temporal, spatial)]


def _check(model: Any, clips: Any) -> None:
    config = model.config
    if config.attention_type != "divided_space_time":
        raise UnsupportedModelError(
            f"TimeSformer with attention_type={config.attention_type!r}: explained is its "
            "divided space-time attention; build or load it with "
            "attention_type='divided_space_time' (the published checkpoints' setting)."
        )
    check_video_batch(model, clips, config.num_frames, config.image_size, config.num_channels)


def _layout(model: nn.Module, clips: Tensor) -> TokenLayout:
    """CLS read over the patches, moved from the model's (patch, frame) order to the ``(T, h, w)``
    raster order."""
    frames, h, w = _sizes(model, clips)
    order = torch.arange(h * w * frames).view(h * w, frames)  # token p * T + t ...
    raster = (torch.arange(frames)[None, :] * h * w + torch.arange(h * w)[:, None]).flatten()
    positions = torch.empty_like(raster).index_copy_(0, order.flatten(), raster)  # ... at t*P + p
    video = Segment("video", 1 + frames * h * w, 1, (frames, h, w))
    return TokenLayout(
        (video,),
        (Readout("video", "video", "video", (0,)),),
        positions={"video": positions.expand(clips.shape[0], -1)},
    )


TIMESFORMER = Adapter(
    name="hf-timesformer",
    model_classes=("TimesformerForVideoClassification",),
    sites=(
        AttentionSite(
            "TimesformerSelfAttention",
            ChildOutput("attn_drop"),
            query="groups",  # per-group maps, not the layout's "video" tokens
            key="groups",
            windowed=True,
        ),
    ),
    eager=no_switch,  # always computes its probabilities (no fused path)
    call=lambda model, clips: model(pixel_values=clips),
    logits=lambda out: getattr(out, "logits", None),
    check=_check,
    layout=_layout,
    prepare=pixel_values,
    windows=_windows,
    family="Hugging Face TimesformerForVideoClassification: divided space-time attention "
    "(temporal groups per patch, spatial groups per frame with the CLS), CLS head",
)
