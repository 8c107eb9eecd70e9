"""Token layouts: which tokens belong to which modality and how an explanation is read.

An explanation is one row of ``R[a, b]`` (the token the model pools, e.g. CLS) over the *content*
tokens of modality ``b`` (patches, words; no CLS, distillation or register tokens). A
:class:`TokenLayout` holds these facts as data (docs/rules.md, "Reading the explanation").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Segment", "Readout", "TokenLayout"]

Carry = Callable[[Tensor, Tensor, Tensor], Tensor]  # (row, token map, tower map) -> row


@dataclass(frozen=True)
class Segment:
    """The tokens of one modality.

    Attributes:
        modality: name used in the relevancy maps, e.g. ``"image"``.
        n_tokens: number of tokens, prefix included.
        prefix: number of leading non-content tokens (CLS, distillation, registers).
        grid: ``(h, w)`` patch grid of the content tokens for image modalities, ``(T', h, w)``
            tubelet grid for video, else ``None``.
        stream: the engine modality whose maps hold these tokens when the segment is a view of a
            joint stream (ViLT, VisualBERT: text and image tokens in one sequence, the engine
            modality ``"joint"``); ``None``: the segment is itself an engine modality.
        offset: index of the segment's first token in ``stream``.
    """

    modality: str
    n_tokens: int
    prefix: int = 0
    grid: tuple[int, ...] | None = None
    stream: str | None = None
    offset: int = 0

    @property
    def engine_modality(self) -> str:
        """The engine modality whose maps hold this segment's tokens."""
        return self.stream or self.modality

    @property
    def n_content(self) -> int:
        return self.n_tokens - self.prefix

    @property
    def span(self) -> slice:
        """The segment's tokens inside its engine modality."""
        return slice(self.offset, self.offset + self.n_tokens)


@dataclass(frozen=True)
class Readout:
    """How to read one relevance vector from the relevancy maps.

    Attributes:
        name: key in ``Explanation.relevance`` (usually the modality of the columns).
        rows_of: modality whose token(s) are explained (the rows of the map).
        columns_of: modality whose content tokens get relevance (the columns).
        rows: indices of the explained rows, averaged (DeiT's CLS + distillation tokens); ``None``:
            all content rows (average pooling). None with ``per_example_rows``.
        per_example_rows: the rows are weighted by ``TokenLayout.weights[name]``, ``(B, Na)`` per
            example (mean over the real tokens, CLIP's EOT token) or ``(B, K, Na)`` per example and
            target (a generated token's step, a DETR object query).
        drop_self: zero the explained token's own column (the authors zero ``R[t, t][0, 0]``).
        subtract_identity: read the row of ``R - I``: what the layers added (decoder-only LMs).
        through: the row is read over this segment's tokens, carried by the layout's
            ``token_maps[name]`` into ``columns_of`` and right-multiplied by its ``R[b, b]``
            (a vision tower feeding a language model: :func:`~gae_utils.rules.carry_through_tower`).
    """

    name: str
    rows_of: str
    columns_of: str
    rows: tuple[int, ...] | None = (0,)
    per_example_rows: bool = False
    drop_self: bool = False
    subtract_identity: bool = False
    through: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rows, str):
            raise TypeError(
                f"Readout({self.name!r}) got rows={self.rows!r}; pass row indices, None (every "
                "content row) or per_example_rows=True for the layout's per-example row weights."
            )
        if self.per_example_rows:  # the layout's weights say which rows: no indices kept
            object.__setattr__(self, "rows", None)


