"""Windows and merges (notebook 07): the worked example on a 4 x 4 grid, GAE on a recorded Swin
written out with dense matrices, and the figures that draw the rule.

The rule (docs/rules.md, "Windows and merges"): each windowed layer's per-window map ``Abar_w``
(Eq. 5) is scattered block-diagonally over the stage's tokens, the cyclic shift and the partition
undone; Eq. 6 applies unchanged, ``R <- R + Abar R``; a 2x2 patch merge pools each parent's four
children's rows, ``R <- P R``; the head averages the last stage's tokens, so the explanation is the
mean of the rows of ``R``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from gae_utils.adapters.swin import window_index

from .figures import MATRIX_CMAP, PANEL

__all__ = [
    "scatter_windows",
    "merge_matrix",
    "window_ids",
    "worked_example",
    "dense_gae",
    "plot_windows_and_merge",
]


def scatter_windows(window_maps: Tensor, index: Tensor, n: int) -> Tensor:
    """Per-window maps ``(..., nW, Nw, Nw)`` as one block-diagonal ``(..., N, N)`` map over the
    stage's raster order (``index`` ``(nW, Nw)``, from :func:`window_index`; no padding)."""
    dense = window_maps.new_zeros(*window_maps.shape[:-3], n, n)  # (..., N, N)
    for w, positions in enumerate(index.tolist()):
        rows, cols = torch.tensor(positions)[:, None], torch.tensor(positions)[None, :]
        dense[..., rows, cols] = window_maps[..., w, :, :]  # (..., Nw, Nw) into its block
    return dense


