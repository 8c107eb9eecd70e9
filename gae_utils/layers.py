"""What one attention layer leaves behind in one explanation: the data the rules consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["LayerRecord", "last_of_each_pair", "place_images"]


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

    def per_example(self, images: Tensor) -> LayerRecord:
        """This record, captured once per image (``N_img`` maps), as block-diagonal maps of the
        ``B`` examples over their images' tokens side by side (:func:`place_images`)."""

        def place(t: Tensor | None) -> Tensor | None:  # (N_img, ...) -> (B, ...)
            return None if t is None else place_images(t, images)

        return replace(
            self,
            attn_mean=place_images(self.attn_mean, images),  # (B, nN, nN)
            attn_bar=place(self.attn_bar),  # (B, K, nN, nN)
            attn=place(self.attn),  # (B, H, nN, nN)
            grad=place(self.grad),  # (B, K, H, nN, nN)
        )

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


def place_images(t: Tensor, images: Tensor) -> Tensor:
    """Maps of a module run once per image, ``(N_img, ..., N, N)``, as block-diagonal maps of the
    examples, ``(B, ..., n N, n N)``: slot ``j`` of example ``b`` holds image ``images[b, j]``
    (``images`` ``(B, n)``; ``-1``: no image, zeros)."""
    n, slots = t.shape[-1], images.shape[1]
    padded = torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # (N_img + 1, ..., N, N); -1: zeros
    picked = padded[images.flatten().to(t.device)].unflatten(0, tuple(images.shape))
    out = t.new_zeros(images.shape[0], *t.shape[1:-2], slots * n, slots * n)  # (B, ..., nN, nN)
    for j in range(slots):
        out[..., j * n : (j + 1) * n, j * n : (j + 1) * n] = picked[:, j]  # (B, ..., N, N)
    return out


def last_of_each_pair(layers: Sequence[LayerRecord]) -> list[int]:
    """Indices, in forward order, of the last layer of every (query, key) modality pair (what the
    baselines read)."""
    last = {(layer.query, layer.key): i for i, layer in enumerate(layers)}
    return sorted(last.values())
