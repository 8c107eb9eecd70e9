"""The methods of the paper's comparison set, as one table computed from the same recording.

Each :class:`Method` turns recorded layers into relevancy maps ``{(a, b): (B, K, Na, Nb)}``: GAE
(Chefer et al. ICCV 2021, Eq. 5-11), its ablations and the baselines of Sec. 5, as docs/rules.md
states them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from .layers import LayerRecord, last_of_each_pair
from .layout import TokenLayout
from .propagation import Maps, attn_bar_of, check_start_layer, propagate, propagate_windowed
from .rules import gradcam_row, rollout_step

__all__ = ["Method", "METHODS", "method_names", "check_method", "compute_maps", "method_label"]


def _gae(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    return propagate(layers, start_layer=start_layer)


def _gae_no_norm(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Ablation: GAE without the residual normalisation of Eq. 8-9 in cross-attention layers."""
    return propagate(layers, start_layer=start_layer, normalize=False)


def _last_layers(layers: Sequence[LayerRecord]) -> list[LayerRecord]:
    return [layers[i] for i in last_of_each_pair(layers)]


def _gae_last_layer(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Ablation "ours without aggregation": the last layer of each (query, key) pair only, same
    rules."""
    return propagate(_last_layers(layers))


def _n_targets(layers: Sequence[LayerRecord]) -> int:
    attn_bar = layers[-1].attn_bar
    return attn_bar.shape[1] if attn_bar is not None else 1


def _per_target(attn_mean: Tensor, k: int) -> Tensor:
    """The target-independent ``(B, Nq, Nk)`` map as ``(B, K, Nq, Nk)``."""
    return attn_mean.unsqueeze(1).expand(-1, k, -1, -1)


def _raw_attention(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Last layer's attention averaged over heads (target independent), for each (query, key)
    pair."""
    k = _n_targets(layers)
    return {
        (layer.query, layer.key): _per_target(layer.attn_mean, k) for layer in _last_layers(layers)
    }


def _rollout(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Attention rollout (Abnar & Zuidema 2020) per modality over its self-attention layers; with
    cross-attention layers, Eq. 6-11 on the head-averaged attention, no gradients
    (docs/rules.md)."""
    k = _n_targets(layers)
    if any(layer.kind == "cross" for layer in layers):
        return propagate(
            layers, [_per_target(layer.attn_mean, k) for layer in layers], start_layer=start_layer
        )
    maps: Maps = {}
    for modality in dict.fromkeys(layer.query for layer in layers):
        own = [
            layer
            for layer in layers[start_layer:]
            if layer.kind == "self" and layer.query == modality
        ]
        if not own:
            continue
        joint = rollout_step(own[0].attn_mean)  # (B, N, N)
        for layer in own[1:]:
            joint = rollout_step(layer.attn_mean) @ joint  # (B, N, N) @ (B, N, N)
        maps[(modality, modality)] = _per_target(joint, k)  # (B, K, N, N)
    return maps


def _attn_gradcam(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Attention Grad-CAM on the last layer of each (query, key) pair, every row (the readout picks
    one)."""
    maps: Maps = {}
    for last in _last_layers(layers):
        if last.attn is None or last.grad is None:
            raise ValueError(
                f"attention Grad-CAM needs per-head maps of layer {last.name!r}; they were not kept"
            )
        prefix = layout.segment(last.key).prefix
        attn = last.attn.unsqueeze(1)[..., prefix:]  # (B, 1, H, Nq, Nc)
        grad = last.grad[..., prefix:]  # (B, K, H, Nq, Nc)
        cam = gradcam_row(attn.transpose(-2, -3), grad.transpose(-2, -3))  # (B, K, Nq, Nc)
        pad = cam.new_zeros(*cam.shape[:-1], prefix)  # prefix columns carry no relevance
        maps[(last.query, last.key)] = torch.cat([pad, cam], dim=-1)
    return maps


WindowMaps = list[Tensor | None]  # per layer (B, K, nW, Nw, Nw), None: the layer is skipped


def _only_last(layers: Sequence[LayerRecord], last: Tensor) -> WindowMaps:
    return [None] * (len(layers) - 1) + [last]


def _shared(layer: LayerRecord, maps: Tensor) -> Tensor:
    """Per-window maps ``(..., nW, Nw, Nw)`` with the row of a token held by ``c`` windows divided
    by ``c``: the token outputs the mean of its copies (TimeSformer's CLS, one per frame), so the
    scattered sum is the layer's map. Eq. 5 needs no division: a copy's ``dA`` carries the 1/c."""
    index = cast(Tensor, layer.windows)  # (nW, Nw)
    copies = torch.bincount(index.flatten().cpu()).to(maps)[index]  # (nW, Nw)
    return maps / copies[..., None]


def _window_means(layers: Sequence[LayerRecord]) -> list[Tensor]:
    """Per-window head means ``(B, K, nW, Nw, Nw)`` (target independent, repeated over K)."""
    k = attn_bar_of(layers[-1]).shape[1]
    means = [layer.attn_mean.unsqueeze(1).expand(-1, k, -1, -1, -1) for layer in layers]
    return [_shared(layer, m) for layer, m in zip(layers, means)]


def _gae_windows(layers: Sequence[LayerRecord], start_layer: int) -> WindowMaps:
    """Eq. 5 per window from ``start_layer`` on (no cross-attention: Eq. 8-9 never apply)."""
    return [attn_bar_of(x) if i >= start_layer else None for i, x in enumerate(layers)]


def _rollout_windows(layers: Sequence[LayerRecord], start_layer: int) -> WindowMaps:
    """Rollout's step per window: the block-diagonal step's blocks (its rows stay in a window)."""
    k = attn_bar_of(layers[-1]).shape[1]
    steps = [rollout_step(x.attn_mean.unsqueeze(1).expand(-1, k, -1, -1, -1)) for x in layers]
    return [
        _shared(x, s) if i >= start_layer else None for i, (x, s) in enumerate(zip(layers, steps))
    ]


def _gradcam_windows(layers: Sequence[LayerRecord], start_layer: int) -> WindowMaps:
    """Attention Grad-CAM of every row of the last layer's windows."""
    last = layers[-1]
    if last.attn is None or last.grad is None:
        raise ValueError(f"attention Grad-CAM needs per-head maps of layer {last.name!r}")
    attn = last.attn.unsqueeze(1).transpose(-2, -3)  # (B, 1, nW, Nw, H, Nw): rows first
    cam = gradcam_row(attn, last.grad.transpose(-2, -3))  # (B, K, nW, Nw, Nw)
    return _only_last(layers, _shared(last, cam))


@dataclass(frozen=True)
class Method:
    """One row of the comparison set.

    Attributes:
        name: the key users pass as ``method=``.
        fn: ``fn(layers, layout, start_layer) -> {(a, b): (B, K, Na, Nb)}``.
        label: how figures and tables name it.
        uses_start_layer: aggregates layers from ``start_layer`` on (otherwise the option is
            ignored).
        ablation: differs from a listed method only for some models; left out of default
            comparisons.
        windows: ``windows(layers, start_layer)``: each windowed layer's per-window map (Swin),
            propagated through windows and merges by
            :func:`~gae_utils.propagation.propagate_windowed`; None: no windowed form.
        residual: the windowed maps update ``R + M R`` (GAE) rather than ``M R``.
        tower_norm: a row carried through a vision tower meets Eq. 8-9's ``Rbar_v`` (GAE), else
            the tower's map as it is (docs/rules.md, "End to end through a vision tower").
    """

    name: str
    fn: Callable[[Sequence[LayerRecord], TokenLayout, int], Maps]
    label: str
    uses_start_layer: bool = False
    ablation: bool = False
    windows: Callable[[Sequence[LayerRecord], int], WindowMaps] | None = None
    residual: bool = False
    tower_norm: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "gae",
            _gae,
            "GAE",
            uses_start_layer=True,
            windows=_gae_windows,
            residual=True,
            tower_norm=True,
        ),
        Method(
            "gae_last_layer",
            _gae_last_layer,
            "GAE, last layer only",
            windows=lambda layers, _: _only_last(layers, attn_bar_of(layers[-1])),
            residual=True,
            tower_norm=True,
        ),
        Method(
            "raw_attention",
            _raw_attention,
            "raw attention",
            windows=lambda layers, _: _only_last(layers, _window_means(layers)[-1]),
        ),
        Method("rollout", _rollout, "rollout", uses_start_layer=True, windows=_rollout_windows),
        Method("attn_gradcam", _attn_gradcam, "attention Grad-CAM", windows=_gradcam_windows),
        Method(
            "gae_no_norm",
            _gae_no_norm,
            "GAE without Eq. 8-9",
            uses_start_layer=True,
            ablation=True,
            windows=_gae_windows,
            residual=True,
        ),
    )
}


