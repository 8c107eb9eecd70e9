"""Token layouts: which tokens belong to which modality and how an explanation is read.

A relevancy map ``R[a, b]`` has one row per token of modality ``a`` and one column per token of
modality ``b``. What a user wants is one row of it (the token the model pools, e.g. CLS) over
the *content* tokens of a modality (image patches, words), without prefix tokens (CLS,
distillation, register tokens). A :class:`TokenLayout` holds these facts as data, so that the
engine never branches on the architecture (method.md, "Reading the answer").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["Segment", "Readout", "TokenLayout"]


@dataclass(frozen=True)
class Segment:
    """The tokens of one modality.

    Attributes:
        modality: name used in the relevancy maps, e.g. ``"image"``.
        n_tokens: number of tokens, prefix included.
        prefix: number of leading non-content tokens (CLS, distillation, registers).
        grid: ``(h, w)`` patch grid of the content tokens for image modalities, else ``None``.
    """

    modality: str
    n_tokens: int
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def n_content(self) -> int:
        return self.n_tokens - self.prefix


@dataclass(frozen=True)
class Readout:
    """How to read one relevance vector from the relevancy maps.

    Attributes:
        name: key in ``Explanation.relevance`` (usually the modality of the columns).
        rows_of: modality whose token(s) are explained (the rows of the map).
        columns_of: modality whose content tokens get relevance (the columns).
        rows: indices of the explained rows; several rows are averaged (mean-pooled models,
            DeiT's CLS + distillation tokens). ``None`` means all content rows (average pooling).
            ``"weights"`` means per-example row weights ``TokenLayout.weights[name]`` of shape
            ``(B, Na)`` (a text encoder mean-pooled over its non-padding tokens, CLIP's EOT token),
            or per-(example, target) row weights ``(B, K, Na)`` when each target explains its own
            row (DETR: target k is object query ``q_k``, weights one-hot at ``q_k``).
    """

    name: str
    rows_of: str
    columns_of: str
    rows: tuple[int, ...] | str | None = (0,)
    drop_self: bool = False  # zero the explained token's own column (the authors zero R[t, t][0, 0])


@dataclass(frozen=True)
class TokenLayout:
    """Segments of every modality plus the readouts that turn maps into relevance vectors."""

    segments: tuple[Segment, ...]
    readouts: tuple[Readout, ...]
    weights: dict[str, Tensor] = field(default_factory=dict, compare=False)  # {readout name: (B, [K,] Na)}

    def segment(self, modality: str) -> Segment:
        for seg in self.segments:
            if seg.modality == modality:
                return seg
        raise KeyError(f"no modality {modality!r} in layout; have {[s.modality for s in self.segments]}")

    def only(self, modality: str) -> TokenLayout:
        """The layout of one modality: its segment, its readout, its per-example weights (one tower)."""
        return TokenLayout(
            (self.segment(modality),),
            tuple(r for r in self.readouts if r.name == modality),
            {k: v for k, v in self.weights.items() if k == modality},
        )

    def row_weights(self, readout: Readout, like: Tensor) -> Tensor:
        """Weights of the explained rows: ``(Na,)`` shared by the batch, ``(B, Na)`` per example or
        ``(B, K, Na)`` per example and target."""
        seg = self.segment(readout.rows_of)
        if readout.rows == "weights":
            if readout.name not in self.weights:
                raise ValueError(f"readout {readout.name!r} asks for per-example row weights but the layout has none")
            return self.weights[readout.name].to(like)  # (B, Na)
        rows = list(range(seg.prefix, seg.n_tokens)) if readout.rows is None else list(readout.rows)
        weights = like.new_zeros(seg.n_tokens)  # (Na,)
        weights[rows] = 1.0 / len(rows)
        return weights

    def read(self, maps: dict[tuple[str, str], Tensor]) -> dict[str, Tensor]:
        """Read every relevance vector of the layout.

        Args:
            maps: relevancy maps ``{(a, b): (..., Na, Nb)}``.

        Returns:
            ``{name: (..., n_content)}`` raw relevance of the explained row(s) over the content
            tokens of the column modality.
        """
        out = {}
        for readout in self.readouts:
            full = maps[(readout.rows_of, readout.columns_of)]  # (B, [K,] Na, Nb)
            weights = self.row_weights(readout, full)  # (Na,) or (B, Na)
            if weights.ndim == 3:  # one row per (example, target): full is (B, K, Na, Nb)
                if full.ndim != 4 or full.shape[:2] != weights.shape[:2]:
                    raise ValueError(
                        f"readout {readout.name!r} has row weights for {tuple(weights.shape[:2])} (examples, "
                        f"targets) but the map is {tuple(full.shape)}"
                    )
                weights = weights.unsqueeze(-2)  # (B, K, 1, Na)
            elif weights.ndim == 2:
                weights = weights.reshape(weights.shape[0], *([1] * (full.ndim - 3)), 1, -1)  # (B, [1,] 1, Na)
            else:
                weights = weights[None]  # (1, Na), broadcast over the batch
            row = (weights @ full).squeeze(-2)  # (B, [K,] Nb)
            if readout.drop_self and isinstance(readout.rows, tuple):
                row = row.clone()
                row[..., list(readout.rows)] = 0
            out[readout.name] = row[..., self.segment(readout.columns_of).prefix :]  # (..., n_content)
        return out

    def to_dict(self) -> dict:
        """JSON-ready description (per-example ``weights`` are tensors and are saved separately)."""
        return {
            "segments": [vars(s) for s in self.segments],
            "readouts": [vars(r) for r in self.readouts],
        }

    @classmethod
    def from_dict(cls, data: dict, weights: dict[str, Tensor] | None = None) -> TokenLayout:
        segments = tuple(
            Segment(s["modality"], s["n_tokens"], s["prefix"], tuple(s["grid"]) if s["grid"] else None)
            for s in data["segments"]
        )
        readouts = tuple(
            Readout(
                r["name"], r["rows_of"], r["columns_of"], tuple(r["rows"]) if isinstance(r["rows"], list) else r["rows"]
            )
            for r in data["readouts"]
        )
        return cls(segments, readouts, dict(weights or {}))
