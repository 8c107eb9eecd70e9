"""Hugging Face video classifiers with global attention over tubelets: VideoMAE and ViViT, captured
through the attention interface like the image models (:mod:`.hf_vision`).

A clip ``(B, T, C, H, W)`` (what each family's processor gives) is cut by a 3-D convolution into
tubelets of ``t`` frames x ``p x p`` pixels, read in raster order of the ``(T', h, w)`` grid
(``T' = T / t``) after the prefix (ViViT's CLS; VideoMAE has none). Every layer attends over all
tubelets, so Eq. 5-6 apply as for a ViT and the relevance ``"video"`` is ``(B, T' * h * w)`` on
that grid (docs/rules.md, "Video"). The readout is the row the head reads (:data:`VIDEO_POOLING`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, no_switch
from .hf_interface import interface_sites, routes_attention
from .hf_vision import _prefix
from .images import pixel_values

__all__ = [
    "HF_VIDEO",
    "VIDEO_POOLING",
    "check_video_batch",
    "video_grid",
    "video_pooling",
    "video_reason",
]

VIDEO_POOLING: dict[str, str] = {
    "VivitForVideoClassification": "cls",  # classifier(sequence_output[:, 0])
    "VideoMAEForVideoClassification": "mean",  # fc_norm(mean of the tubelets); see video_pooling
}
"""Video classes served and the row their head reads: ``"cls"`` (token 0, the CLS), ``"mean"``
(the mean of the tubelet rows) or ``"first"`` (token 0, the first tubelet: VideoMAE built with
``use_mean_pooling=False`` has no CLS and reads it)."""


def video_pooling(model: nn.Module) -> str:
    """The row the head of ``model`` reads (see :data:`VIDEO_POOLING`)."""
    names = [c.__name__ for c in type(model).__mro__ if c.__name__ in VIDEO_POOLING]
    pooling = VIDEO_POOLING[names[0]]
    if pooling == "mean" and not getattr(model.config, "use_mean_pooling", True):
        return "first"
    return pooling


def _tubelet(config: Any) -> tuple[int, int, int]:
    """``(t, ph, pw)``: frames and pixels of one tubelet (ViViT: a triple; VideoMAE: an int beside
    ``patch_size``)."""
    tubelet = config.tubelet_size
    if isinstance(tubelet, int):
        patch = config.patch_size
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        return int(tubelet), int(ph), int(pw)
    return int(tubelet[0]), int(tubelet[1]), int(tubelet[2])


def video_grid(config: Any, clips: Tensor) -> tuple[int, int, int]:
    """``(T', h, w)`` the tubelet grid of clips ``(B, T, C, H, W)``."""
    t, ph, pw = _tubelet(config)
    return clips.shape[1] // t, clips.shape[-2] // ph, clips.shape[-1] // pw


def check_video_batch(model: nn.Module, clips: Any, frames: int, size: Any, channels: int) -> None:
    """``clips`` must be float ``(B, T, C, H, W)`` with the model's ``T``, ``C`` and size; the error
    names the conversion."""
    name = type(model).__name__
    if not isinstance(clips, Tensor) or not clips.dtype.is_floating_point:
        raise TypeError(
            f"{name} takes float clips (B, T, C, H, W) or its processor's output with "
            f"'pixel_values'; got {type(clips).__name__} {getattr(clips, 'dtype', '')}: convert "
            "the frames to float and normalise them as the processor does"
        )
    shape, hint = tuple(clips.shape), ""
    if clips.ndim == 4 and shape[1] == channels:
        hint = "; for one clip (T, C, H, W) add a batch dimension with clip[None]"
    elif clips.ndim == 5 and shape[1] == channels and shape[2] != channels:
        hint = "; these look channels-first (B, C, T, H, W): clips.permute(0, 2, 1, 3, 4)"
    elif clips.ndim == 5 and shape[-1] == channels:
        hint = "; these look channels-last (B, T, H, W, C): clips.permute(0, 1, 4, 2, 3)"
    if clips.ndim != 5 or shape[2] != channels:
        raise ValueError(
            f"{name} takes clips of shape (B, T, C, H, W) with C={channels}, got {shape}{hint}"
        )
    size = (size, size) if isinstance(size, int) else tuple(size)
    if shape[1] != frames or shape[-2:] != size:
        raise ValueError(
            f"{name} was built for clips of {frames} frames of {size} pixels (config.num_frames, "
            f"config.image_size), got {shape[1]} frames of {shape[-2:]}: sample {frames} frames "
            f"and resize them to {size} (the model's processor does both)"
        )


def _check(model: nn.Module, clips: Any) -> None:
    config: Any = model.config
    check_video_batch(model, clips, config.num_frames, config.image_size, config.num_channels)


def _layout(model: nn.Module, clips: Tensor) -> TokenLayout:
    grid, prefix = video_grid(model.config, clips), _prefix(model)
    video = Segment("video", prefix + grid[0] * grid[1] * grid[2], prefix, grid)
    rows = {"cls": (0,), "first": (0,), "mean": None}[video_pooling(model)]
    return TokenLayout((video,), (Readout("video", "video", "video", rows),))


VIDEO_FAMILIES: dict[str, str] = {
    "VJEPA2": "an attentive pooler (learned queries cross-attending the tubelets) as its head",
    "VideoPrism": "factorised spatial then temporal encoders and an attention-pooling head",
}
"""Video families (class name prefix) that are refused, and what they have that no adapter reads."""


def video_reason(model: nn.Module) -> str | None:
    """Why a video model no adapter serves is refused: what is missing, and what is explained."""
    config, name = getattr(model, "config", None), type(model).__name__
    frames = any(hasattr(config, k) for k in ("num_frames", "frames_per_clip", "tubelet_size"))
    if "Video" not in name or not frames:
        return None
    what = next((w for k, w in VIDEO_FAMILIES.items() if name.startswith(k)), "its own layout")
    return (
        f"{name} is a video model with {what}, but no adapter lays out its space-time tokens and "
        "reads its head. Explained video classifiers: VivitForVideoClassification, "
        "VideoMAEForVideoClassification, TimesformerForVideoClassification (docs/models.md, "
        "'Video'); register an adapter giving its sites, (T', h, w) layout and readout."
    )


def _is_video_model(model: nn.Module) -> bool:
    names = {c.__name__ for c in type(model).__mro__}
    return bool(names & set(VIDEO_POOLING)) and routes_attention(model)


HF_VIDEO = Adapter(
    name="hf-video",
    model_classes=(),
    accepts=_is_video_model,
    sites=lambda model: interface_sites(model, "video", "video"),
    eager=no_switch,  # the recorder routes the attention interface through its capture
    call=lambda model, clips: model(pixel_values=clips),
    logits=lambda out: getattr(out, "logits", None),
    check=_check,
    layout=_layout,
    prepare=pixel_values,  # a processor's BatchFeature -> its pixel_values
    family="Hugging Face video classifiers with global attention over tubelets "
    "(VivitForVideoClassification: CLS; VideoMAEForVideoClassification: tubelet mean, or the "
    "first tubelet without use_mean_pooling)",
)
