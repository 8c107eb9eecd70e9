"""What one attention layer leaves behind in one explanation: the data the rules consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def last_of_each_pair(layers: Sequence[LayerRecord]) -> list[int]:
    """Indices, in forward order, of the last layer of every (query, key) modality pair (what the
    baselines read)."""
    last = {(layer.query, layer.key): i for i, layer in enumerate(layers)}
    return sorted(last.values())
