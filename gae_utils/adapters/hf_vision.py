"""Hugging Face image encoders and classifiers captured through the attention interface (ViT, DeiT,
Dinov2 with and without registers, BEiT, SigLIP, ViT-MSN, I-JEPA, ...), with no per-architecture
code.

The facts that differ between families are read from the model: the prefix tokens before the patch
grid are the embedding parameters named in :data:`PREFIX_TOKENS` (CLS, DeiT's distillation token,
Dinov2's register tokens), and the row the head reads is :data:`POOLING` (docs/rules.md, "Reading
the answer"): ``"cls"``, ``"cls+dist"`` (DeiT with teacher averages both heads), ``"mean"`` (the
mean of the patch rows: BEiT's ``use_mean_pooling``, SigLIP's classifier, models without a CLS
token), ``"cls+mean"`` (Dinov2's classifier reads CLS concatenated with the patch mean: half each)
and ``"probe"``: SigLIP's attention-pooling head, whose learned probe token attends to every patch
through ``nn.MultiheadAttention``. That head is one more cross-attention layer, probe -> image, so
it is captured and propagated with the cross-attention rule (Eq. 10:
``R[probe, image] = Abar Rbar[image, image]``) and the readout is the probe's row.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import OutputItem
from ..layout import Readout, Segment, TokenLayout
from .base import (
    Adapter,
    AttentionCaptureError,
    AttentionSite,
    UnsupportedModelError,
    check_image_batch,
    check_image_size,
)
from .hf_interface import interface_sites, routes_attention
from .images import hierarchical_reason, pixel_values, windowed_reason
from .seq2seq import mha_eager

__all__ = ["HF_VISION", "POOLING", "PREFIX_TOKENS", "vision_pooling"]

PREFIX_TOKENS = ("cls_token", "class_embedding", "distillation_token", "register_tokens")
"""Embedding parameters (``(1, n, D)``: ``n`` tokens; ``(D,)``: one) before the patch grid (not
``mask_token``)."""

POOLING: dict[str, str] = {
    "CLIPForImageClassification": "mean",
    "MetaClip2ForImageClassification": "mean",
    "DeiTForImageClassificationWithTeacher": "cls+dist",
    "Dinov2ForImageClassification": "cls+mean",
    "Dinov2WithRegistersForImageClassification": "cls+mean",
    "SiglipVisionModel": "probe",
    "Siglip2VisionModel": "probe",
}
"""How a model's head reads the tokens, where it is not the default: ``"mean"`` with
``config.use_mean_pooling`` or without a CLS token, else ``"cls"``."""

_PROBE = AttentionSite(
    "MultiheadAttention", OutputItem(1), kind="cross", query="probe", key="image", graph_base=True
)


def _vision_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, "vision_config", None) or config


def _prefix(model: nn.Module) -> int:
    """Tokens before the patch grid: the sizes of the :data:`PREFIX_TOKENS` parameters."""
    tokens = [p for n, p in model.named_parameters() if n.rpartition(".")[2] in PREFIX_TOKENS]
    return sum(p.shape[-2] if p.ndim > 1 else 1 for p in tokens)


def vision_pooling(model: nn.Module) -> str:
    """The row the head reads (see :data:`POOLING`)."""
    for cls in type(model).__mro__:
        if cls.__name__ in POOLING:
            return POOLING[cls.__name__]
    mean = getattr(_vision_config(model), "use_mean_pooling", False) or _prefix(model) == 0
    return "mean" if mean else "cls"


def _is_image_model(model: nn.Module) -> bool:
    if not type(model).__module__.startswith("transformers."):
        return False
    if getattr(model, "main_input_name", "") != "pixel_values":
        return False
    return "input_ids" not in inspect.signature(model.forward).parameters and routes_attention(
        model
    )


def _sites(model: nn.Module) -> tuple[AttentionSite, ...]:
    probe = (_PROBE,) if vision_pooling(model) == "probe" else ()
    return interface_sites(model, "image", "image") + probe


def _check(model: nn.Module, images: Tensor) -> None:
    reason = hierarchical_reason(model) or windowed_reason(model)  # routed, but not N x N
    if reason is not None:
        raise AttentionCaptureError(reason)
    config = _vision_config(model)
    check_image_batch(images, None, channels=getattr(config, "num_channels", 3))
    size = getattr(config, "image_size", None)
    if size is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no fixed config.image_size (variable-resolution patches, "
            "e.g. SigLIP2 "
            "NaFlex); its patch grid cannot be laid out. Fixed-size image models are served."
        )
    check_image_size(images, size, "config.image_size ")


def _layout(model: nn.Module, images: Tensor) -> TokenLayout:
    patch = _vision_config(model).patch_size
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
    prefix, pooling = _prefix(model), vision_pooling(model)
    image = Segment("image", prefix + grid[0] * grid[1], prefix, grid)
    if pooling == "probe":
        return TokenLayout(
            (image, Segment("probe", 1)), (Readout("image", "probe", "image", (0,)),)
        )
    if (
        pooling == "cls+mean"
    ):  # logit = w_cls . x_cls + w_mean . mean(patches): half the weight on each
        weights = torch.full((images.shape[0], image.n_tokens), 0.5 / image.n_content)  # (B, N)
        weights[:, 0], weights[:, 1:prefix] = 0.5, 0.0  # CLS, then registers (not read)
        return TokenLayout(
            (image,),
            (Readout("image", "image", "image", per_example_rows=True),),
            {"image": weights},
        )
    rows = {"cls": (0,), "cls+dist": (0, 1), "mean": None}[pooling]
    return TokenLayout((image,), (Readout("image", "image", "image", rows),))


HF_VISION = Adapter(
    name="hf-vision",
    model_classes=(),
    accepts=_is_image_model,
    sites=_sites,
    eager=mha_eager,  # per-head weights of an attention-pooling head (the interface: its sites)
    call=lambda model, images: model(pixel_values=images),
    logits=lambda out: getattr(out, "logits", None),
    check=_check,
    layout=_layout,
    prepare=pixel_values,  # a processor's BatchFeature -> its pixel_values
    family="Hugging Face image models routed through the attention interface (ViT, DeiT, Dinov2 "
    "(+registers), "
    "BEiT, SigLIP vision, ...): CLS, mean-pooled, CLS+mean or attention-pooled readouts",
)
