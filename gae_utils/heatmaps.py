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
    relevance: Tensor, grid: tuple[int, int], size: int | tuple[int, int] | None = None
) -> Tensor:
    """Relevance over a grid's cells as heatmaps in [0, 1].

    Args:
        relevance: ``(..., h*w)`` raw relevance of the content tokens, raster order.
        grid: ``(h, w)`` the patch (or region, or feature) grid.
        size: output ``(H, W)``; an int means square; ``None`` keeps the grid.

    Returns:
        ``(..., H, W)`` maps, each min-max normalised on its own (a constant map becomes zeros).
    """
    maps = relevance.reshape(*relevance.shape[:-1], *grid)  # (..., h, w)
    if size is not None:
        maps = upsample_maps(
            maps, (size, size) if isinstance(size, int) else cast("tuple[int, int]", tuple(size))
        )
    return normalize_maps(maps)
