"""timm ``VisionTransformer`` (ViT, DeiT with distillation token, register tokens, average pooling),
``Eva`` (EVA-02: rotary positions) and ``Beit`` (relative position bias).

With ``fused_attn`` off the probabilities pass through ``attn_drop``, whose output the recorder
reads.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from ..capture import ChildOutput
from ..layout import Readout, Segment, TokenLayout
from ..targets import Target, class_target
from .base import (
    Adapter,
    AttentionSite,
    UnsupportedModelError,
    check_image_batch,
    check_image_size,
    eager_flags,
)
from .images import pixel_values

__all__ = ["ADAPTER", "timm_eager", "timm_target"]


def timm_eager(model: nn.Module) -> AbstractContextManager[None]:
    """Switch every timm ``fused_attn`` flag off for the block (timm reads it in ``forward``)."""
    return eager_flags(
        [(m, "fused_attn", False) for m in model.modules() if hasattr(m, "fused_attn")]
    )


def _timm_check(model: nn.Module, images: Tensor) -> None:
    check_image_batch(images, getattr(model.patch_embed, "proj", None))
    img_size = getattr(model.patch_embed, "img_size", None)
    dynamic = getattr(model, "dynamic_img_size", False) or getattr(
        model.patch_embed, "dynamic_img_pad", False
    )
    if img_size is not None and not dynamic:
        check_image_size(images, img_size, fix=" or build the model with dynamic_img_size=True")


def _timm_layout(model: Any, images: Tensor) -> TokenLayout:
    patch = model.patch_embed.patch_size
    grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
    prefix = int(model.num_prefix_tokens)
    pool = getattr(model, "global_pool", "token")
    if pool == "token":
        # DeiT distilled averages the CLS and distillation heads' logits: explain both rows.
        rows = (0, 1) if hasattr(model, "head_dist") else (0,)
    elif pool in ("avg", "avgmax", "max"):
        rows = None  # mean of the rows of the pooled (content) tokens
    else:
        raise UnsupportedModelError(
            f"timm global_pool={pool!r} has no relevancy readout; use global_pool='token' or 'avg'."
        )
    seg = Segment("image", prefix + grid[0] * grid[1], prefix, grid)
    return TokenLayout((seg,), (Readout("image", "image", "image", rows),))


def timm_target(model: nn.Module, target: Any) -> Target:
    """A headless timm model (``num_classes=0``) returns features, not logits: only callable
    targets."""
    if getattr(model, "num_classes", None) == 0 and not callable(target):
        raise ValueError(
            f"{type(model).__name__} was built with num_classes=0: its output is a (B, D) feature "
            "vector, not class "
            "logits, so there is no class to explain. Pass target=callable(features) -> (B,) "
            "scores (e.g. "
            "lambda f: f @ direction, or a similarity to a reference embedding), or load the model "
            "with its head."
        )
    return class_target(model, target)


ADAPTER = Adapter(
    name="timm-vit",
    model_classes=(
        "VisionTransformer",
        "Eva",
        "Beit",
    ),  # also VisionTransformerDistilled (DeiT), reg-token ViTs
    sites=(
        AttentionSite("Attention", ChildOutput("attn_drop")),
        AttentionSite("EvaAttention", ChildOutput("attn_drop")),
    ),
    eager=timm_eager,
    call=lambda model, images: model(images),
    logits=lambda out: out,
    check=_timm_check,
    layout=_timm_layout,
    family="timm VisionTransformer, Eva, Beit (vit_*, deit_*, eva02_*, beit*; "
    "distillation/register tokens, avg pool)",
    target=timm_target,
    prepare=pixel_values,  # a processor's BatchFeature -> its pixel_values
)
