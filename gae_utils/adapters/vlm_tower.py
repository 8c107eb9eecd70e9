"""LLaVA's and PaliGemma's vision towers, carried end to end by :mod:`~gae_utils.adapters.hf_vlm`:
which models have the end-to-end map (:func:`end_to_end_reason`), where their tower is and how
its tokens reach the language model (docs/rules.md, "End to end through a vision tower")."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import AttentionSite
from ..layout import Segment
from ..propagation import MERGE_REDUCE
from .hf_interface import _is_routed, interface_sites
from .hf_vision import _prefix

__all__ = ["FAMILIES", "TOWERS", "end_to_end_reason", "tower_layout", "tower_images", "tower_sites"]


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
    ``model``; None: LLaVA, whose projector reads one tower layer token by token, or PaliGemma,
    whose linear projector reads the tower's last layer token by token."""
    config: Any = model.config
    name = type(model).__name__
    layer = getattr(config, "vision_feature_layer", -1)  # PaliGemma: last_hidden_state
    strategy = getattr(config, "vision_feature_select_strategy", "full")  # PaliGemma: no CLS
    if getattr(config, "model_type", None) not in FAMILIES:
        return (
            f"{name}'s projector ({config.model_type}) is not carried to the vision tower's "
            "patches: only LLaVA's one-token-per-patch projector, PaliGemma's and LLaVA-NeXT's "
            "tiles are (pixel shuffle, patch mergers and other projectors are not handled; "
            "docs/models.md, 'End to end'). Use relevance['image'], the answer's row over the "
            "image tokens"
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


def tower_images(per_example: Tensor) -> Tensor:
    """``(B, n)`` the tower batch index of each example's images (or tiles; ``-1``: a slot it has
    none for), from their number per example ``(B,)``: the model runs them in order, example
    after example."""
    slots = torch.arange(max(int(per_example.max()), 1), device=per_example.device)  # (n,)
    first = (per_example.cumsum(0) - per_example)[:, None]  # (B, 1) index of its first image
    return (first + slots).where(slots < per_example[:, None], -1)  # (B, n)


def tower_layout(
    model: nn.Module, pixels: Tensor, features: Tensor, slots: int
) -> tuple[Segment, tuple[int, int], Tensor, Tensor, Tensor]:
    """The tower's tokens of ``slots`` images (or tiles) per example side by side, ``n N_v``.

    Args:
        features: ``(B, L)`` the projected feature each token is, ``j T + m`` for feature ``m``
            of the example's image ``j`` (``T`` per image, the CLS dropped or not); ``-1``: none
            (text, LLaVA-NeXT's newlines).

    Returns:
        The tower's segment (the images' grids stacked along the height, ``(n h, w)``), the
        image tokens' grid (``(n h / s, w / s)``), the projector's token map ``P``
        ``(B, L, n N_v)``, and the raster positions of the tower tokens ``(B, n N_v)`` and of the
        image tokens ``(B, L)`` on their stacked grids (-1: CLS, text). ``P`` is a selection,
        feature ``j T + m`` reads tower token ``j N_v + m + dropped``, or for a pixel shuffle of
        ``s`` (Idefics3) the mean over the ``s x s`` block of tower tokens it concatenates (a
        grouping, as a patch merge: ``MERGE_REDUCE``).
    """
    prefix, grid, dropped = _tower_tokens(model, pixels)
    s, (h, w) = shuffle(model), grid
    n_v, cells = prefix + h * w, h * w // (s * s)  # tower tokens, features of one image
    image = features >= 0  # (B, L) tokens that are a tower token's feature
    per = features_per_image(model, pixels)
    slot, within = features.div(per, rounding_mode="floor"), features % per  # (B, L)
    if s == 1:
        read = (slot * n_v + within + dropped)[..., None]  # (B, L, 1) tower token read
    else:  # feature (I, J) of the (h/s, w/s) grid reads rows I s.., columns J s.. of (h, w)
        block = torch.arange(s, device=features.device)
        offsets = (block[:, None] * w + block).flatten()  # (s s,)
        corner = (within // (w // s)) * s * w + (within % (w // s)) * s  # (B, L)
        read = (slot * n_v + prefix + corner)[..., None] + offsets  # (B, L, s s)
    weight = (1.0 / read.shape[-1] if MERGE_REDUCE == "mean" else 1.0) * image[..., None]
    select = pixels.new_zeros(*features.shape, slots * n_v, dtype=torch.float32)  # (B, L, n N_v)
    select.scatter_add_(-1, read.clamp(0, slots * n_v - 1), weight.expand_as(read).to(select))
    token = torch.arange(slots * n_v, device=features.device)  # (n N_v,)
    patch = token % n_v - prefix  # index on its image's grid; < 0: CLS
    tower = (token // n_v * h * w + patch).where(patch >= 0, -1).expand(features.shape[0], -1)
    skip = prefix - dropped  # image tokens before the grid (CLS, strategy "full")
    images = (slot * cells + within - skip).where(image & (within >= skip), -1)  # (B, L)
    grids = (slots * h, w), (slots * h // s, w // s)
    return Segment("pixels", slots * n_v, 0, grids[0]), grids[1], select, tower, images


def shuffle(model: nn.Module) -> int:
    """``s`` of a pixel shuffle (Idefics3, SmolVLM: ``scale_factor``), 1 without one."""
    config: Any = model.config
    return config.scale_factor if config.model_type in ("idefics3", "smolvlm") else 1


def features_per_image(model: nn.Module, pixels: Tensor) -> int:
    """The projected features (image tokens) of one image or tile: the tower's tokens read."""
    prefix, grid, dropped = _tower_tokens(model, pixels)
    return (prefix + grid[0] * grid[1] - dropped) // shuffle(model) ** 2


def _tower_tokens(model: nn.Module, pixels: Tensor) -> tuple[int, tuple[int, int], int]:
    """The tower: its prefix tokens, its patch grid, and the tokens the projector drops (the
    first, CLS, with LLaVA's ``vision_feature_select_strategy="default"``)."""
    config: Any = model.config
    patch = config.vision_config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    drop = getattr(config, "vision_feature_select_strategy", "full") == "default"
    return _prefix(_tower(model)), grid, int(drop)
