"""Drawing relevance: heatmaps over the inputs (:meth:`~gae_utils.explanation.Explanation.plot`),
tokens as strips, a generation as a steps x tokens matrix, tokens as HTML.

matplotlib is imported only when a figure is drawn. Heatmaps use ``inferno``, whose lightness rises
monotonically, so a map still reads correctly in greyscale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage


__all__ = [
    "HEATMAP_CMAP",
    "PANEL",
    "TokenHTML",
    "overlay",
    "plot_token_matrix",
    "plot_token_strips",
    "to_numpy_image",
    "token_html",
]

HEATMAP_CMAP = "inferno"
PANEL = 2.2  # inches per image panel: every grid figure uses the same panel size


def to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # (H, W, C)
        image = image.numpy()
    return np.clip(image, 0, 1)


def overlay(
    ax: Any,
    image: Tensor | np.ndarray | None,
    heat: Tensor | np.ndarray,
    title: str | None = None,
    alpha: float = 0.6,
) -> AxesImage:
    """Heatmap (values in [0, 1]) over a dimmed greyscale copy of the image."""
    heat = heat.detach().float().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat)
    if image is not None:
        ax.imshow(
            to_numpy_image(image).mean(axis=-1), cmap="gray", vmin=0, vmax=1
        )  # (H, W) greyscale
    artist = ax.imshow(
        heat, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=alpha if image is not None else None
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return artist


def _token_axis(ax: Any, tokens: Sequence[str]) -> None:
    """Tokens as column labels (in order), rotated so long tokens do not overlap."""
    ax.set_xticks(range(len(tokens)), list(tokens), rotation=60, ha="right", fontsize=8)


def plot_token_strips(
    tokens: Sequence[Sequence[str]],
    relevance: Sequence[Tensor],
    labels: Sequence[Sequence[str]],
    examples: Sequence[int],
    title: str = "",
    cmap: str = HEATMAP_CMAP,
) -> Figure:
    """One strip per example and target: its tokens as labels, raw relevance as colour, each strip
    with its own colour bar (raw values: magnitudes differ between examples).

    Args:
        tokens: per example, its ``n`` tokens (padding removed).
        relevance: per example, ``(K, n)`` raw relevance of its K targets.
        labels: per example, the K targets' labels (``"'Paris'"``, ``"class 3"``; ``""``: none).
        examples: the examples' indices in the batch (strip titles).
        title: the figure's title.
        cmap: a colour map; the default reads the same in greyscale.
    """
    import matplotlib.pyplot as plt

    rows = [(b, t, v, lab) for b, t, vs, labs in zip(examples, tokens, relevance, labels)
            for v, lab in zip(vs, labs)]  # fmt: skip
    width = min(max(4.0, 0.42 * max(len(t) for t in tokens) + 1.5), 30.0)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(width, 1.45 * len(rows) + 0.4), squeeze=False, layout="constrained"
    )
    for ax, (b, toks, values, label) in zip(axes[:, 0], rows):
        artist = ax.imshow(values[None].numpy(), cmap=cmap, aspect="auto")  # (1, n)
        _token_axis(ax, toks)
        ax.set_yticks([])
        ax.set_title(f"#{b}" + (f", explained: {label}" if label else ""), loc="left", fontsize=9)
        fig.colorbar(artist, ax=ax, label="relevance", pad=0.01, aspect=8)
    fig.suptitle(title)
    return fig


def plot_token_matrix(
    tokens: Sequence[Sequence[str]],
    relevance: Sequence[Tensor],
    labels: Sequence[Sequence[str]],
    last: Sequence[Sequence[int]],
    examples: Sequence[int],
    title: str = "",
    cmap: str = HEATMAP_CMAP,
) -> Figure:
    """A generation as a steps x tokens matrix per example: row ``t`` (labelled by the token step
    ``t`` produced) is its relevance over the columns (prompt then generated tokens, padding
    removed) that existed when it was produced; later columns are left blank.

    Args:
        tokens: per example, its ``n`` tokens: the prompt ``P`` then the first ``T - 1`` generated.
        relevance: per example, ``(K, n)`` raw relevance of its K explained steps.
        labels: per example, the K generated tokens (row labels).
        last: per example, the column of the last token each step sees (``P - 1 + t`` without
            padding).
        examples: the examples' indices in the batch (panel titles).
        title: the figure's title.
        cmap: a colour map; the default reads the same in greyscale (hatched: not yet generated).
    """
    import matplotlib.pyplot as plt

    width = min(max(4.0, 0.38 * max(len(t) for t in tokens) + 2.5), 30.0)
    heights = [0.3 * len(lab) + 1.2 for lab in labels]
    fig, axes = plt.subplots(
        len(tokens), 1, figsize=(width, sum(heights) + 0.4), squeeze=False, layout="constrained",
        height_ratios=heights,
    )  # fmt: skip
    for ax, b, toks, values, labs, seen in zip(
        axes[:, 0], examples, tokens, relevance, labels, last
    ):
        future = torch.arange(values.shape[-1]) > torch.tensor(seen)[:, None]  # (K, n)
        artist = ax.imshow(
            values.masked_fill(future, float("nan")).numpy(), cmap=cmap, aspect="auto"
        )
        _token_axis(ax, toks)
        ax.set_yticks(range(len(labs)), list(labs), fontsize=8)
        ax.patch.set(facecolor="white", hatch="//", edgecolor="0.75")  # not yet generated
        ax.set_ylabel("generated token")
        ax.set_title(f"#{b}", loc="left", fontsize=9)
        fig.colorbar(artist, ax=ax, label="relevance", pad=0.01)
    axes[-1, 0].set_xlabel("tokens (hatched: not yet generated when the row's token was)")
    fig.suptitle(title)
    return fig


class TokenHTML(str):
    """HTML markup that notebooks render (``_repr_html_``) and that can be written to a page as it
    is (:meth:`save`)."""

    def _repr_html_(self) -> str:
        return str(self)

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML page (UTF-8) holding the markup to ``path`` with the suffix
        ``.html``; returns that path."""
        path = Path(path).with_suffix(".html")
        path.parent.mkdir(parents=True, exist_ok=True)
        page = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>token relevance</title>'
        path.write_text(f"{page}</head>\n<body>\n{self}\n</body></html>\n", encoding="utf-8")
        return path


