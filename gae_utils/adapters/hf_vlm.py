"""Vision-language models whose image tokens sit inside the language model's sequence (LLaVA,
Idefics3, SmolVLM, ...), captured through the attention interface.

The explained token is the next token after each row's last real position ``p``, as for causal LMs
(:mod:`~gae_utils.adapters.hf_causal_lm`). The layers explained are the language model's
self-attention over the whole sequence, image tokens included: ``relevance["text"]`` is row ``p`` of
``R - I`` over the text tokens ``(B, L)`` (0 at padding and at image tokens), ``relevance["image"]``
the same row over the image tokens, put back on their grid (``(B, h * w)``; ``grid_relevance`` gives
``(B, h, w)``). Each image token is one patch (LLaVA's projector maps patch features one by one) or
one block of ``s x s`` patches (Idefics3's pixel shuffle), in raster order, one image per example
(the families carried end to end: several images or tiles, their grids stacked along the height,
zeros where one has fewer).

LLaVA, PaliGemma, LLaVA-NeXT (tiles: :mod:`~gae_utils.adapters.vlm_tiles`), Idefics3 and SmolVLM
(pixel shuffle, image splitting) are also explained end to end: ``relevance["pixels"]``
``(B, n h * w)`` on the tower's input patch grids is that row carried through the projector's
token map and the vision tower's own GAE map, recorded in the same backward pass
(:func:`~gae_utils.rules.carry_through_tower`; docs/rules.md, "End to end through a vision
tower"). Other families' projectors (InternVL's, Qwen2-VL's patch merger, ...) are not carried:
their relevance stops at the image tokens
(:func:`end_to_end_reason`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_joint, no_switch
from .hf_causal_lm import _call, causal_lm_target, last_real_position
from .hf_interface import interface_sites, routes_attention
from .vlm_slots import tower_images, tower_layout
from .vlm_tiles import is_tiled, tile_features, tiles_per_example
from .vlm_tower import (
    _name_of,
    check_whole_images,
    end_to_end_reason,
    features_per_image,
    tower_sites,
)

__all__ = ["HF_VLM", "end_to_end_reason", "image_token_id"]


def image_token_id(model: nn.Module) -> int:
    """The id of the placeholder token the model replaces by image features."""
    config: Any = model.config
    found = getattr(config, "image_token_id", None)
    return int(found if found is not None else config.image_token_index)


def _is_vlm(model: nn.Module) -> bool:
    if not type(model).__module__.startswith("transformers."):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    classes = set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    if not any(cls.__name__ in classes for cls in type(model).__mro__):
        return False
    config: Any = model.config
    placeholder = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    if getattr(config, "is_encoder_decoder", False) or placeholder is None:
        return False  # image tokens must sit in one decoder-only sequence (not Pix2Struct, BLIP)
    decoder = model.get_decoder()  # type: ignore[operator]
    return routes_attention(model, decoder)  # the vision tower is not propagated


def _sites(model: nn.Module) -> tuple[AttentionSite, ...]:
    """The language model's attention layers, then the vision tower's (modality "pixels") for the
    families carried end to end."""
    decoder = model.get_decoder()  # type: ignore[operator]
    name = _name_of(model, decoder)
    sites = tuple(replace(s, within=name) for s in interface_sites(decoder, "text", "text"))
    return sites if end_to_end_reason(model) is not None else sites + tower_sites(model)


def _check(model: nn.Module, inputs: Any) -> None:
    check_joint(model, inputs, ("pixel_values",))
    pixels, end_to_end = inputs["pixel_values"], end_to_end_reason(model) is None
    if end_to_end and is_tiled(model):  # LLaVA-NeXT: (B, tiles, C, H, W), one image per example
        if pixels.ndim != 5 or pixels.shape[0] != inputs["input_ids"].shape[0]:
            raise ValueError(
                f"LLaVA-NeXT is explained with one image per example: pixel_values (B, tiles, C, "
                f"H, W) and image_sizes (B, 2) from its processor, got {tuple(pixels.shape)} for "
                f"{inputs['input_ids'].shape[0]} examples"
            )
        image = inputs["input_ids"] == image_token_id(model)
        tile_features(model, inputs, image, features_per_image(model, pixels))
        return
    if end_to_end:
        counts = (inputs["input_ids"] == image_token_id(model)).sum(dim=1)  # (B,) per example
        return check_whole_images(model, pixels, counts)
    if pixels.ndim == 5 and pixels.shape[1] != 1:
        raise ValueError(
            f"pixel_values {tuple(pixels.shape)} hold {pixels.shape[1]} images (or tiles) per "
            "example; explain one "
            "image per example (Idefics3/SmolVLM processors: do_image_splitting=False)"
        )
    counts = (inputs["input_ids"] == image_token_id(model)).sum(dim=1)  # (B,) per example
    side = math.isqrt(int(counts[0]))
    if (counts != counts[0]).any() or side * side != int(counts[0]) or side == 0:
        raise ValueError(
            "every example needs one image's square grid of image tokens (id "
            f"{image_token_id(model)}), got "
            f"{counts.tolist()} per example; build the inputs with the model's processor, one "
            "image per example"
        )


def _call_vlm(model: nn.Module, inputs: Mapping) -> Any:
    """The model on ``inputs``; the Qwen2-VL family computes its 3-D (M-RoPE) positions from the
    mask and the image grids itself (1-D positions would replace them)."""
    inner = getattr(model, "model", None)
    if hasattr(inner, "get_rope_index") and "position_ids" not in inputs:
        return model(**inputs, use_cache=False)
    return _call(model, inputs)


def _layout(model: nn.Module, inputs: Mapping) -> TokenLayout:
    ids = inputs["input_ids"]
    image = ids == image_token_id(model)  # (B, L)
    count = int(image[0].sum())
    side = math.isqrt(count)
    order = image.long().cumsum(dim=1) - 1  # (B, L) index of each image token among them
    tokens = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # (B, L)
    last = torch.nn.functional.one_hot(last_real_position(inputs), ids.shape[1]).float()  # (B, L)
    readouts: tuple[Readout, ...] = (
        Readout("text", "text", "text", per_example_rows=True, subtract_identity=True),
        Readout("image", "text", "image", per_example_rows=True),
    )
    reason = end_to_end_reason(model)
    if reason is not None:
        segments: tuple[Segment, ...] = (Segment("text", ids.shape[1]),)
        grid, maps, absent = (side, side), {}, {"pixels": reason}
        positions = {"image": order.where(image, -1)}
    else:  # n images per example side by side; P (B, L, n N_v): a selection or a grouping
        slots, pixels = _images(model, inputs)["pixels"].shape[1], inputs["pixel_values"]
        tiles = is_tiled(model)  # LLaVA-NeXT: the image tokens of each tile, from its packing
        per_tile = features_per_image(model, pixels) if tiles else 0
        features = tile_features(model, inputs, image, per_tile) if tiles else order
        features = features.where(image, -1)  # (B, L) the feature each image token is
        tower, grid, select, pixels, at = tower_layout(model, pixels, features, slots)
        segments = (tower, Segment("text", ids.shape[1]))
        maps, absent, positions = {"pixels": select}, {}, {"pixels": pixels, "image": at}
        readouts += (Readout("pixels", "text", "pixels", per_example_rows=True, through="image"),)
    segments += (Segment("image", ids.shape[1], grid=grid, stream="text"),)
    positions["text"] = tokens.where(~image, -1)
    weights = {"text": last, "image": last} | ({} if reason else {"pixels": last})
    return TokenLayout(segments, readouts, weights, positions, maps, absent)


def _images(model: nn.Module, inputs: Mapping) -> dict[str, Tensor]:
    """``{"pixels": (B, n)}``: the tower's batch index of each example's images (-1: none)."""
    if end_to_end_reason(model) is not None:
        return {}
    if is_tiled(model):
        return {"pixels": tower_images(tiles_per_example(model, inputs))}
    counts = (inputs["input_ids"] == image_token_id(model)).sum(dim=1)  # (B,)
    return {"pixels": tower_images(counts // features_per_image(model, inputs["pixel_values"]))}


HF_VLM = Adapter(
    name="hf-vlm",
    model_classes=(),
    accepts=_is_vlm,
    sites=_sites,
    eager=no_switch,
    call=_call_vlm,
    logits=lambda out: out.logits,
    check=_check,
    layout=_layout,
    images=_images,
    family="Hugging Face vision-language models with image tokens in the language model's "
    "sequence, routed "
    "through the attention interface (LLaVA, Idefics3, SmolVLM, ...): the next token over image "
    "and text tokens",
    target=causal_lm_target,
    task="causal_lm",
)