def method_names(ablations: bool = False) -> list[str]:
    """Names of the methods; ``ablations=True`` adds the ablations."""
    return [name for name, m in METHODS.items() if ablations or not m.ablation]


def check_method(name: str) -> None:
    """Raise naming the methods as :func:`method_names` lists them, ablations apart."""
    if name not in METHODS:
        extra = [n for n in method_names(ablations=True) if n not in method_names()]
        raise ValueError(
            f"unknown method {name!r}; choose one of method_names() = {method_names()}, or an "
            f"ablation of method_names(ablations=True): {extra}"
        )


def method_label(name: str) -> str:
    """The display label of a method (``"random"``, the evaluation's floor, is not a method)."""
    return METHODS[name].label if name in METHODS else name


def compute_maps(
    method: str, layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int = 0
) -> Maps:
    """Relevancy maps ``{(a, b): (B, K, Na, Nb)}`` of ``method`` (one of :data:`METHODS`) from one
    recording.

    ``start_layer`` is ignored by methods without ``uses_start_layer``; ``layout`` names Grad-CAM's
    prefix tokens.
    """
    check_method(method)
    if not layers:
        raise ValueError("no attention layers were recorded")
    check_start_layer(start_layer, len(layers))
    spec = METHODS[method]
    if layers[0].windows is not None:  # Swin: the last stage's rows over the first stage's grid
        if spec.windows is None:
            raise ValueError(
                f"method {method!r} has no windowed form for {layers[0].name!r} (Swin); "
                f"use one of {[n for n, m in METHODS.items() if m.windows is not None]}"
            )
        rows, cols = layout.readouts[0].rows_of, layout.readouts[0].columns_of
        window_maps = spec.windows(layers, start_layer if spec.uses_start_layer else 0)
        return {(rows, cols): propagate_windowed(layers, window_maps, residual=spec.residual)}
    maps = spec.fn(layers, layout, start_layer if spec.uses_start_layer else 0)
    engine = {s.modality: s.engine_modality for s in layout.segments}
    needed = [(engine[r.rows_of], engine[r.through or r.columns_of]) for r in layout.readouts]
    needed += [(engine[r.columns_of],) * 2 for r in layout.readouts if r.through]
    missing = [pair for pair in needed if pair not in maps]
    if missing:
        raise ValueError(f"method {method!r} gives no map for {missing}")
    return maps