def token_html(
    tokens: Sequence[str], relevance: Tensor | Sequence[float], cmap: str = HEATMAP_CMAP
) -> TokenHTML:
    """Tokens as inline HTML, each shaded by its relevance (min-max normalised over the tokens
    shown).

    Args:
        tokens: the token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)``), one per value.
        relevance: ``(N,)`` raw relevance, e.g. ``exp.relevance["text"][b]`` without padding.
        cmap: a matplotlib colour map (the default reads the same in greyscale).

    Returns:
        A :class:`TokenHTML`, shown as coloured tokens in a notebook, each with its raw value as a
        tooltip.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    values = torch.as_tensor(relevance, dtype=torch.float32).flatten()
    if values.numel() != len(tokens):
        raise ValueError(
            f"{len(tokens)} tokens but {values.numel()} relevance values; pass one value per token"
        )
    span = values.max() - values.min() if values.numel() else torch.tensor(0.0)
    shade = (values - values.min()) / span if span > 0 else torch.zeros_like(values)
    colours = colormaps[cmap](shade.numpy())  # (N, 4) RGBA
    spans = []
    for token, raw, level, rgba in zip(tokens, values.tolist(), shade.tolist(), colours):
        text = "black" if level > 0.6 else "white"
        spans.append(
            f'<span title="{raw:.4g}" style="background:{to_hex(rgba)};color:{text};'
            f"padding:1px 3px;"
            f'margin:1px;border-radius:3px;font-family:monospace">{html.escape(token)}</span>'
        )
    return TokenHTML('<div style="line-height:2em">' + "".join(spans) + "</div>")