@dataclass(frozen=True)
class TokenLayout:
    """Segments of every modality plus the readouts that turn maps into relevance vectors.

    Attributes:
        segments: the engine modalities first (the first recorded layer's first), then any views of
            a joint stream.
        readouts: how each relevance vector is read.
        weights: per-example row weights ``{readout name: (B, [K,] Na)}`` for ``per_example_rows``.
        positions: ``{modality: (B, n_content)}`` raster index on the segment's grid of each content
            token that reaches the model in another order (ViLT shuffles its patches); ``-1``: not
            this segment's.
        token_maps: ``{readout name: (B, N_through, N_b)}`` the projector's token map ``P`` of a
            readout read ``through`` a segment.
        absent: ``{name: why}`` relevance this model cannot give, named in the error asking for it.
    """

    segments: tuple[Segment, ...]
    readouts: tuple[Readout, ...]
    # {readout name: (B, [K,] Na)}
    weights: dict[str, Tensor] = field(default_factory=dict, compare=False)
    # {modality: (B, n_content)}
    positions: dict[str, Tensor] = field(default_factory=dict, compare=False)
    token_maps: dict[str, Tensor] = field(default_factory=dict, compare=False)
    absent: dict[str, str] = field(default_factory=dict, compare=False)

    def segment(self, modality: str) -> Segment:
        for seg in self.segments:
            if seg.modality == modality:
                return seg
        raise KeyError(
            f"no modality {modality!r} in layout; have {[s.modality for s in self.segments]}"
        )

    def only(self, modality: str) -> TokenLayout:
        """The layout of one modality: its segment, its readout, its per-example weights (one
        tower)."""
        return TokenLayout(
            (self.segment(modality),),
            tuple(r for r in self.readouts if r.name == modality),
            {k: v for k, v in self.weights.items() if k == modality},
            {k: v for k, v in self.positions.items() if k == modality},
        )

    def row_weights(self, readout: Readout, like: Tensor) -> Tensor:
        """Weights of the explained rows: ``(Na,)`` shared by the batch, ``(B, Na)`` per example or
        ``(B, K, Na)`` per example and target."""
        seg = self.segment(readout.rows_of)
        if readout.per_example_rows:
            if readout.name not in self.weights:
                raise ValueError(
                    f"readout {readout.name!r} asks for per-example row weights but the layout has "
                    f"none; pass TokenLayout(..., weights={{{readout.name!r}: (B, Na) weights}})"
                )
            return self.weights[readout.name].to(like)  # (B, Na) or (B, K, Na)
        rows = list(range(seg.prefix, seg.n_tokens)) if readout.rows is None else list(readout.rows)
        weights = like.new_zeros(seg.n_tokens)  # (Na,)
        weights[rows] = 1.0 / len(rows)
        return weights

    def read(
        self, maps: dict[tuple[str, str], Tensor], carry: Carry | None = None
    ) -> dict[str, Tensor]:
        """Every relevance vector ``{name: (..., n_content)}`` of the layout from maps
        ``{(a, b): (..., Na, Nb)}``; ``carry``: the rule of a ``through`` readout
        (:func:`~gae_utils.rules.carry_through_tower`)."""
        out = {}
        for readout in self.readouts:
            rows, cols = self.segment(readout.rows_of), self.segment(readout.columns_of)
            via = self.segment(readout.through) if readout.through else cols
            full = maps[rows.engine_modality, via.engine_modality]  # the engine modalities' map
            full = full[..., rows.span, via.span]  # (B, [K,] Na, Nb)
            weights = self.row_weights(readout, full)  # (Na,), (B, Na) or (B, K, Na)
            if weights.ndim == 3:  # one row per target: needs maps with a target dimension
                if full.ndim != 4 or full.shape[1] != weights.shape[1]:
                    raise ValueError(
                        f"readout {readout.name!r} has row weights for {weights.shape[1]} targets "
                        f"but the map has shape {tuple(full.shape)}; expected "
                        f"(B, {weights.shape[1]}, Na, Nb)"
                    )
                weights = weights.unsqueeze(-2)  # (B, K, 1, Na)
            elif weights.ndim == 2:
                # (B, Na) -> (B, [1,] 1, Na)
                weights = weights.reshape(weights.shape[0], *[1] * (full.ndim - 3), 1, -1)
            else:
                weights = weights[None]  # (1, Na), broadcast over the batch
            row = (weights @ full).squeeze(-2)  # (B, [K,] Nb)
            if readout.through:  # (B, K, N_via) -> (B, K, Nb)
                tower = maps[cols.engine_modality, cols.engine_modality][..., cols.span, cols.span]
                row = self._carry(readout, row, tower, carry)
            out[readout.name] = self._finish(readout, row, weights)
        return out

    def _carry(self, readout: Readout, row: Tensor, tower: Tensor, carry: Carry | None) -> Tensor:
        """``row`` ``(B, K, N_via)`` through the token map and ``tower`` ``(B, K, Nb, Nb)``."""
        if carry is None:
            raise ValueError(
                f"readout {readout.name!r} is read through {readout.through!r}; pass its rule, "
                "carry=gae_utils.rules.carry_through_tower"
            )
        return carry(row, self.token_maps[readout.name].to(row), tower)  # (B, K, Nb)

    def read_rows(
        self,
        propagate_row: Callable[[str, Tensor], Tensor],
        like: Tensor,
        carry: Carry | None = None,
        across: bool = False,
    ) -> dict[str, Tensor]:
        """What :meth:`read` gives, without full maps.

        ``propagate_row(engine modality, v (B, K, [M,] N))`` computes ``v^T R``
        (:func:`~gae_utils.propagation.propagate_rows`); ``like`` ``(B, K, ...)`` gives the sizes;
        ``across``: ``propagate_row`` maps the rows' modality to the columns' (Swin's stages).
        """
        batch, k = like.shape[:2]
        out = {}
        for readout in self.readouts:
            rows, cols = self.segment(readout.rows_of), self.segment(readout.columns_of)
            via = self.segment(readout.through) if readout.through else cols
            if rows.engine_modality != via.engine_modality and not across:
                raise ValueError(
                    f"readout {readout.name!r} reads across modalities; it needs the full maps"
                )
            weights = self.row_weights(readout, like)  # (Na,), (B, Na) or (B, K, Na)
            # (Na,) shared by the batch or (B, Na) per example: the same row for every target
            if weights.ndim < 3:
                weights = weights[None, None] if weights.ndim == 1 else weights[:, None]
            weights = weights.expand(batch, k, -1)  # (B, K, Na)
            n = self.segment(rows.engine_modality).n_tokens
            start = like.new_zeros(batch, k, n)  # (B, K, N): the explained rows in the stream
            start[..., rows.span] = weights
            row = propagate_row(rows.engine_modality, start)[..., via.span]  # (B, K, Nb)
            if readout.through:  # the tower's full map: rows of I times R (the tower is short)
                n = self.segment(cols.engine_modality).n_tokens
                eye = torch.eye(n, dtype=like.dtype, device=like.device).expand(batch, k, n, n)
                tower = propagate_row(cols.engine_modality, eye)[..., cols.span, cols.span]
                row = self._carry(readout, row, tower, carry)
            out[readout.name] = self._finish(readout, row, weights.unsqueeze(-2))
        return out

    def _finish(self, readout: Readout, row: Tensor, weights: Tensor) -> Tensor:
        """Explained row ``(B, [K,] Nb)`` -> relevance over the content tokens (``weights``
        ``(..., 1, Na)``)."""
        cols = self.segment(readout.columns_of)
        if readout.drop_self and readout.rows_of == readout.columns_of:
            if readout.per_example_rows:  # per-example rows: zero their columns
                row = row * (weights.squeeze(-2) == 0)
            elif readout.rows is not None:
                row = row.clone()
                row[..., list(readout.rows)] = 0
        if readout.subtract_identity and readout.rows_of == readout.columns_of:
            row = row - weights.squeeze(-2)  # e_p^T (R - I) = e_p^T R - e_p
        row = row[..., cols.prefix :]  # (B, [K,] n_content) in token order
        if readout.columns_of in self.positions:
            row = self._to_grid_order(row, self.positions[readout.columns_of], cols)
        return row

    @staticmethod
    def _to_grid_order(row: Tensor, positions: Tensor, seg: Segment) -> Tensor:
        """Move token-order relevance ``(B, [K,] n)`` to raster order of ``seg.grid`` (summing
        duplicates)."""
        cells = math.prod(seg.grid) if seg.grid else seg.n_content
        positions = positions.to(row.device)  # (B, n)
        index = positions.where(positions >= 0, cells)  # -1 (other tokens): dropped
        # (B, n) -> (B, [K,] n)
        index = index.reshape(positions.shape[0], *[1] * (row.ndim - 2), -1).expand_as(row)
        return row.new_zeros(*row.shape[:-1], cells + 1).scatter_add(-1, index, row)[..., :cells]

    def to_dict(self) -> dict:
        """JSON-ready description (per-example ``weights`` are tensors and are saved separately)."""
        return {
            "segments": [vars(s) for s in self.segments],
            "readouts": [vars(r) for r in self.readouts],
            "absent": self.absent,
        }

    @classmethod
    def from_dict(
        cls,
        data: dict,
        weights: dict[str, Tensor] | None = None,
        positions: dict[str, Tensor] | None = None,
        token_maps: dict[str, Tensor] | None = None,
    ) -> TokenLayout:
        """The layout :meth:`to_dict` described (JSON lists back to tuples), with its per-example
        ``weights``, ``positions`` and ``token_maps`` (tensors, saved beside the JSON)."""
        segments = tuple(
            Segment(**{**s, "grid": tuple(s["grid"]) if s["grid"] else None})
            for s in data["segments"]
        )
        readouts = tuple(_readout(r) for r in data["readouts"])
        tensors = (dict(weights or {}), dict(positions or {}), dict(token_maps or {}))
        return cls(segments, readouts, *tensors, data.get("absent", {}))


def _readout(data: dict) -> Readout:
    """The :class:`Readout` of its JSON form; files saved before ``per_example_rows`` existed say
    ``rows="weights"``."""
    rows = data["rows"]
    if rows == "weights":
        return Readout(**{**data, "rows": None, "per_example_rows": True})
    return Readout(**{**data, "rows": tuple(rows) if isinstance(rows, list) else rows})
