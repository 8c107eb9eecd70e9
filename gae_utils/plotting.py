"""Drawing an :class:`~gae_utils.explanation.Explanation`: heatmaps over the inputs.

matplotlib is imported only when a figure is drawn, so ``import gae_utils`` stays free of it.
The workbook's figure module builds its figures from these helpers. Heatmaps use ``inferno``,
a perceptually uniform colour map whose lightness rises monotonically, so a map still reads
correctly in greyscale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

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
    "plot_explanation",
    "plot_token_relevance",
    "to_numpy_image",
    "token_html",
]

HEATMAP_CMAP = "inferno"
PANEL = 2.2  # inches per image panel: every grid figure uses the same panel size


class _Explained(Protocol):
    """What :func:`plot_explanation` reads of an :class:`~gae_utils.explanation.Explanation` (not imported
    here: the explanation module imports this one)."""

    method: str
    target: Tensor | None

    def heatmap(self, size: int | tuple[int, int] | None = None, name: str = "image") -> Tensor: ...


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
        grey = to_numpy_image(image).mean(axis=-1)
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        artist = ax.imshow(heat, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=alpha)
    else:
        artist = ax.imshow(heat, cmap=HEATMAP_CMAP, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return artist


def plot_explanation(
    explanation: _Explained,
    images: Tensor | None = None,
    index: int | None = None,
    size: int | tuple[int, int] | None = None,
    name: str = "image",
) -> Figure:
    """Plot an :class:`~gae_utils.explanation.Explanation`: one panel per example (and per target).

    Args:
        explanation: the explanation.
        images: ``(B, 3, H, W)`` inputs to draw under the heatmaps.
        index: plot only this example.
        size: heatmap size (default: the images' size, else the patch grid).
        name: which relevance to plot.
    """
    import matplotlib.pyplot as plt

    if size is None and images is not None:
        size = (images.shape[-2], images.shape[-1])
    heat = explanation.heatmap(size, name=name)  # (B, H, W) or (B, K, H, W)
    if heat.ndim == 3:
        heat = heat[:, None]
    target = explanation.target
    if target is not None and target.ndim == 1:
        target = target[:, None]
    examples = [index] if index is not None else list(range(heat.shape[0]))
    k = heat.shape[1]
    fig, axes = plt.subplots(
        len(examples), k, figsize=(PANEL * k, PANEL * len(examples)), squeeze=False, layout="constrained"
    )
    for r, b in enumerate(examples):
        for j in range(k):
            title = f"#{b}" + (f" class {int(target[b, j])}" if target is not None else "")
            artist = overlay(axes[r, j], images[b] if images is not None else None, heat[b, j], title)
    fig.colorbar(artist, ax=axes, shrink=0.8, label="relevance (min-max per map)")
    fig.suptitle(f"{explanation.method} relevance")
    return fig


def plot_token_relevance(
    ax: Any, tokens: Sequence[str], relevance: Tensor | Sequence[float], title: str | None = None
) -> Any:
    """One sentence as a strip of cells, each token's relevance (min-max normalised) as its shade."""
    values = torch.as_tensor(relevance, dtype=torch.float32)[: len(tokens)]
    span = values.max() - values.min()
    values = (values - values.min()) / span if span > 0 else torch.zeros_like(values)
    artist = ax.imshow(values[None].numpy(), cmap=HEATMAP_CMAP, vmin=0, vmax=1, aspect="auto")
    for i, (token, v) in enumerate(zip(tokens, values.tolist())):
        color = "black" if v > 0.6 else "white"
        ax.text(i, 0, token, ha="center", va="center", fontsize=9 if len(token) <= 7 else 7, color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, loc="left")
    return artist


class TokenHTML(str):
    """HTML markup that notebooks render (``_repr_html_``) and that can be written to a page as it is."""

    def _repr_html_(self) -> str:
        return str(self)


def token_html(tokens: Sequence[str], relevance: Tensor | Sequence[float], cmap: str = HEATMAP_CMAP) -> TokenHTML:
    """Tokens as inline HTML, each shaded by its relevance (min-max normalised over the tokens shown).

    Args:
        tokens: the token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)``), one per value.
        relevance: ``(N,)`` raw relevance, e.g. ``exp.relevance["text"][b]`` without padding.
        cmap: a matplotlib colour map; the default's lightness rises with relevance, so the page
            reads the same in greyscale.

    Returns:
        A :class:`TokenHTML`: displayed as coloured tokens in a notebook, each with its raw value
        as a tooltip.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    values = torch.as_tensor(relevance, dtype=torch.float32).flatten()
    if values.numel() != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {values.numel()} relevance values; pass one value per token")
    span = values.max() - values.min() if values.numel() else torch.tensor(0.0)
    shade = (values - values.min()) / span if span > 0 else torch.zeros_like(values)
    colours = colormaps[cmap](shade.numpy())  # (N, 4) RGBA
    spans = []
    for token, raw, level, rgba in zip(tokens, values.tolist(), shade.tolist(), colours):
        text = "black" if level > 0.6 else "white"
        spans.append(
            f'<span title="{raw:.4g}" style="background:{to_hex(rgba)};color:{text};padding:1px 3px;'
            f'margin:1px;border-radius:3px;font-family:monospace">{html.escape(token)}</span>'
        )
    return TokenHTML('<div style="line-height:2em">' + "".join(spans) + "</div>")
