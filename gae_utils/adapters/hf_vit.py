"""Hugging Face ViT and DeiT image classifiers (``(output, weights)`` from eager attention)."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_image_batch, hf_eager

__all__ = ["VIT", "DEIT", "DEIT_WITH_TEACHER"]


def _hf_check(model: Any, images: Tensor) -> None:
    check_image_batch(images, None, channels=getattr(model.config, "num_channels", 3))
    size = model.config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) != size:
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's config.image_size {size}; "
            f"resize the images to {size}."
        )


def _hf_layout(model: Any, images: Tensor, prefix: int, rows: tuple[int, ...]) -> TokenLayout:
    """``prefix`` leading tokens (CLS, DeiT's distillation token) before the patch grid; ``rows`` read."""
    patch = model.config.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    seg = Segment("image", prefix + grid[0] * grid[1], prefix, grid)
    return TokenLayout((seg,), (Readout("image", "image", "image", rows),))


def _vit_family(name: str, classes: tuple[str, ...], attention: str, prefix: int, rows: tuple[int, ...]) -> Adapter:
    """ViT and DeiT differ only in these facts; the bare encoders (``ViTModel``) have no logits."""
    return Adapter(
        name=name,
        model_classes=classes,
        sites=(AttentionSite(attention, probs=1),),
        eager=hf_eager,
        call=lambda model, images: model(pixel_values=images),
        logits=lambda out: getattr(out, "logits", None),
        check=_hf_check,
        layout=partial(_hf_layout, prefix=prefix, rows=rows),
        family=f"Hugging Face {' / '.join(classes)}",
    )


VIT = _vit_family("hf-vit", ("ViTForImageClassification", "ViTModel"), "ViTAttention", 1, (0,))
# DeiT adds a distillation token after CLS; the teacher variant averages the CLS and distillation heads
DEIT_WITH_TEACHER = _vit_family(
    "hf-deit-teacher", ("DeiTForImageClassificationWithTeacher",), "DeiTAttention", 2, (0, 1)
)
DEIT = _vit_family("hf-deit", ("DeiTForImageClassification", "DeiTModel"), "DeiTAttention", 2, (0,))
