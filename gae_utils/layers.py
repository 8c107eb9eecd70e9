"""What one attention layer leaves behind in one explanation: the data the rules consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import Tensor

__all__ = ["LayerRecord", "last_of_each_pair"]


@dataclass
class LayerRecord:
    """One attention layer's probabilities and, once differentiated, its Eq. 5 maps.

    Attributes:
        name: the attention module's qualified name in the model.
        kind: ``"self"`` or ``"cross"``.
        query: modality of the rows.
        key: modality of the columns.
        group: co-attention group id (layers of one group are applied simultaneously), or None.
        attn_mean: ``(B, Nq, Nk)`` attention probabilities averaged over heads.
        attn_bar: ``(B, K, Nq, Nk)`` Eq. 5 map ``Abar = mean_h (dA * A)^+`` for each of the K
            targets.
        attn: ``(B, H, Nq, Nk)`` per-head probabilities, kept when requested (explorer, Grad-CAM).
        grad: ``(B, K, H, Nq, Nk)`` per-head gradients ``dA``, kept when requested.
        reached: False when no gradient reached the layer (the target does not depend on it).
        windows: ``(nW, Nw)`` for attention within windows (Swin): the raster index in ``grid``
            of each window position (padding: ``h*w``); the maps are then per window,
            ``attn_mean`` ``(B, nW, Nw, Nw)``, ``attn_bar`` ``(B, K, nW, Nw, Nw)``, ``attn``
            ``(B, nW, H, Nw, Nw)``, ``grad`` ``(B, K, nW, H, Nw, Nw)``.
        grid: ``(h, w)`` the token grid of the layer's stage (windowed layers).
    """

    name: str
    kind: str
    query: str
    key: str
    group: str | None
    attn_mean: Tensor
    attn_bar: Tensor | None = None
    attn: Tensor | None = None
    grad: Tensor | None = None
    reached: bool = True
    windows: Tensor | None = None
    grid: tuple[int, int] | None = None

    def with_windows(self, index: Tensor, grid: tuple[int, int]) -> LayerRecord:
        """This record, captured with the windows folded into the batch (``B*nW`` maps), as the
        per-window maps of ``B`` examples (one layer, whatever the number of attention calls)."""
        n_windows = index.shape[0]

        def split(t: Tensor | None) -> Tensor | None:  # (B*nW, ...) -> (B, nW, ...)
            return None if t is None else t.unflatten(0, (-1, n_windows))

        bar, grad = split(self.attn_bar), split(self.grad)
        return replace(
            self,
            attn_mean=self.attn_mean.unflatten(0, (-1, n_windows)),  # (B, nW, Nw, Nw)
            attn_bar=None if bar is None else bar.transpose(1, 2),  # (B, K, nW, Nw, Nw)
            attn=split(self.attn),  # (B, nW, H, Nw, Nw)
            grad=None if grad is None else grad.transpose(1, 2),  # (B, K, nW, H, Nw, Nw)
            windows=index,
            grid=grid,
        )


def last_of_each_pair(layers: Sequence[LayerRecord]) -> list[int]:
    """Indices, in forward order, of the last layer of every (query, key) modality pair (what the
    baselines read)."""
    last = {(layer.query, layer.key): i for i, layer in enumerate(layers)}
    return sorted(last.values())
