"""The relevancy engine: from recorded attention layers to relevancy maps.

:func:`propagate` consumes an ordered list of :class:`~gae_utils.recorder.LayerRecord` (each a
self-attention layer of a modality or a cross-attention from one modality to another) and applies
the rules of Chefer et al. ICCV 2021 (Eq. 5-11; see :mod:`gae_utils.rules`). It never looks at the
architecture: a ViT, a two-stream co-attention model and an encoder-decoder differ only in the
records they produce. The baselines of the paper's comparison set are computed from the same
records (:data:`METHODS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .layout import TokenLayout
from .recorder import LayerRecord
from .rules import cross_attention_update, gradcam_row, rollout_step, self_attention_update

__all__ = ["propagate", "layer_steps", "METHODS", "method_names", "compute_maps", "initial_maps"]

Maps = dict[tuple[str, str], Tensor]


def _sizes(layers: Sequence[LayerRecord]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for layer in layers:
        nq, nk = layer.attn_mean.shape[-2:]
        for modality, n in ((layer.query, nq), (layer.key, nk)):
            if sizes.setdefault(modality, n) != n:
                raise ValueError(
                    f"modality {modality!r} has {sizes[modality]} tokens in one layer and {n} in {layer.name!r}"
                )
    return sizes


def initial_maps(sizes: dict[str, int], batch_shape: tuple[int, ...], like: Tensor) -> Maps:
    """``R[x, x] = I`` and ``R[x, y] = 0`` for every ordered pair of modalities (method.md)."""
    maps = {}
    for a, na in sizes.items():
        for b, nb in sizes.items():
            if a == b:
                eye = torch.eye(na, dtype=like.dtype, device=like.device)
                maps[(a, b)] = eye.expand(*batch_shape, na, na).clone()  # (..., Na, Na)
            else:
                maps[(a, b)] = like.new_zeros(*batch_shape, na, nb)  # (..., Na, Nb)
    return maps


def _deltas(
    layer: LayerRecord, attn_bar: Tensor, maps: Maps, modalities: Sequence[str], normalize: bool = True
) -> Maps:
    """The additions one layer makes to the maps (computed from ``maps`` as they are)."""
    s, q = layer.query, layer.key
    if layer.kind == "self":
        if s != q:
            raise ValueError(f"self-attention layer {layer.name!r} reads {q!r} but writes {s!r}")
        # Eq. 6 for R[s, s], Eq. 7 for every R[s, x], x != s.
        return {(s, x): self_attention_update(maps[(s, x)], attn_bar) - maps[(s, x)] for x in modalities}
    if layer.kind == "cross":
        delta_sq, delta_ss = cross_attention_update(
            maps[(s, q)], maps[(s, s)], maps[(q, q)], maps[(q, s)], attn_bar, normalize
        )
        return {(s, q): delta_sq, (s, s): delta_ss}  # Eq. 10, Eq. 11
    raise ValueError(f"unknown layer kind {layer.kind!r} in {layer.name!r}")


def layer_steps(layers: Sequence[LayerRecord], start_layer: int = 0) -> list[range]:
    """The propagation steps from ``start_layer`` on: one layer, or the adjacent layers of one
    co-attention group (same ``group`` id), whose additions are computed from the same maps."""
    steps, i = [], start_layer
    while i < len(layers):
        j = i + 1
        if layers[i].group is not None:
            while j < len(layers) and layers[j].group == layers[i].group:
                j += 1
        steps.append(range(i, j))
        i = j
    return steps


def propagate(
    layers: Sequence[LayerRecord],
    attn_bars: Sequence[Tensor] | None = None,
    start_layer: int = 0,
    history: list[Maps] | None = None,
    normalize: bool = True,
) -> Maps:
    """Apply the self- and cross-attention rules over the recorded layers, in order.

    Layers of one co-attention group (same ``group`` id, adjacent) are applied simultaneously:
    every addition of the group is computed from the maps as they were before the group, then all
    are added (method.md, the LXMERT cross-modality layer).

    Args:
        layers: recorded layers in forward order.
        attn_bars: the aggregated map of each layer, ``(..., Nq, Nk)``; defaults to each layer's
            Eq. 5 map ``layer.cam`` of shape ``(B, K, Nq, Nk)``.
        start_layer: layers with a smaller index are skipped (the authors' CLIP ViT-B/16 option).
        history: if given, a copy of the maps after each applied layer (or group) is appended.
        normalize: apply the residual normalisation (Eq. 8-9) in cross-attention layers; False
            is the paper's ablation.

    Returns:
        ``{(a, b): (..., Na, Nb)}`` relevancy maps of every ordered pair of modalities.
    """
    if not layers:
        raise ValueError("no attention layers were recorded")
    if not 0 <= start_layer < len(layers):
        raise ValueError(
            f"start_layer={start_layer} is out of range for {len(layers)} recorded layers (0..{len(layers) - 1})"
        )
    bars = list(attn_bars) if attn_bars is not None else [layer.cam for layer in layers]
    sizes = _sizes(layers)
    maps = initial_maps(sizes, tuple(bars[0].shape[:-2]), bars[0])
    modalities = list(sizes)
    for step in layer_steps(layers, start_layer):
        additions = [_deltas(layers[n], bars[n], maps, modalities, normalize) for n in step]
        for delta in additions:
            for key, value in delta.items():
                maps[key] = maps[key] + value
        if history is not None:
            history.append({key: value.clone() for key, value in maps.items()})
    return maps


# ----------------------------------------------------------------------------- methods


def _gae(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    return propagate(layers, start_layer=start_layer)


def _gae_no_norm(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Ablation: GAE without the residual normalisation of Eq. 8-9 in cross-attention layers
    (the same as ``gae`` for self-attention-only models)."""
    return propagate(layers, start_layer=start_layer, normalize=False)


def _last_of_each_pair(layers: Sequence[LayerRecord]) -> list[LayerRecord]:
    """The last layer of every (query, key) modality pair, in forward order (a ViT: its last layer)."""
    last = {(layer.query, layer.key): layer for layer in layers}
    return [layer for layer in layers if last[(layer.query, layer.key)] is layer]


def _gae_last_layer(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Ablation "ours without aggregation": only the last layer's ``I + Abar`` (for several
    modalities, the last layer of each (query, key) pair, with the same rules)."""
    return propagate(_last_of_each_pair(layers))


def _targets_shape(layers: Sequence[LayerRecord]) -> int:
    return layers[-1].cam.shape[1] if layers[-1].cam is not None else 1


def _raw_attention(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Last layer's attention averaged over heads (target independent), for each (query, key) pair."""
    k = _targets_shape(layers)
    return {
        (layer.query, layer.key): layer.attn_mean.unsqueeze(1).expand(-1, k, -1, -1)
        for layer in _last_of_each_pair(layers)
    }


def _rollout(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Attention rollout (Abnar & Zuidema 2020) per modality over its self-attention layers.

    Rollout has no rule for cross-attention. For models with cross-attention layers, the maps are
    the propagation rules (Eq. 6-11) applied to the head-averaged attention of every layer, with
    no gradients: rollout's "attention only" idea carried through the bi-modal rules.
    """
    k = _targets_shape(layers)
    if any(layer.kind == "cross" for layer in layers):
        bars = [layer.attn_mean.unsqueeze(1).expand(-1, k, -1, -1) for layer in layers]  # (B, K, Nq, Nk)
        return propagate(layers, bars, start_layer=start_layer)
    maps: Maps = {}
    for modality in dict.fromkeys(layer.query for layer in layers):
        own = [
            layer
            for i, layer in enumerate(layers)
            if i >= start_layer and layer.kind == "self" and layer.query == modality
        ]
        if not own:
            continue
        joint = rollout_step(own[0].attn_mean)  # (B, N, N)
        for layer in own[1:]:
            joint = rollout_step(layer.attn_mean) @ joint  # (B, N, N) @ (B, N, N)
        maps[(modality, modality)] = joint.unsqueeze(1).expand(-1, k, -1, -1)  # (B, K, N, N)
    return maps


def _attn_gradcam(layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int) -> Maps:
    """Attention Grad-CAM on the last layer of each (query, key) pair, every row (the readout picks one)."""
    maps: Maps = {}
    for last in _last_of_each_pair(layers):
        if last.attn is None or last.grad is None:
            raise ValueError(f"attention Grad-CAM needs per-head maps of layer {last.name!r}; they were not kept")
        prefix = layout.segment(last.key).prefix
        attn = last.attn.unsqueeze(1)[..., prefix:]  # (B, 1, H, Nq, Nc)
        grad = last.grad[..., prefix:]  # (B, K, H, Nq, Nc)
        cam = gradcam_row(attn.transpose(-2, -3), grad.transpose(-2, -3))  # (B, K, Nq, Nc)
        pad = cam.new_zeros(*cam.shape[:-1], prefix)  # prefix columns carry no relevance
        maps[(last.query, last.key)] = torch.cat([pad, cam], dim=-1)
    return maps


METHODS: dict[str, Callable[[Sequence[LayerRecord], TokenLayout, int], Maps]] = {
    "gae": _gae,
    "gae_last_layer": _gae_last_layer,
    "raw_attention": _raw_attention,
    "rollout": _rollout,
    "attn_gradcam": _attn_gradcam,
    "gae_no_norm": _gae_no_norm,
}

ABLATIONS = ("gae_no_norm",)  # differ from a listed method only for models with cross-attention


def method_names(ablations: bool = False) -> list[str]:
    """Names of the methods; ``ablations=True`` adds :data:`ABLATIONS`."""
    return [m for m in METHODS if ablations or m not in ABLATIONS]


def compute_maps(method: str, layers: Sequence[LayerRecord], layout: TokenLayout, start_layer: int = 0) -> Maps:
    """Relevancy maps of ``method`` from one recording.

    Args:
        method: one of :data:`METHODS`.
        layers: the recorded layers.
        layout: the token layout (Grad-CAM needs the prefix tokens).
        start_layer: first layer aggregated by ``gae`` and ``rollout``.

    Returns:
        ``{(a, b): (B, K, Na, Nb)}``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {method_names(ablations=True)}")
    maps = METHODS[method](layers, layout, start_layer)
    needed = [(layout.segment(r.rows_of).source, layout.segment(r.columns_of).source) for r in layout.readouts]
    missing = [pair for pair in needed if pair not in maps]
    if missing:
        raise ValueError(f"method {method!r} gives no map for {missing}")
    return maps
