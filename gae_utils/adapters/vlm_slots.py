"""The images (or tiles) of each example side by side in the vision tower's tokens: which of the
tower's batch entries are an example's, the tower's segment, the projector's token map ``P`` and
the grids the maps are read on (docs/rules.md, "End to end through a vision tower")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layout import Segment
from ..propagation import MERGE_REDUCE
from .vlm_tower import _tower_tokens, shuffle

__all__ = ["tower_images", "tower_layout"]


def tower_images(per_example: Tensor) -> Tensor:
    """``(B, n)`` the tower batch index of each example's images (or tiles; ``-1``: a slot it has
    none for), from their number per example ``(B,)``: the model runs them in order, example
    after example."""
    slots = torch.arange(max(int(per_example.max()), 1), device=per_example.device)  # (n,)
    first = (per_example.cumsum(0) - per_example)[:, None]  # (B, 1) index of its first image
    return (first + slots).where(slots < per_example[:, None], -1)  # (B, n)


def tower_layout(
    model: nn.Module, pixels: Tensor, features: Tensor, slots: int
) -> tuple[Segment, tuple[int, int], Tensor, Tensor, Tensor]:
    """The tower's tokens of ``slots`` images (or tiles) per example side by side, ``n N_v``.

    Args:
        features: ``(B, L)`` the projected feature each token is, ``j T + m`` for feature ``m``
            of the example's image ``j`` (``T`` per image, the CLS dropped or not); ``-1``: none
            (text, LLaVA-NeXT's newlines).

    Returns:
        The tower's segment (the images' grids stacked along the height, ``(n h, w)``), the
        image tokens' grid (``(n h / s, w / s)``), the projector's token map ``P``
        ``(B, L, n N_v)``, and the raster positions of the tower tokens ``(B, n N_v)`` and of the
        image tokens ``(B, L)`` on their stacked grids (-1: CLS, text). ``P`` is a selection,
        feature ``j T + m`` reads tower token ``j N_v + m + dropped``, or for a pixel shuffle of
        ``s`` (Idefics3) the mean over the ``s x s`` block of tower tokens it concatenates (a
        grouping, as a patch merge: ``MERGE_REDUCE``).
    """
    prefix, grid, dropped = _tower_tokens(model, pixels)
    s, (h, w) = shuffle(model), grid
    n_v, cells = prefix + h * w, h * w // (s * s)  # tower tokens, features of one image
    image = features >= 0  # (B, L) tokens that are a tower token's feature
    per = (n_v - dropped) // (s * s)  # features of one image (features_per_image)
    slot, within = features.div(per, rounding_mode="floor"), features % per  # (B, L)
    if s == 1:
        read = (slot * n_v + within + dropped)[..., None]  # (B, L, 1) tower token read
    else:  # feature (I, J) of the (h/s, w/s) grid reads rows I s.., columns J s.. of (h, w)
        block = torch.arange(s, device=features.device)
        offsets = (block[:, None] * w + block).flatten()  # (s s,)
        corner = (within // (w // s)) * s * w + (within % (w // s)) * s  # (B, L)
        read = (slot * n_v + prefix + corner)[..., None] + offsets  # (B, L, s s)
    weight = (1.0 / read.shape[-1] if MERGE_REDUCE == "mean" else 1.0) * image[..., None]
    select = pixels.new_zeros(*features.shape, slots * n_v, dtype=torch.float32)  # (B, L, n N_v)
    select.scatter_add_(-1, read.clamp(0, slots * n_v - 1), weight.expand_as(read).to(select))
    token = torch.arange(slots * n_v, device=features.device)  # (n N_v,)
    patch = token % n_v - prefix  # index on its image's grid; < 0: CLS
    tower = (token // n_v * h * w + patch).where(patch >= 0, -1).expand(features.shape[0], -1)
    skip = prefix - dropped  # image tokens before the grid (CLS, strategy "full")
    images = (slot * cells + within - skip).where(image & (within >= skip), -1)  # (B, L)
    grids = (slots * h, w), (slots * h // s, w // s)
    return Segment("pixels", slots * n_v, 0, grids[0]), grids[1], select, tower, images
