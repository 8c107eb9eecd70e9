"""LLaVA-NeXT's tiles carried end to end by :mod:`~gae_utils.adapters.hf_vlm` (docs/rules.md, "End
to end through a vision tower").

LLaVA-NeXT runs its tower on ``1 + r c`` tiles of each image: the base tile (the whole image at the
tower's size), then an ``r x c`` grid of tiles of the image at the resolution it picks from
``image_grid_pinpoints``. Its image tokens are the base tile's features, then the tiles' features
stitched into one ``(r h, c w)`` map, unpadded to the image's aspect ratio, a learned newline token
after each of its rows. Each image token is one tower token (a selection, ``P``); the newlines are
none (a row of ``P`` of zeros). The model's own packing, applied to the features' indices, says
which.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["is_tiled", "tile_features", "tiles_per_example"]


def is_tiled(model: nn.Module) -> bool:
    """LLaVA-NeXT: several tiles per image."""
    return getattr(model.config, "model_type", None) == "llava_next"


def tiles_per_example(model: nn.Module, inputs: Mapping) -> Tensor:
    """``(B,)`` the tiles of each example's image (base tile included), from its ``image_sizes``."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config: Any = model.config
    size, pinpoints = config.vision_config.image_size, config.image_grid_pinpoints
    counts = [image_size_to_num_patches(s, pinpoints, size) for s in inputs["image_sizes"]]
    return torch.tensor(counts, device=inputs["input_ids"].device)


def tile_features(model: nn.Module, inputs: Mapping, image: Tensor, per_tile: int) -> Tensor:
    """``(B, L)`` the feature each image token is, ``j T + m`` (tile ``j``, feature ``m`` of its
    ``T = per_tile``), ``-1`` for newlines and text: the model's packing of the indices.

    Raises:
        ValueError: an example's image tokens are not its packed image's (wrong ``image_sizes``).
    """
    config: Any = model.config
    marker = torch.tensor([-1.0], dtype=torch.float64)  # the newline's "feature"
    out = torch.full(image.shape, -1, dtype=torch.long, device=image.device)  # (B, L)
    for b, n in enumerate(tiles_per_example(model, inputs).tolist()):
        index = torch.arange(n * per_tile, dtype=torch.float64).reshape(n, per_tile, 1)
        packed, _ = model.model.pack_image_features(  # type: ignore[operator, union-attr]
            [index], inputs["image_sizes"][b : b + 1], config.vision_feature_select_strategy, marker
        )
        packed = packed[0][:, 0].long().to(image.device)  # (tokens of the image,)
        if packed.shape[0] != int(image[b].sum()):
            raise ValueError(
                f"example {b} has {int(image[b].sum())} image tokens but LLaVA-NeXT packs "
                f"{packed.shape[0]} for its image of size {inputs['image_sizes'][b].tolist()} "
                f"({n} tiles); build the inputs with the model's processor (input_ids, "
                "pixel_values and image_sizes together), one image per example"
            )
        out[b, image[b]] = packed
    return out
