"""Image inputs of the vision adapters, and the image models GAE cannot explain.

The checks name the fix for each usual mistake (integer pixels, grayscale or channels-last arrays,
a missing batch dimension, another size); a processor's ``BatchFeature`` is read as its
``pixel_values``. Convolutional networks (no attention), windowed-attention models no adapter
serves and hierarchical families whose attention is not a token-by-token map of one stage (pooled
keys, channel attention, ...) are refused with the reason (raised by
:func:`~gae_utils.adapters.find_adapter` or the adapter's check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = [
    "check_image_batch",
    "check_image_size",
    "convolutional_reason",
    "hierarchical_reason",
    "HIERARCHICAL_FAMILIES",
    "pixel_values",
    "windowed_reason",
]


def pixel_values(model: nn.Module, inputs: Any) -> Any:
    """A processor's output (``BatchFeature`` or dict) -> its ``pixel_values``; anything else as
    is."""
    if not isinstance(inputs, Mapping):
        return inputs
    if "pixel_values" not in inputs:
        raise TypeError(
            f"{type(model).__name__} takes images (B, C, H, W) or a processor's output with "
            f"'pixel_values'; got a dict with keys {list(inputs)}"
        )
    return inputs["pixel_values"]


def _layout_hint(images: Tensor, channels: int | None) -> str:
    """How to turn a wrongly laid out image array into ``(B, C, H, W)``, or ``""``."""
    c = channels or 3
    shape = tuple(images.shape)
    if images.ndim == 5 and c in shape[1:3]:
        return (
            "; (B, T, C, H, W) looks like a video, and this is an image model: explain a video "
            "classifier (Hugging Face VideoMAE, ViViT, TimeSformer; docs/models.md, 'Video'), or "
            "one frame at a time as images clips[:, t]"
        )
    if images.ndim == 3 and shape[0] == c:
        return "; add a batch dimension with images[None] for a single image"
    if images.ndim == 3:
        return (
            f"; (B, H, W) grayscale images have no channel dimension: "
            f"images[:, None].expand(-1, {c}, -1, -1)"
        )
    if images.ndim == 4 and shape[-1] == c and shape[1] != c:
        return "; these look channels-last (B, H, W, C): images.permute(0, 3, 1, 2)"
    if images.ndim == 4 and shape[1] == 1 and c != 1:
        return f"; grayscale (B, 1, H, W) images: repeat it: images.expand(-1, {c}, -1, -1)"
    return ""


def check_image_batch(images: Tensor, proj: nn.Module | None, channels: int | None = None) -> None:
    """``images`` must be float ``(B, C, H, W)`` with the model's ``C``, ``B > 0``; the error
    names the conversion."""
    if not isinstance(images, Tensor):
        raise TypeError(f"expected an image tensor (B, C, H, W), got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(
            f"images are {images.dtype} pixels, not floats: convert them to float and normalise "
            "them as the model was trained (its processor's output, or "
            "(images.float() / 255 - mean) / std); gae_utils does not guess the normalisation"
        )
    if channels is None and proj is not None:
        channels = getattr(proj, "in_channels", None)
    if images.ndim != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {tuple(images.shape)}"
            + (_layout_hint(images, channels) or "")
        )
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"expected {channels} channels, got {images.shape[1]} (images of shape "
            f"{tuple(images.shape)})" + _layout_hint(images, channels)
        )


def check_image_size(
    images: Tensor, size: int | tuple[int, int], source: str = "", fix: str = ""
) -> None:
    """Images ``(B, C, H, W)`` of another size than the model's ``size`` (an int: square) get an
    error naming the resize."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) != tuple(size):
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's "
            f"{source}{tuple(size)}; "
            f"resize the images to {tuple(size)}{fix}."
        )


def _names(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


def windowed_reason(model: nn.Module) -> str | None:
    """Why a windowed-attention model no adapter serves (HF Swinv2, a headless SwinModel, ...) is
    refused: what is missing and which Swin classes are explained."""
    if not any(n.startswith("Swin") or "WindowAttention" in n for n in _names(model)):
        return None
    return (
        f"{type(model).__name__} is a hierarchical vision transformer with attention within "
        "windows, but no adapter gives its per-window attention maps and window layout; explained "
        "are timm SwinTransformer/SwinTransformerV2 and Hugging Face SwinForImageClassification "
        "(docs/models.md): load it as one of those, or register an adapter with windows=."
    )


HIERARCHICAL_FAMILIES: dict[str, str] = {
    "PyramidVisionTransformerV2": "keys and values pooled by a strided convolution (PVT v2)",
    "PvtV2": "keys and values pooled by a strided convolution (PVT v2)",
    "Pvt": "keys and values pooled by a strided convolution (PVT)",
    "Twins": "keys sub-sampled by a strided convolution in its global attention",
    "MultiScaleVit": "queries and keys pooled inside the attention (MViTv2)",
    "Hiera": "queries pooled inside mask-unit attention",
    "DaVit": "channel attention (tokens x channels maps) between its window attentions",
    "MaxxVit": "grid attention and convolutional blocks between its attentions",
    "Cvt": "queries, keys and values from convolutions over the token grid",
    "CoaT": "factorised attention over keys and values (no probability map)",
    "Nest": "convolution and pooling between its block attentions",
    "GlobalContextVit": "global queries generated by convolutions",
    "SwinTransformerV2Cr": "a window attention class no adapter reads (WindowMultiHeadAttention)",
    "FocalNet": "focal modulation instead of attention",
}
"""Hierarchical families (model class name prefix) that are refused, and what their attention has
that the Swin rule (per-window ``N x N`` maps, 2x2 merges; docs/rules.md) does not describe."""


def hierarchical_reason(model: nn.Module) -> str | None:
    """Why a hierarchical vision family of :data:`HIERARCHICAL_FAMILIES` is refused (1-2 lines)."""
    name = type(model).__name__
    what = next((w for k, w in HIERARCHICAL_FAMILIES.items() if name.startswith(k)), None)
    if what is None:
        return None
    return (
        f"{name} is a hierarchical vision transformer with {what}, which the Swin rule (per-window "
        "maps, 2x2 merges) does not describe. Explained hierarchical models: timm "
        "SwinTransformer/SwinTransformerV2, Hugging Face SwinForImageClassification."
    )


def convolutional_reason(model: nn.Module) -> str | None:
    """Why a convolutional network (ConvNeXt, ResNet, ...) is refused: it has no attention."""
    convs = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    if not convs or any("Attention" in n or "Attn" in n for n in _names(model)):
        return None
    return (
        f"{type(model).__name__} is a convolutional network: it has no attention layers, so GAE, "
        "which propagates relevance through attention maps, does not apply. Use a Grad-CAM-style "
        "method on its last convolutional stage (e.g. pytorch-grad-cam's GradCAM)."
    )
