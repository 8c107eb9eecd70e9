"""The relevancy engine: from recorded attention layers to relevancy maps.

:func:`propagate` applies the rules of Chefer et al. ICCV 2021 (Eq. 5-11, :mod:`gae_utils.rules`)
over an ordered list of :class:`~gae_utils.layers.LayerRecord`. It never looks at the architecture:
a ViT, a two-stream co-attention model and an encoder-decoder differ only in the records they
produce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .layers import LayerRecord
from .rules import (
    cross_attention_update,
    patch_merge_rows,
    self_attention_update,
    window_update_rows,
)

__all__ = [
    "attn_bar_of",
    "propagate",
    "propagate_rows",
    "propagate_windowed",
    "layer_steps",
    "initial_maps",
    "Maps",
    "MERGE_REDUCE",
]

MERGE_REDUCE = "mean"
"""How a 2x2 patch merge pools its children's rows of ``R`` (docs/rules.md, "Windows and
merges")."""

Maps = dict[tuple[str, str], Tensor]


def _sizes(layers: Sequence[LayerRecord]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for layer in layers:
        nq, nk = layer.attn_mean.shape[-2:]
        for modality, n in ((layer.query, nq), (layer.key, nk)):
            if sizes.setdefault(modality, n) != n:
                raise ValueError(
                    f"modality {modality!r} has {sizes[modality]} tokens in one layer and {n} in "
                    f"{layer.name!r}"
                )
    return sizes


def initial_maps(sizes: dict[str, int], batch_shape: tuple[int, ...], like: Tensor) -> Maps:
    """``R[x, x] = I`` and ``R[x, y] = 0`` for every ordered pair of modalities (docs/rules.md)."""
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
    layer: LayerRecord,
    attn_bar: Tensor,
    maps: Maps,
    modalities: Sequence[str],
    normalize: bool,
    zero: set[tuple[str, str]],
) -> Maps:
    """The additions one layer makes to the maps (computed from ``maps`` as they are); the blocks
    in ``zero`` are still 0, which Eq. 7 keeps 0 (a vision tower's layers beside an LM's)."""
    s, q = layer.query, layer.key
    if layer.kind == "self":
        if s != q:
            raise ValueError(f"self-attention layer {layer.name!r} reads {q!r} but writes {s!r}")
        # Eq. 6 for R[s, s], Eq. 7 for every R[s, x], x != s.
        return {
            (s, x): self_attention_update(maps[(s, x)], attn_bar) - maps[(s, x)]
            for x in modalities
            if (s, x) not in zero
        }
    if layer.kind == "cross":
        delta_sq, delta_ss = cross_attention_update(
            maps[(s, q)], maps[(s, s)], maps[(q, q)], maps[(q, s)], attn_bar, normalize
        )
        return {(s, q): delta_sq, (s, s): delta_ss}  # Eq. 10, Eq. 11
    raise ValueError(f"unknown layer kind {layer.kind!r} in {layer.name!r}")


def attn_bar_of(layer: LayerRecord) -> Tensor:
    """The layer's Eq. 5 map ``(B, K, Nq, Nk)``; an error naming the cause when it was never
    computed."""
    if layer.attn_bar is None:
        raise ValueError(
            f"layer {layer.name!r} has no Eq. 5 map (attn_bar): run the backward pass first"
        )
    return layer.attn_bar


def check_start_layer(start_layer: int, n_layers: int, owner: str = "the recording") -> None:
    """The one check of ``start_layer``: an index of the ``n_layers`` layers of ``owner``."""
    if not 0 <= start_layer < n_layers:
        raise ValueError(
            f"start_layer={start_layer} is out of range for {owner} ({n_layers} attention layers: "
            f"use 0..{n_layers - 1})"
        )


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
    """Apply the self- and cross-attention rules over the recorded layers, in order; the layers of
    one co-attention group are computed from the maps as they were before the group
    (:func:`layer_steps`).

    Args:
        layers: recorded layers in forward order.
        attn_bars: each layer's aggregated map ``(..., Nq, Nk)``; default: its Eq. 5 map
            ``layer.attn_bar``.
        start_layer: layers with a smaller index are skipped (the authors' CLIP ViT-B/16 option).
        history: if given, a copy of the maps after each applied layer (or group) is appended.
        normalize: apply Eq. 8-9 in cross-attention layers (False: the paper's ablation).

    Returns:
        ``{(a, b): (..., Na, Nb)}`` relevancy maps of every ordered pair of modalities.
    """
    if not layers:
        raise ValueError("no attention layers were recorded")
    if layers[0].windows is not None:
        raise ValueError(
            "these layers attend within windows (Swin): their maps are per window; use "
            "propagate_windowed(layers, maps) (per-layer history is not kept for them)"
        )
    check_start_layer(start_layer, len(layers))
    bars = list(attn_bars) if attn_bars is not None else [attn_bar_of(layer) for layer in layers]
    sizes = _sizes(layers)
    maps = initial_maps(sizes, tuple(bars[0].shape[:-2]), bars[0])
    modalities = list(sizes)
    zero = {key for key in maps if key[0] != key[1]}  # blocks no layer has written yet
    for step in layer_steps(layers, start_layer):
        additions = [_deltas(layers[n], bars[n], maps, modalities, normalize, zero) for n in step]
        for delta in additions:
            for key, value in delta.items():
                maps[key] = maps[key] + value
                zero.discard(key)
        if history is not None:
            history.append({key: value.clone() for key, value in maps.items()})
    return maps


