"""Relevancy propagation rules of Generic Attention-model Explainability.

Pure functions of tensors implementing Chefer, Gur & Wolf, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021,
arXiv:2103.15679), Section 3, Eq. 5-11, and the baselines the paper compares against
(docs/rules.md). Every function is batched over any leading dimensions, keeps the dtype and device
of its inputs and never modifies its arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "head_relevance",
    "head_average",
    "self_attention_update",
    "normalize_self_relevancy",
    "cross_attention_update",
    "carry_through_tower",
    "rollout_step",
    "gradcam_row",
    "window_update_rows",
    "patch_merge_rows",
]


def head_relevance(attn: Tensor, grad: Tensor) -> Tensor:
    """Gradient-weighted attention of each head, before the head average of Eq. 5:
    ``(grad * attn)^+``.

    Args:
        attn: ``(..., Nq, Nk)`` attention probabilities of one or more heads.
        grad: gradient of the target with respect to ``attn``, broadcastable to it.
    """
    return (grad * attn).clamp_(min=0)  # (..., Nq, Nk): in place on the fresh product


def head_average(attn: Tensor, grad: Tensor) -> Tensor:
    """Gradient-weighted attention averaged over heads (Eq. 5): ``Abar = E_h[(grad * attn)^+]``.

    Args:
        attn: attention probabilities, ``(..., H, Nq, Nk)``.
        grad: gradient of the target with respect to ``attn``, same shape (leading dimensions
            may broadcast, e.g. K targets' gradients against one ``attn``).

    Returns:
        ``(..., Nq, Nk)`` aggregated map.
    """
    if attn.shape[-3:] != grad.shape[-3:]:
        raise ValueError(
            f"attn {tuple(attn.shape)} and grad {tuple(grad.shape)} must have the same (H, Nq, Nk)"
        )
    torch.broadcast_shapes(attn.shape, grad.shape)
    return head_relevance(attn, grad).mean(dim=-3)  # (..., Nq, Nk)


def self_attention_update(relevancy: Tensor, attn_bar: Tensor) -> Tensor:
    """Self-attention rule of modality ``s`` (Eq. 6 for ``R[s, s]``, Eq. 7 for ``R[s, q]``):
    ``R + Abar @ R``.

    Args:
        relevancy: ``(..., Ns, Nx)`` the map ``R[s, x]`` before the layer.
        attn_bar: ``(..., Ns, Ns)`` aggregated self-attention of modality ``s`` (Eq. 5).

    Returns:
        ``(..., Ns, Nx)`` the map after the layer.
    """
    return relevancy + attn_bar @ relevancy  # (..., Ns, Ns) @ (..., Ns, Nx)


def normalize_self_relevancy(relevancy: Tensor) -> Tensor:
    """Residual normalisation of a self-relevancy map (Eq. 8 and Eq. 9).

    ``Rhat = R - I``; ``Rbar = Rhat / Rhat.sum(-1) + I``; rows of ``Rhat`` summing to zero stay
    identity rows.

    Args:
        relevancy: ``(..., N, N)`` the map ``R[x, x]``.

    Returns:
        ``(..., N, N)`` the normalised map ``Rbar[x, x]``.
    """
    n = relevancy.shape[-1]
    eye = torch.eye(n, dtype=relevancy.dtype, device=relevancy.device)  # (N, N)
    residual = relevancy - eye  # (..., N, N)
    row_sum = residual.sum(dim=-1, keepdim=True)  # (..., N, 1)
    safe = torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)
    return residual / safe + eye


def cross_attention_update(
    r_sq: Tensor, r_ss: Tensor, r_qq: Tensor, r_qs: Tensor, attn_bar: Tensor, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Cross-attention rule, queries from modality ``s``, keys from ``q`` (Eq. 10 and Eq. 11).

    ``R[s, q] += Rbar[s, s]^T @ Abar @ Rbar[q, q]`` (Eq. 10, with ``Rbar`` from Eq. 8-9) and
    ``R[s, s] += Abar @ R[q, s]`` (Eq. 11), both from the maps as they were before the layer.

    Args:
        r_sq: ``(..., Ns, Nq)`` map ``R[s, q]`` before the layer.
        r_ss: ``(..., Ns, Ns)`` map ``R[s, s]``.
        r_qq: ``(..., Nq, Nq)`` map ``R[q, q]``.
        r_qs: ``(..., Nq, Ns)`` map ``R[q, s]``.
        attn_bar: ``(..., Ns, Nq)`` aggregated cross-attention (Eq. 5).
        normalize: apply Eq. 8-9 to ``R[s, s]`` and ``R[q, q]``; False is the paper's ablation
            that uses them as they are.

    Returns:
        The additions ``(delta_sq, delta_ss)``, ``(..., Ns, Nq)`` and ``(..., Ns, Ns)``, which the
        caller adds (the two directions of a co-attention block are computed before either is
        applied).
    """
    r_bar_ss = normalize_self_relevancy(r_ss) if normalize else r_ss  # (..., Ns, Ns)
    r_bar_qq = normalize_self_relevancy(r_qq) if normalize else r_qq  # (..., Nq, Nq)
    delta_sq = (
        r_bar_ss.transpose(-1, -2) @ attn_bar @ r_bar_qq
    )  # (..., Ns, Ns) @ (..., Ns, Nq) @ (..., Nq, Nq)
    delta_ss = attn_bar @ r_qs  # (..., Ns, Nq) @ (..., Nq, Ns)
    return delta_sq, delta_ss


def carry_through_tower(
    row: Tensor, token_map: Tensor, tower_relevance: Tensor, normalize: bool = True
) -> Tensor:
    """An explained row over a language model's image tokens carried to the vision tower's input
    tokens: ``r_pixels = r_img @ P @ Rbar_v`` (docs/rules.md, "End to end through a vision tower").

    Each image token is a function of the tower's output tokens through the projector (``P``); the
    tower's own map ``R_v`` (Eq. 6, from the same target's gradients) carries those to its input
    patches. This is Eq. 10's right-multiplication by the key side's self-relevance ``Rbar[q, q]``,
    normalised by Eq. 8-9; ``normalize=False`` uses ``R_v`` as it is (the paper's ablation).

    Args:
        row: ``(B, K, N_i)`` the explained row over the tokens holding the image tokens.
        token_map: ``(B, N_i, N_v)`` ``P``: how much token ``i`` reads tower output token ``j``.
        tower_relevance: ``(B, K, N_v, N_v)`` the tower's ``R_v`` at the layer the projector reads.

    Returns:
        ``(B, K, N_v)`` the row over the tower's input tokens.
    """
    r_v = normalize_self_relevancy(tower_relevance) if normalize else tower_relevance
    carried = row.unsqueeze(-2) @ token_map.unsqueeze(-3)  # (B, K, 1, N_i) @ (B, 1, N_i, N_v)
    return (carried @ r_v).squeeze(-2)  # (B, K, 1, N_v) @ (B, K, N_v, N_v)


def rollout_step(attn_mean: Tensor) -> Tensor:
    """One layer of attention rollout (Abnar & Zuidema 2020): ``0.5 * A + 0.5 * I``, rows
    renormalised.

    Args:
        attn_mean: ``(..., N, N)`` attention averaged over heads.

    Returns:
        ``(..., N, N)`` row-stochastic matrix; rollout multiplies them, ``joint = step_l @ joint``.
    """
    n = attn_mean.shape[-1]
    eye = torch.eye(n, dtype=attn_mean.dtype, device=attn_mean.device)  # (N, N)
    step = 0.5 * attn_mean + 0.5 * eye  # (..., N, N)
    return step / step.sum(dim=-1, keepdim=True)


def gradcam_row(attn_row: Tensor, grad_row: Tensor) -> Tensor:
    """Attention Grad-CAM on one attention row per head (the paper's ``generate_cam_attn``
    baseline).

    Each head is weighted by the mean of its gradient row; the map is the head mean, clamped at
    zero.

    Args:
        attn_row: ``(..., H, N)`` the explained query's attention over the key tokens to map.
        grad_row: ``(..., H, N)`` its gradient.

    Returns:
        ``(..., N)`` map.
    """
    weight = grad_row.mean(dim=-1, keepdim=True)  # (..., H, 1)
    return (weight * attn_row).mean(dim=-2).clamp(min=0)  # (..., N)


def _windows_of(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``(..., N, D)`` gathered per window ``(..., nW, Nw, D)``; padding (index ``N``) is 0."""
    padded = torch.cat([x, x.new_zeros(*x.shape[:-2], 1, x.shape[-1])], dim=-2)  # (..., N+1, D)
    return padded[..., index.flatten(), :].unflatten(-2, tuple(index.shape))  # (..., nW, Nw, D)


def _scatter_windows(x: Tensor, index: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_windows_of`: ``(..., nW, Nw, D)`` -> ``(..., N, D)``, padding dropped;
    a token in several windows (TimeSformer's CLS in every frame) gets the sum of its copies."""
    flat = x.flatten(-3, -2)  # (..., nW*Nw, D)
    out = flat.new_zeros(*flat.shape[:-2], n + 1, flat.shape[-1])  # (..., N+1, D)
    return out.index_add(-2, index.flatten().to(x.device), flat)[..., :n, :]


def window_update_rows(
    rows: Tensor, window_maps: Tensor, index: Tensor, residual: bool = True
) -> Tensor:
    """Rows ``V`` of a map through one windowed layer (Swin, method.md), from the output side:
    ``V <- V + V Abar`` (Eq. 6, ``R <- R + Abar R``, read by its rows: ``V R`` after the layer is
    ``(V + V Abar)`` times ``R`` before it), with ``Abar`` block-diagonal over the windows: one
    product per window, no dense ``(N, N)`` map.

    Args:
        rows: ``(..., M, N)`` M row vectors over the stage's tokens (raster order of its grid).
        window_maps: ``(..., nW, Nw, Nw)`` each window's map (Eq. 5 ``Abar``, or rollout's step).
        index: ``(nW, Nw)`` raster index of each window position in the stage's grid, the cyclic
            shift and the partition undone; ``N`` marks a padding position.
        residual: ``V + V M`` (Eq. 6); False: ``V M`` (rollout, raw attention, Grad-CAM), where
            a token in no window keeps its own row (TimeSformer's CLS in a temporal layer).

    Returns:
        ``(..., M, N)``.
    """
    windows = _windows_of(rows.transpose(-1, -2), index)  # (..., nW, Nw, M): V^T per window
    update = window_maps.transpose(-1, -2) @ windows  # (..., nW, Nw, Nw) @ (..., nW, Nw, M)
    updated = _scatter_windows(update, index, rows.shape[-1]).transpose(-1, -2)  # (..., M, N)
    if residual:
        return rows + updated
    alone = rows.new_ones(rows.shape[-1] + 1).index_fill(0, index.flatten().to(rows.device), 0)
    return updated + rows * alone[:-1]  # (..., M, N): the tokens of no window pass through


def patch_merge_rows(row: Tensor, grid: tuple[int, int], reduce: str = "mean") -> Tensor:
    """Rows through a 2x2 patch merge ``R_{s+1} = P R_s`` from the output side, ``V_s = V_{s+1}
    P``: each parent pools its four children's rows of ``R``, so each child gets its parent's
    weight (``P``'s entries: 1/4 for ``"mean"``, 1 for ``"sum"``; an odd grid is zero-padded, as
    the models pad their features).

    Args:
        row: ``(..., ceil(h/2) * ceil(w/2))`` weights over the parents.
        grid: ``(h, w)`` the children's grid.

    Returns:
        ``(..., h*w)``.
    """
    h, w = grid
    parents = row.unflatten(-1, ((h + 1) // 2, (w + 1) // 2))  # (..., h'/2, w'/2)
    children = parents.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # (..., h', w')
    scale = 0.25 if reduce == "mean" else 1.0
    return (children[..., :h, :w] * scale).flatten(-2)  # (..., h*w)