def merge_matrix(grid: tuple[int, int], reduce: str = "mean") -> Tensor:
    """``P`` of a 2x2 patch merge, ``(h*w/4, h*w)``: parent ``(i//2, j//2)`` pools child ``(i, j)``
    with weight 1/4 (``"mean"``) or 1 (``"sum"``)."""
    h, w = grid
    child = torch.arange(h * w)
    parent = (child // w // 2) * (w // 2) + (child % w) // 2  # (h*w,) each child's parent
    P = torch.zeros(h * w // 4, h * w)
    P[parent, child] = 0.25 if reduce == "mean" else 1.0
    return P


def window_ids(grid: tuple[int, int], window: int, shift: int) -> Tensor:
    """``(h, w)``: the window each token of the grid attends in, the model's cyclic shift included."""
    index = window_index(grid, (window, window), (shift, shift))  # (nW, Nw)
    ids = torch.empty(grid[0] * grid[1], dtype=torch.long)
    for w, positions in enumerate(index.tolist()):
        ids[positions] = w
    return ids.view(grid)


def worked_example() -> dict[str, Tensor]:
    """The notebook's example: a 4 x 4 grid (16 tokens), 2 x 2 windows, one merge to 2 x 2.

    Layer 1 (windows unshifted): token 5 attends token 0 with ``Abar = 0.5`` (window 0).
    Layer 2 (shifted by 1, so the centre window holds tokens 5, 6, 9, 10): token 10 attends token 5
    with 0.5. Merge (mean). Layer 3 (stage 2, one window): parent 0 attends parent 3 with 0.4.

    Returns:
        Every step: the per-window maps ``abar1``, ``abar2`` ``(4, 4, 4)`` and ``abar3``
        ``(1, 4, 4)``, their window indices, and ``R1, R2`` ``(16, 16)``, ``P`` ``(4, 16)``,
        ``R3`` ``(4, 16)`` and ``relevance`` ``(16,)`` (the mean of ``R3``'s rows).
    """
    index1 = window_index((4, 4), (2, 2), (0, 0))  # (4, 4): window 0 = tokens 0, 1, 4, 5
    index2 = window_index((4, 4), (2, 2), (1, 1))  # window 0 = tokens 5, 6, 9, 10
    index3 = window_index((2, 2), (2, 2), (0, 0))  # one window: parents 0..3
    abar1, abar2, abar3 = torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), torch.zeros(1, 4, 4)
    abar1[0, 3, 0] = 0.5  # window 0, position 3 (token 5) <- position 0 (token 0)
    abar2[0, 3, 0] = 0.5  # shifted window 0, position 3 (token 10) <- position 0 (token 5)
    abar3[0, 0, 3] = 0.4  # parent 0 <- parent 3
    R0 = torch.eye(16)  # (16, 16)
    R1 = R0 + scatter_windows(abar1, index1, 16) @ R0  # Eq. 6 (16, 16)
    R2 = R1 + scatter_windows(abar2, index2, 16) @ R1  # Eq. 6 (16, 16)
    P = merge_matrix((4, 4))  # (4, 16)
    merged = P @ R2  # (4, 16)
    R3 = merged + scatter_windows(abar3, index3, 4) @ merged  # Eq. 6 (4, 16)
    return {
        "abar1": abar1,
        "abar2": abar2,
        "abar3": abar3,
        "index1": index1,
        "index2": index2,
        "index3": index3,
        "R1": R1,
        "R2": R2,
        "P": P,
        "R3": R3,
        "relevance": R3.mean(0),
    }


def dense_gae(layers: Sequence, reduce: str = "mean") -> Tensor:
    """GAE on a recorded Swin with dense matrices: ``(B, K, N_0)`` on the first stage's grid.

    ``layers``: the recording's windowed layers (``gu.record(..., keep_heads=True).layers``), with
    ``attn`` ``(B, nW, H, Nw, Nw)``, ``grad`` ``(B, K, nW, H, Nw, Nw)``, ``windows`` and ``grid``.
    """
    first = layers[0]
    n0 = first.grid[0] * first.grid[1]
    R = torch.eye(n0).expand(*first.grad.shape[:2], n0, n0)  # (B, K, N_0, N_0), R_0 = I
    grid = first.grid
    for layer in layers:
        while layer.grid != grid:  # a 2x2 merge: R <- P R
            R = merge_matrix(grid, reduce) @ R  # (B, K, N_s / 4, N_0)
            grid = (grid[0] // 2, grid[1] // 2)
        per_window = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(dim=3)  # (B, K, nW, Nw, Nw), Eq. 5
        abar = scatter_windows(per_window, layer.windows.cpu(), grid[0] * grid[1])  # (B, K, N_s, N_s)
        R = R + abar @ R  # Eq. 6
    return R.mean(dim=-2)  # (B, K, N_0): the head averages the last stage's tokens


def _grid_panel(ax, ids: Tensor, title: str, marks: dict[int, str]) -> None:
    """A token grid shaded by window (four greys), token numbers written in the cells."""
    h, w = ids.shape
    ax.imshow(ids.numpy() % 4, cmap="Greys", vmin=-1.5, vmax=4.5)
    for i in range(h):
        for j in range(w):
            token = i * w + j
            label = f"{token}{marks.get(token, '')}"
            ax.text(j, i, label, ha="center", va="center", fontsize=9, color="white" if ids[i, j] % 4 >= 2 else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def plot_windows_and_merge(example: dict[str, Tensor]) -> plt.Figure:
    """The rule on the worked example, five panels: the windows of layer 1 and of the shifted
    layer 2 (tokens shaded by the window they attend in), the scattered block-diagonal ``Abar`` of
    layer 2 over the raster order, the merge ``P``, and the explanation on the 4 x 4 grid."""
    fig, axes = plt.subplots(1, 5, figsize=(PANEL * 5.2, PANEL * 1.25), layout="constrained")
    _grid_panel(axes[0], window_ids((4, 4), 2, 0), "layer 1: 2x2 windows", {5: "←0"})
    _grid_panel(axes[1], window_ids((4, 4), 2, 1), "layer 2: shifted by 1\n(same grey = same window)", {10: "←5"})
    dense = scatter_windows(torch.ones(4, 4, 4), example["index2"], 16)  # (16, 16) which pairs may attend
    dense = dense + scatter_windows(example["abar2"], example["index2"], 16)
    artist = axes[2].imshow(dense.numpy(), cmap=MATRIX_CMAP, vmin=0, vmax=1.5, interpolation="nearest")
    axes[2].set_title("layer 2's windows in raster order\n(1: same shifted window, 1.5: Ā = 0.5)", fontsize=9)
    axes[2].set_xlabel("key token")
    axes[2].set_ylabel("query token")
    fig.colorbar(artist, ax=axes[2], shrink=0.7)
    artist = axes[3].imshow(example["P"].numpy(), cmap=MATRIX_CMAP, vmin=0, vmax=0.25, aspect="auto")
    axes[3].set_title("merge P (4 x 16), mean: 1/4", fontsize=9)
    axes[3].set_xlabel("child token (4 x 4 grid)")
    axes[3].set_ylabel("parent token")
    axes[3].set_yticks(range(4))
    fig.colorbar(artist, ax=axes[3], shrink=0.7)
    relevance = example["relevance"].view(4, 4).numpy()
    artist = axes[4].imshow(relevance, cmap="inferno", vmin=0, vmax=float(relevance.max()))
    for (i, j), v in np.ndenumerate(relevance):
        axes[4].text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white" if v < 0.09 else "black")
    axes[4].set_xticks([])
    axes[4].set_yticks([])
    axes[4].set_title("explanation: mean row of R3\n(raw values)", fontsize=9)
    fig.colorbar(artist, ax=axes[4], shrink=0.7, label="relevance")
    return fig
