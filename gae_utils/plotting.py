"""Drawing relevance: heatmaps over the inputs (:meth:`~gae_utils.explanation.Explanation.plot`),
tokens as HTML.

matplotlib is imported only when a figure is drawn. Heatmaps use ``inferno``, whose lightness rises
monotonically, so a map still reads correctly in greyscale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.image import AxesImage


__all__ = ["HEATMAP_CMAP", "PANEL", "TokenHTML", "overlay", "to_numpy_image", "token_html"]

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


class TokenHTML(str):
    """HTML markup that notebooks render (``_repr_html_``) and that can be written to a page as it
    is."""

    def _repr_html_(self) -> str:
        return str(self)


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
