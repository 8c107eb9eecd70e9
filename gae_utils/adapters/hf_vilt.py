"""Hugging Face ViLT: one stream over text tokens and (shuffled) image patches."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capture import ChildOutput
from ..layout import Segment, TokenLayout
from .base import Adapter, AttentionSite, check_image_batch, check_joint, joint_layout, no_switch

__all__ = ["VILT"]


# ViLT feeds its image patches in a random order (``torch.multinomial`` in
# ``ViltEmbeddings.visual_embed``): the
# adapter runs the model and recomputes the order under one seed, inside ``fork_rng`` (the caller's
# state is kept).
_VILT_SEED = 0


def _vilt_check(model: Any, inputs: Any) -> None:
    check_joint(model, inputs, ("pixel_values",))
    pixels, n_questions = inputs["pixel_values"], inputs["input_ids"].shape[0]
    check_image_batch(pixels, None, channels=model.config.num_channels)
    if pixels.shape[0] != n_questions:
        raise ValueError(
            f"{pixels.shape[0]} images for {n_questions} questions; pass one image per question"
        )
    if min(pixels.shape[-2:]) < model.config.patch_size:
        raise ValueError(
            f"images of {tuple(pixels.shape[-2:])} are smaller than one patch "
            f"({model.config.patch_size} pixels); resize them with the ViLT processor"
        )


def _vilt_call(model: nn.Module, inputs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_VILT_SEED)
        return model(**inputs)


def _vilt_layout(model: Any, inputs: Any) -> TokenLayout:
    pixels = inputs["pixel_values"]
    mask = inputs.get("pixel_mask")
    if mask is None:
        mask = torch.ones(
            pixels.shape[0], *pixels.shape[-2:], dtype=torch.long, device=pixels.device
        )  # (B, H, W)
    embeddings = model.vilt.embeddings
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_VILT_SEED)
        _, _, (patch_index, _) = embeddings.visual_embed(
            pixels, mask, max_image_length=model.config.max_image_length
        )
    patch = model.config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    positions = (
        patch_index[..., 0] * grid[1] + patch_index[..., 1]
    )  # (B, P) raster index of each image token
    image = Segment(
        "image", 1 + positions.shape[1], 1, grid
    )  # [CLS] of the image, then its patches
    return joint_layout(
        inputs["input_ids"].shape[1], image, (0,), positions={"image": positions}
    )  # text [CLS] row


VILT = Adapter(
    name="hf-vilt",
    model_classes=("ViltForQuestionAnswering", "ViltForImageAndTextRetrieval"),
    sites=(AttentionSite("ViltSelfAttention", ChildOutput("dropout"), query="joint", key="joint"),),
    eager=no_switch,
    call=_vilt_call,
    logits=lambda out: out.logits,
    check=_vilt_check,
    layout=_vilt_layout,
    family="Hugging Face ViLT (one stream over text + image patches, read at the text [CLS] row)",
)
