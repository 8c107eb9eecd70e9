"""LLaVA's and PaliGemma's vision towers, carried end to end by :mod:`~gae_utils.adapters.hf_vlm`:
which models have the end-to-end map (:func:`end_to_end_reason`), where their tower is and how
its tokens reach the language model (docs/rules.md, "End to end through a vision tower")."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from ..capture import AttentionSite
from .hf_interface import _is_routed, interface_sites
from .hf_vision import _prefix

__all__ = [
    "FAMILIES",
    "TOWERS",
    "check_whole_images",
    "end_to_end_reason",
    "features_per_image",
    "shuffle",
    "tower_sites",
]


FAMILIES = ("llava", "paligemma", "llava_next", "idefics3", "smolvlm")
"""Models whose projector maps the tower's output tokens one by one to image tokens, or each
``s x s`` block of them (a pixel shuffle) to one."""

TOWERS = ("clip_vision_model", "siglip_vision_model", "idefics3_vision", "smolvlm_vision")
"""Vision towers whose tokens are one fixed grid per image (with or without CLS) in LLaVA, the ones
carried end to end (Pixtral's packs several images of any size into one sequence)."""


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module).rpartition(".")[2]


def _tower(model: nn.Module) -> nn.Module:
    """The vision tower (``model.model.vision_tower``; Idefics3's ``vision_model``)."""
    names = ("vision_tower", "vision_model")
    return next(m for n, m in model.named_modules() if n.rpartition(".")[2] in names)


def end_to_end_reason(model: nn.Module) -> str | None:
    """Why ``relevance["pixels"]`` (the answer carried through the vision tower) is absent for
    ``model``; None: one of :data:`FAMILIES`, whose projector reads one tower layer token by
    token (LLaVA, PaliGemma, LLaVA-NeXT's tiles) or block by block (Idefics3's pixel shuffle)."""
    config: Any = model.config
    name = type(model).__name__
    layer = getattr(config, "vision_feature_layer", -1)  # PaliGemma: last_hidden_state
    strategy = getattr(config, "vision_feature_select_strategy", "full")  # PaliGemma: no CLS
    vision: Any = getattr(config, "vision_config", None)
    if getattr(vision, "spatial_merge_size", None) is not None:  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL
        return (
            f"{name}'s vision tower ({vision.model_type}) packs the images' patches into one "
            "sequence and calls attention once per image (Qwen2.5-VL: per window), which the "
            "capture does not record as one map per layer; its 2x2 patch merger is not carried "
            "(docs/models.md, 'End to end'). Use relevance['image'], the answer's row over the "
            "image tokens"
        )
    if getattr(config, "model_type", None) not in FAMILIES:
        return (
            f"{name}'s projector ({config.model_type}) is not carried to the vision tower's "
            "patches: only LLaVA's one-token-per-patch projector, PaliGemma's, LLaVA-NeXT's tiles "
            "and Idefics3's / SmolVLM's pixel shuffle are (other projectors and patch mergers are "
            "not handled; docs/models.md, 'End to end'). Use relevance['image'], the answer's row "
            "over the image tokens"
        )
    if config.vision_config.model_type not in TOWERS:
        return (
            f"{name}'s vision tower ({config.vision_config.model_type}) is not one fixed patch "
            f"grid per image of {TOWERS}; its end-to-end map is not handled. Use relevance['image']"
        )
    if not isinstance(layer, int) or strategy not in ("default", "full"):
        return (
            f"{name} reads vision_feature_layer={layer!r} with strategy "
            f"{strategy!r}; the end-to-end map needs one tower layer "
            "(an int) read with 'default' or 'full'. Use relevance['image']"
        )
    if _layers_read(model) == 0:
        return f"{name} reads the tower's embeddings (no attention layer). Use relevance['image']"
    if not any(_is_routed(type(m)) for m in _tower(model).modules()):
        return (
            f"{name}'s vision tower does not route its attention through the attention interface, "
            "so its maps cannot be captured. Use relevance['image']"
        )
    return None


def _layers_read(model: nn.Module) -> int:
    """How many tower layers the projector reads through: ``hidden_states[vision_feature_layer]``
    is the output of the first ``n`` layers (``hidden_states[0]``: the embeddings); PaliGemma
    reads ``last_hidden_state``, every layer."""
    config: Any = model.config
    layer = getattr(config, "vision_feature_layer", -1)
    return layer % (config.vision_config.num_hidden_layers + 1)


def tower_sites(model: nn.Module) -> tuple[AttentionSite, ...]:
    """The tower's attention layers up to the one the projector reads (modality ``"pixels"``):
    the later ones run but feed nothing the answer reads (their gradient is 0)."""
    sites = interface_sites(_tower(model), "pixels", "pixels")
    layers = range(_layers_read(model))
    return tuple(replace(s, within=str(i), per_image=True) for s in sites for i in layers)


def shuffle(model: nn.Module) -> int:
    """``s`` of a pixel shuffle (Idefics3, SmolVLM: ``scale_factor``), 1 without one."""
    config: Any = model.config
    return config.scale_factor if config.model_type in ("idefics3", "smolvlm") else 1


def features_per_image(model: nn.Module, pixels: Tensor) -> int:
    """The projected features (image tokens) of one image or tile: the tower's tokens read."""
    prefix, grid, dropped = _tower_tokens(model, pixels)
    return (prefix + grid[0] * grid[1] - dropped) // shuffle(model) ** 2


def check_whole_images(model: nn.Module, pixels: Tensor, counts: Tensor) -> None:
    """LLaVA, PaliGemma, Idefics3, SmolVLM: each example's image tokens (``counts`` ``(B,)``) are
    whole images (or Idefics3's tiles), as many in all as the tower runs."""
    s = shuffle(model)
    expected = features_per_image(model, pixels)
    names = {"paligemma": "PaliGemma", "idefics3": "Idefics3", "smolvlm": "SmolVLM"}
    family = names.get(getattr(model.config, "model_type", ""), "LLaVA")
    images = len(pixels) if s == 1 else int((pixels.flatten(2) != 0).any(-1).sum())  # not padding
    whole = (counts % expected == 0).all() and int((counts // expected).sum()) == images
    if not whole or pixels.ndim != (4 if s == 1 else 5):
        grid = "" if s == 1 else ", a square grid of image tokens per image or tile"
        fix = "" if s == 1 else " (with image splitting or do_image_splitting=False)"
        raise ValueError(
            f"{family} reads {expected} image tokens per image ({tuple(pixels.shape)} pixels"
            f"{grid}), got {counts.tolist()} per example and {images} images for "
            f"{counts.shape[0]} examples; build the inputs with the model's processor{fix}: each "
            "example's image tokens are whole images, as many in all as pixel_values holds"
        )


def _tower_tokens(model: nn.Module, pixels: Tensor) -> tuple[int, tuple[int, int], int]:
    """The tower: its prefix tokens, its patch grid, and the tokens the projector drops (the
    first, CLS, with LLaVA's ``vision_feature_select_strategy="default"``)."""
    config: Any = model.config
    patch = config.vision_config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    drop = getattr(config, "vision_feature_select_strategy", "full") == "default"
    return _prefix(_tower(model)), grid, int(drop)
