"""Hugging Face DETR: encoder over the backbone's feature grid, decoder over object queries
(Chefer et al. ICCV 2021, Sec. 4). Each detection is explained through its query's class logit.
The attention modules return ``(output, weights)``, with weights on the eager path only.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from ..capture import OutputItem
from ..layout import Readout, Segment, TokenLayout
from ..targets import QueryTarget
from .base import Adapter, AttentionSite, UnsupportedModelError, check_image_batch, eager_flags

__all__ = ["DETR", "detr_class_probabilities", "detr_eager", "detr_grid"]


def detr_eager(model: nn.Module) -> AbstractContextManager[None]:
    """Eager attention for the block, switched on each config DETR's attention modules read at every
    call (``set_attn_implementation`` would also visit the backbone, which refuses SDPA and could
    not switch back)."""
    configs = {
        id(m.config): m.config
        for m in model.modules()
        if type(m).__name__.startswith("Detr")
        and hasattr(m, "config")
        and hasattr(m.config, "_attn_implementation")
    }
    return eager_flags([(config, "_attn_implementation", "eager") for config in configs.values()])


def _detr_pixels(inputs: Any) -> Tensor:
    return inputs["pixel_values"] if isinstance(inputs, Mapping) else inputs


def _detr_call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**{k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")})
    return model(pixel_values=inputs)


def _detr_check(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, Mapping) and "pixel_values" not in inputs:
        raise TypeError(
            "DETR takes images (B, C, H, W) or a dict with 'pixel_values' (and optionally "
            "'pixel_mask')"
        )
    channels = getattr(getattr(model.config, "backbone_config", None), "num_channels", None)
    check_image_batch(
        _detr_pixels(inputs), None, channels=channels or getattr(model.config, "num_channels", 3)
    )


def detr_grid(n_tokens: int, size: tuple[int, int]) -> tuple[int, int]:
    """The backbone's feature grid ``(h, w)`` holding ``n_tokens`` tokens for images of ``size``.

    Strided convolutions (kernel k, padding k // 2, stride 2) map a side n to ceil(n / 2): the grid
    is the first such halving (DETR's backbones downsample by 4 to 64) that has ``n_tokens``."""
    h, w = size
    for _ in range(7):
        if h * w == n_tokens:
            return h, w
        h, w = -(-h // 2), -(-w // 2)
    raise UnsupportedModelError(
        f"cannot place {n_tokens} encoder tokens on a grid for images of size {size}"
    )


def _detr_layout(model: Any, inputs: Any) -> TokenLayout:
    """Before the forward pass only the queries are known; :func:`_detr_layout_of_output` has the
    grid."""
    return TokenLayout((Segment("image", 0), Segment("query", model.config.num_queries)), ())


def _detr_layout_of_output(model: Any, inputs: Any, output: Any) -> TokenLayout:
    """Image tokens on the feature grid (known from the encoder's output) and object queries, each
    target reading its query's row of ``R[query, image]`` (the object's map) and
    ``R[query, query]``."""
    n_image = output.encoder_last_hidden_state.shape[1]
    pixels = _detr_pixels(inputs)  # (B, C, H, W), checked by _detr_check
    grid = detr_grid(n_image, (pixels.shape[-2], pixels.shape[-1]))
    segments = (Segment("image", n_image, 0, grid), Segment("query", model.config.num_queries, 0))
    readouts = (
        Readout("image", "query", "image", per_example_rows=True),
        Readout("query", "query", "query", per_example_rows=True),
    )
    return TokenLayout(segments, readouts)


def detr_class_probabilities(logits: Tensor) -> Tensor:
    """``(B, Q, C + 1)`` logits -> ``(B, Q, C)`` probabilities of the real classes (softmax; the
    last class, "no object", dropped)."""
    return logits.softmax(-1)[..., :-1]


DETR = Adapter(
    name="hf-detr",
    model_classes=("DetrForObjectDetection",),
    sites=(
        AttentionSite(
            "DetrSelfAttention", OutputItem(1), query="image", key="image", within="encoder"
        ),
        AttentionSite(
            "DetrSelfAttention", OutputItem(1), query="query", key="query", within="decoder"
        ),
        AttentionSite(
            "DetrCrossAttention", OutputItem(1), kind="cross", query="query", key="image"
        ),
    ),
    eager=detr_eager,
    call=_detr_call,
    logits=lambda out: out.logits,
    check=_detr_check,
    layout=_detr_layout,
    family="Hugging Face DetrForObjectDetection (encoder over the feature grid, decoder over "
    "object queries)",
    target=lambda model, target: QueryTarget(
        target, detr_class_probabilities, _detr_layout_of_output
    ),
)
