"""Display steps for relevance: patch grid -> pixels -> [0, 1].

Relevance from :func:`gae_utils.explain` is raw and lives on the patch grid; a heatmap is that
grid upsampled bilinearly (as the authors' ``F.interpolate(..., scale_factor=16)``) and min-max
normalised per map. Every heatmap of the library, the figures and the evaluation is made here.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize_maps", "upsample_maps", "grid_heatmap"]


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalises every map ``(..., H, W)`` independently over its two trailing dimensions.

    Constant maps (max == min), which carry no ranking information, become all zeros instead of NaN.
    """
    if maps.dim() < 2:
        raise ValueError(f"maps must have at least 2 dims (..., H, W), got {tuple(maps.shape)}.")
    if maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"maps have an empty spatial size {tuple(maps.shape[-2:])}.")
    maps = maps if maps.is_floating_point() else maps.float()
    flat = maps.flatten(-2)  # (..., H*W)
    low = flat.amin(dim=-1)[..., None, None]  # (..., 1, 1)
    high = flat.amax(dim=-1)[..., None, None]  # (..., 1, 1)
    span = high - low
    has_span = span > 0
    scaled = (maps - low) / torch.where(has_span, span, torch.ones_like(span))
    return torch.where(has_span, scaled, torch.zeros_like(scaled))


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly upsamples patch maps ``(..., h, w)`` to pixel resolution ``(..., H, W)``
    (align_corners=False)."""
    if maps.dim() < 2:
        raise ValueError(f"maps must have at least 2 dims (..., h, w), got {tuple(maps.shape)}.")
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}.")
    maps = maps if maps.is_floating_point() else maps.float()
    leading = maps.shape[:-2]
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w)  # (B, 1, h, w)
    size = (int(size[0]), int(size[1]))
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)  # (B, 1, H, W)
    return up.reshape(*leading, *size)  # (..., H, W)


def grid_heatmap(
    relevance: Tensor,
    grid: tuple[int, ...],
    size: int | tuple[int, int] | None = None,
    frames: int = 0,
) -> Tensor:
    """Relevance over a grid's cells as heatmaps in [0, 1].

    A video's ``(T', h, w)`` tubelet grid gives one map per tubelet, upsampled in space; with
    ``frames`` (the clip's ``T``, a multiple of ``T'``) each tubelet's map is *repeated* over its
    ``T / T'`` frames, not interpolated: a tubelet is one token, the model sees nothing finer in
    time. A clip is normalised as one map (its frames compare).

    Args:
        relevance: ``(..., h*w)`` raw relevance of the content tokens, raster order
            (``(..., T'*h*w)`` for video).
        grid: ``(h, w)`` the patch (or region, or feature) grid, or ``(T', h, w)``.
        size: output ``(H, W)``; an int means square; ``None`` keeps the grid.
        frames: video only: the frames ``T`` of the output; 0 keeps ``T'``.

    Returns:
        ``(..., H, W)`` maps (video: ``(..., T, H, W)``), each min-max normalised on its own (a
        constant map becomes zeros).
    """
    maps = relevance.reshape(*relevance.shape[:-1], *grid)  # (..., [T',] h, w)
    if size is not None:
        maps = upsample_maps(
            maps, (size, size) if isinstance(size, int) else cast("tuple[int, int]", tuple(size))
        )
    if len(grid) == 2:
        return normalize_maps(maps)
    if frames:
        if frames % grid[0]:
            raise ValueError(
                f"frames={frames} is not a multiple of the {grid[0]} tubelets in time; pass the "
                "clip's number of frames (clips.shape[1])"
            )
        maps = maps.repeat_interleave(frames // grid[0], dim=-3)  # (..., T, H, W)
    return normalize_maps(maps.flatten(-3, -2)).unflatten(-2, maps.shape[-3:-1])
