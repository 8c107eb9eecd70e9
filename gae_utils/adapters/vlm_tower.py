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

__all__ = ["FAMILIES", "TOWERS", "end_to_end_reason", "tower_sites"]


FAMILIES = ("llava", "paligemma")
"""Models whose projector maps the tower's output tokens one by one to image tokens."""

TOWERS = ("clip_vision_model", "siglip_vision_model")
"""Vision towers whose tokens are one fixed grid per image (with or without CLS) in LLaVA, the ones
carried end to end (Pixtral's packs several images of any size into one sequence)."""


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module).rpartition(".")[2]


def _tower(model: nn.Module) -> nn.Module:
    """The vision tower (``model.model.vision_tower``, LLaVA and PaliGemma)."""
    return next(m for n, m in model.named_modules() if n.rpartition(".")[2] == "vision_tower")


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
            "patches: only LLaVA's one-token-per-patch projector and PaliGemma's are (pixel "
            "shuffle, patch mergers, tiles and other projectors are not handled; docs/models.md, "
            "'End to end'). Use relevance['image'], the answer's row over the image tokens"
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
    return tuple(replace(s, within=str(i)) for s in sites for i in range(_layers_read(model)))


def _tower_tokens(model: nn.Module, pixels: Tensor) -> tuple[int, tuple[int, int], int]:
    """The tower: its prefix tokens, its patch grid, and the tokens the projector drops (the
    first, CLS, with LLaVA's ``vision_feature_select_strategy="default"``)."""
    config: Any = model.config
    patch = config.vision_config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    drop = getattr(config, "vision_feature_select_strategy", "full") == "default"
    return _prefix(_tower(model)), grid, int(drop)
