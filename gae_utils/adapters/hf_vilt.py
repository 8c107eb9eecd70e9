"""Hugging Face ViLT: one stream over text tokens and (shuffled) image patches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_image_batch, check_joint, no_switch

__all__ = ["VILT"]


# ViLT feeds its image patches in a random order (``ViltEmbeddings.visual_embed`` draws them with
# ``torch.multinomial``). The adapter runs the model and recomputes the order under the same seed,
# inside ``torch.random.fork_rng`` so that the caller's random state is untouched.
_VILT_SEED = 0


def _vilt_check(model: Any, inputs: Any) -> None:
    check_joint(model, inputs, ("pixel_values",))
    check_image_batch(inputs["pixel_values"], None, channels=model.config.num_channels)
    if inputs["pixel_values"].shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"{inputs['pixel_values'].shape[0]} images for {inputs['input_ids'].shape[0]} questions; "
            "pass one image per question"
        )
    if min(inputs["pixel_values"].shape[-2:]) < model.config.patch_size:
        raise ValueError(
            f"images of {tuple(inputs['pixel_values'].shape[-2:])} are smaller than one patch "
            f"({model.config.patch_size} pixels); resize them with the ViLT processor"
        )


def _vilt_call(model: nn.Module, inputs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_VILT_SEED)
        return model(**inputs)


def _vilt_layout(model: Any, inputs: Any) -> TokenLayout:
    pixels = inputs["pixel_values"]
    mask = inputs.get("pixel_mask")
    mask = (
        torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long, device=pixels.device)
        if mask is None
        else mask
    )
    embeddings = model.vilt.embeddings
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_VILT_SEED)
        _, _, (patch_index, _) = embeddings.visual_embed(pixels, mask, max_image_length=model.config.max_image_length)
    patch = model.config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    positions = patch_index[..., 0] * grid[1] + patch_index[..., 1]  # (B, P) raster index of each image token
    text = Segment("text", inputs["input_ids"].shape[1], 0, stream="joint")
    image = Segment("image", 1 + positions.shape[1], 1, grid, stream="joint", offset=text.n_tokens)
    readouts = (
        Readout("text", "text", "text", (0,), drop_self=True),  # the [CLS] row of the R[t, t] block, [0, 0] zeroed
        Readout("image", "text", "image", (0,)),  # the [CLS] row of the R[t, i] block
    )
    return TokenLayout(
        (Segment("joint", text.n_tokens + image.n_tokens), text, image), readouts, {}, {"image": positions}
    )


VILT = Adapter(
    name="hf-vilt",
    model_classes=("ViltForQuestionAnswering", "ViltForImageAndTextRetrieval"),
    sites=(AttentionSite("ViltSelfAttention", probs="dropout", query="joint", key="joint"),),
    eager=no_switch,
    call=_vilt_call,
    logits=lambda out: out.logits,
    check=_vilt_check,
    layout=_vilt_layout,
    family="Hugging Face ViLT (one stream over text + image patches, read at the text [CLS] row)",
)