def propagate_rows(layers: Sequence[LayerRecord], rows: Tensor, start_layer: int = 0) -> Tensor:
    """Rows of GAE's ``R`` for a stack of self-attention layers of one modality, without ``R``.

    Eq. 6 gives ``R = (I + Abar_N) ... (I + Abar_1)``, so a row ``v^T R`` is carried from the last
    layer to the first, ``v <- v + v @ Abar_l``: vector-matrix products, and no ``N x N`` map is
    built.

    Args:
        layers: recorded self-attention layers of one modality, in forward order.
        rows: ``(B, K, N)`` the weights of the explained rows (``(B, K, M, N)``: M rows each).
        start_layer: layers with a smaller index are skipped.

    Returns:
        ``(B, K, [M,] N)`` the rows ``v^T R``, equal to ``rows @ propagate(layers)[(m, m)]``.
    """
    if layers[0].windows is not None:
        return _propagate_windowed_rows(layers, rows, start_layer)
    modalities = {(layer.kind, layer.query, layer.key) for layer in layers}
    if len(modalities) != 1 or next(iter(modalities))[0] != "self":
        raise ValueError(
            "row propagation needs self-attention layers of one modality; this recording has "
            f"{sorted(modalities)}: compute the full maps instead"
        )
    check_start_layer(start_layer, len(layers))
    row = rows.unsqueeze(-2) if rows.ndim == 3 else rows  # (B, K, M, N)
    for layer in reversed(layers[start_layer:]):
        row = row + row @ attn_bar_of(layer)  # (B, K, M, N) @ (B, K, N, N)
    return row.squeeze(-2) if rows.ndim == 3 else row  # (B, K, [M,] N)


def _merges(before: tuple[int, int], after: tuple[int, int]) -> list[tuple[int, int]]:
    """The grids of the 2x2 merges that take a stage of grid ``before`` to ``after``."""
    grids, grid = [], before
    while grid != after:
        if grid[0] < after[0] or grid[1] < after[1] or grid == (1, 1):
            raise ValueError(f"no 2x2 patch merges take a {before} token grid to {after}")
        grids.append(grid)
        grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return grids


def _grid(layer: LayerRecord) -> tuple[int, int]:
    return _stage(layer)[0]


def _stage(layer: LayerRecord) -> tuple[tuple[int, int], Tensor]:
    """The stage grid and window index of a windowed record."""
    if layer.grid is None or layer.windows is None:
        raise ValueError(f"layer {layer.name!r} has no window index and stage grid")
    return layer.grid, layer.windows


def propagate_windowed(
    layers: Sequence[LayerRecord],
    window_maps: Sequence[Tensor | None],
    residual: bool = True,
    reduce: str = MERGE_REDUCE,
    rows: Tensor | None = None,
) -> Tensor:
    """``R_S`` of a hierarchical windowed transformer (Swin; method.md), or rows of it.

    ``R_0 = I`` over the first stage's tokens; each layer's per-window map applies block-diagonally
    (Eq. 6, ``R_s <- R_s + Abar R_s``); a 2x2 patch merge wherever the stage grid halves,
    ``R_{s+1} = P R_s``. The product ``R_S = (I + Abar_L) ... P ... (I + Abar_1)`` is evaluated
    from the output side, ``V <- V + V Abar`` and ``V <- V P``
    (:func:`~gae_utils.rules.window_update_rows`, :func:`~gae_utils.rules.patch_merge_rows`),
    starting from ``V = I`` (``N_S`` rows: all of ``R_S``) or the explained rows: the same
    matrix, with ``N_S`` rows per product instead of ``N_s`` (64 times fewer for Swin-T's first
    stage).

    Args:
        layers: windowed records (``LayerRecord.windows``) in forward order.
        window_maps: per layer ``(B, K, nW, Nw, Nw)``, or None to skip the layer (identity).
        residual: ``R + M R`` (GAE) or ``M R`` (rollout, raw attention, Grad-CAM).
        reduce: ``"mean"`` or ``"sum"`` over each parent's four children.
        rows: ``(B, K, M, N_S)`` rows to carry; default the identity, giving ``R_S``.

    Returns:
        ``(B, K, M, N_0)``; ``(B, K, N_S, N_0)`` by default: the last stage's tokens x the first
        stage's.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce={reduce!r}: a patch merge pools with 'mean' or 'sum'")
    grid = _grid(layers[-1])
    if rows is None:
        like = next(m for m in window_maps if m is not None)  # (B, K, nW, Nw, Nw)
        eye = torch.eye(grid[0] * grid[1], dtype=like.dtype, device=like.device)  # (N_S, N_S)
        rows = eye.expand(*like.shape[:2], -1, -1)  # (B, K, N_S, N_S)
    for layer, window_map in zip(reversed(layers), reversed(window_maps)):
        for merged in reversed(_merges(_grid(layer), grid)):
            rows = patch_merge_rows(rows, merged, reduce)  # (B, K, M, 4 N_{s+1})
        grid = _grid(layer)
        if window_map is not None:
            rows = window_update_rows(rows, window_map, _stage(layer)[1], residual)
    return rows


def _propagate_windowed_rows(
    layers: Sequence[LayerRecord], rows: Tensor, start_layer: int = 0
) -> Tensor:
    """GAE's explained rows ``(B, K, N_S) -> (B, K, N_0)`` (:func:`propagate_windowed`)."""
    check_start_layer(start_layer, len(layers))
    bars = [attn_bar_of(layer) if i >= start_layer else None for i, layer in enumerate(layers)]
    return propagate_windowed(layers, bars, rows=rows.unsqueeze(-2)).squeeze(-2)
