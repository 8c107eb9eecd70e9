"""Real photos that ship with installed packages, prepared for a pretrained timm model.

scikit-image carries a few photographs (``chelsea`` the cat, ``coffee``, ``astronaut``); they let
the pretrained-model cells run without downloading images. Only the model weights need network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PHOTOS", "load_photos", "photo_batch", "imagenet_label"]

PHOTOS = ("chelsea", "coffee", "astronaut")


def load_photos(names: Sequence[str] = PHOTOS, size: int = 224) -> Tensor:
    """Photos from ``skimage.data``, centre-cropped to a square and resized: ``(B, 3, size, size)`` in [0, 1]."""
    from skimage import data

    out = []
    for name in names:
        image = torch.from_numpy(getattr(data, name)()).float() / 255  # (H, W, 3)
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = image[top : top + side, left : left + side].permute(2, 0, 1)[None]  # (1, 3, side, side)
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def photo_batch(model: nn.Module, names: Sequence[str] = PHOTOS) -> tuple[Tensor, Tensor]:
    """``(images in [0, 1], model inputs normalised with the model's pretrained config)``."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    size = config["input_size"][-1]
    images = load_photos(names, size)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    return images, (images - mean) / std


def imagenet_label(index: int) -> str:
    """Human-readable ImageNet-1k class name."""
    from timm.data import ImageNetInfo

    return ImageNetInfo().index_to_description(index)
