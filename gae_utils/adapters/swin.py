"""Hierarchical windowed vision transformers: timm ``SwinTransformer`` (v1) and
``SwinTransformerV2``, Hugging Face ``SwinForImageClassification`` / ``SwinModel``.

Each block attends within windows folded into the batch (one attention call, ``B*nW`` maps); the
recorder reads them as one layer and :func:`window_index` says where each window position sits in
the stage's token grid (the cyclic shift and the partition undone), so that the engine scatters the
per-window maps block-diagonally and pools ``R`` at each 2x2 patch merge (docs/rules.md, "Windows
and merges"). The head averages the last stage's tokens: the readout is the mean of its rows, and
the map lies on the first stage's grid (56 x 56 for Swin-T at 224 px).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..capture import ChildOutput, FromInterface
from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_image_batch, check_image_size, no_switch
from .images import pixel_values
from .timm_vit import timm_eager, timm_target

__all__ = ["TIMM_SWIN", "HF_SWIN", "window_index"]

Grid = tuple[int, int]


def window_index(grid: Grid, window: Grid, shift: Grid, pad_first: bool = False) -> Tensor:
    """Raster index in ``grid`` of each window position, ``(nW, Nw)``; ``h*w`` marks padding.

    The model rolls its ``(h, w)`` token grid by ``-shift`` and pads it to a multiple of the
    window (timm rolls then pads; Hugging Face pads then rolls: ``pad_first``), then cuts windows
    in raster order, each read in raster order.
    """
    (h, w), (wh, ww) = grid, window
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww  # padded grid
    axes = []
    for n, n_pad, s in ((h, hp, shift[0]), (w, wp, shift[1])):
        pos = torch.arange(n_pad)  # position in the rolled, padded grid
        src = (pos + s) % n_pad if pad_first else torch.where(pos < n, (pos + s) % n, n)
        axes.append(src)
    rows, cols = axes  # (hp,), (wp,): source row/column, n: padding
    index = rows[:, None] * w + cols[None, :]  # (hp, wp)
    index[(rows >= h)[:, None] | (cols >= w)[None, :]] = h * w
    index = index.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3)  # (hW, wW, wh, ww)
    return index.reshape(-1, wh * ww)  # (nW, Nw)


def _layout(grids: list[Grid]) -> TokenLayout:
    """Relevance over the first stage's grid, read as the mean of the last stage's rows."""
    first, last = grids[0], grids[-1]
    image = Segment("image", first[0] * first[1], 0, first)
    stage = Segment("last_stage", last[0] * last[1], 0, last)
    return TokenLayout((image, stage), (Readout("image", "last_stage", "image", None),))


# --- timm -----------------------------------------------------------------------------------------

_TIMM_BLOCKS = ("SwinTransformerBlock", "SwinTransformerV2Block")


def _pair(x: Any) -> Grid:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _timm_windows(model: nn.Module, images: Tensor) -> list[tuple[Grid, Tensor]]:
    out = []
    for block in (m for m in model.modules() if type(m).__name__ in _TIMM_BLOCKS):
        grid, window, shift = (
            _pair(block.input_resolution),
            _pair(block.window_size),
            _pair(block.shift_size),
        )
        out.append((grid, window_index(grid, window, shift).to(images.device)))
    return out


def _timm_check(model: Any, images: Tensor) -> None:
    check_image_batch(images, getattr(model.patch_embed, "proj", None))
    check_image_size(images, model.patch_embed.img_size, fix=" (or model.set_input_size(...))")


def _timm_layout(model: Any, images: Tensor) -> TokenLayout:
    if getattr(model, "global_pool", "avg") != "avg":
        raise ValueError(
            f"timm Swin with global_pool={model.global_pool!r}: the readout (the mean of the last "
            "stage's rows) needs global_pool='avg'; build the model with global_pool='avg'."
        )
    return _layout([grid for grid, _ in _timm_windows(model, images)])


TIMM_SWIN = Adapter(
    name="timm-swin",
    model_classes=("SwinTransformer", "SwinTransformerV2"),
    sites=(
        AttentionSite(
            "WindowAttention",
            ChildOutput("attn_drop"),
            query="windows",
            key="windows",
            windowed=True,
        ),
    ),
    eager=timm_eager,  # v1's fused_attn off for the call (v2 always computes the probabilities)
    call=lambda model, images: model(images),
    logits=lambda out: out,
    check=_timm_check,
    layout=_timm_layout,
    family="timm SwinTransformer and SwinTransformerV2 (swin_*, swinv2_*): shifted windows, 2x2 "
    "patch merges, average-pooled head",
    target=timm_target,  # a headless model (num_classes=0) takes a callable target
    prepare=pixel_values,
    windows=_timm_windows,
)


# --- Hugging Face ---------------------------------------------------------------------------------


def _hf_windows(model: Any, images: Tensor) -> list[tuple[Grid, Tensor]]:
    """The grids as the model computes them at run time (padded patches, ceil-halving merges; a
    stage's ``input_resolution`` floors them), window and shift by its own rule."""
    patch = _pair(model.config.patch_size)
    grid = (-(-images.shape[-2] // patch[0]), -(-images.shape[-1] // patch[1]))
    out = []
    stages: list[Any] = [m for m in model.modules() if type(m).__name__ == "SwinStage"]
    for stage in stages:
        for layer in stage.blocks:
            window, shift = int(model.config.window_size), int(layer.shift_size)
            if min(grid) <= window:  # SwinLayer.set_shift_and_window_size
                window, shift = min(grid), 0
            index = window_index(grid, (window, window), (shift, shift), pad_first=True)
            out.append((grid, index.to(images.device)))
        if stage.downsample is not None:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return out


def _hf_check(model: Any, images: Tensor) -> None:
    check_image_batch(images, None, channels=model.config.num_channels)
    check_image_size(images, _pair(model.config.image_size), "config.image_size ")


def _hf_layout(model: Any, images: Tensor) -> TokenLayout:
    return _layout([grid for grid, _ in _hf_windows(model, images)])


HF_SWIN = Adapter(
    name="hf-swin",
    model_classes=("SwinForImageClassification",),
    sites=(
        AttentionSite(
            "SwinAttention", FromInterface(), query="windows", key="windows", windowed=True
        ),
    ),
    eager=no_switch,  # the recorder routes the attention interface through its capture
    call=lambda model, images: model(pixel_values=images),
    logits=lambda out: getattr(out, "logits", None),
    check=_hf_check,
    layout=_hf_layout,
    family="Hugging Face SwinForImageClassification: shifted windows, 2x2 patch "
    "merges, average-pooled head",
    prepare=pixel_values,
    windows=_hf_windows,
)
