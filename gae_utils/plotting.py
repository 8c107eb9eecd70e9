"""Drawing relevance: heatmaps over the inputs (:meth:`~gae_utils.explanation.Explanation.plot`),
tokens as strips, a generation as a steps x tokens matrix, tokens as HTML.

matplotlib is imported only when a figure is drawn. Heatmaps use ``inferno``, whose lightness rises
monotonically, so a map still reads correctly in greyscale.
"""

from __future__ import annotations

import functools
import html
import math
import warnings
from collections.abc import Mapping, Sequence
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
    "class_names",
    "display_images",
    "heatmap_panels",
    "overlay",
    "pixel_normalization",
    "plot_token_matrix",
    "plot_token_strips",
    "to_numpy_image",
    "token_html",
]

HEATMAP_CMAP = "inferno"
PANEL = 2.2  # inches per image panel: every grid figure uses the same panel size
SLACK = 0.02  # how far past [0, 1] (x 255) a raw image may go and still be read as raw


def class_names(model: Any) -> dict[int, str] | None:
    """The model's class names: a Hugging Face ``config.id2label`` (not the default ``LABEL_i``),
    a timm ``pretrained_cfg["label_names"]``, or ImageNet's for a 1000-class timm model."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if id2label:
        names = {int(k): str(v) for k, v in id2label.items()}
        return None if all(v == f"LABEL_{k}" for k, v in names.items()) else names
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("label_names"):
        return dict(enumerate(map(str, cfg["label_names"])))
    if type(model).__module__.startswith("timm.") and getattr(model, "num_classes", 0) == 1000:
        return dict(_imagenet_names())
    return None


@functools.cache
def _imagenet_names() -> dict[int, str]:
    """ImageNet-1k's class names as timm describes them, first synonym ("tabby, tabby cat")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()  # reads a file: 80 ms, once
    return {i: info.index_to_description(i).split(",")[0] for i in range(1000)}


def pixel_normalization(model: Any) -> dict[str, list[float]] | None:
    """``{"mean": [...], "std": [...]}`` a timm model normalises its inputs with
    (``pretrained_cfg``); None when the model does not say (Hugging Face: the image processor)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        return None
    return {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}


def _mean_std(normalization: Any) -> tuple[Tensor, Tensor]:
    """``(C, 1, 1)`` mean and std of a ``{"mean", "std"}`` dict, a ``(mean, std)`` pair or an
    image processor (``image_mean``, ``image_std``)."""
    if hasattr(normalization, "image_mean"):
        pair = (normalization.image_mean, normalization.image_std)
    elif isinstance(normalization, Mapping):
        pair = (normalization["mean"], normalization["std"])
    else:
        pair = tuple(normalization)
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in pair)
    return mean, std  # (C, 1, 1) each


def display_images(images: Tensor | np.ndarray, normalization: Any = None) -> Tensor:
    """Images as drawn, ``(B, C, H, W)`` in [0, 1]; never clipped silently.

    uint8 and 0..255 images are divided by 255, [0, 1] images kept (an overshoot of ``SLACK``,
    as bicubic resizing leaves, is cut); other values are
    un-normalised (``x * std + mean``) with ``normalization`` (see :func:`_mean_std`) when given,
    else min-max rescaled per image with one warning.

    Args:
        images: ``(B, C, H, W)`` or channels-last ``(B, H, W, C)``, C in (1, 3).
        normalization: the inputs' normalisation, or None when unknown.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    raw_uint8, x = x.dtype == torch.uint8, x.float()
    low, high = (float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0)
    if raw_uint8 or (low >= 0 and 1 + SLACK < high <= 255 * (1 + SLACK)):
        return (x / 255).clamp(0, 1)
    if low >= -SLACK and high <= 1 + SLACK:
        return x.clamp(0, 1)  # [0, 1] up to a resize's overshoot
    if normalization is not None:
        mean, std = _mean_std(normalization)
        restored = x * std + mean  # (B, C, H, W)
        if restored.min() > -1e-3 and restored.max() < 1 + 1e-3:
            return restored.clamp(0, 1)  # rounding only
    warnings.warn(
        f"images range over [{low:.3g}, {high:.3g}], neither [0, 1] nor 0..255, and "
        + (
            "un-normalising them did not give [0, 1]"
            if normalization is not None
            else "their normalisation is unknown"
        )
        + ": each image is min-max rescaled for display. Pass the raw images, or "
        "normalization=processor or (mean, std).",
        stacklevel=3,
    )
    flat = x.flatten(1)  # (B, C*H*W)
    low_b, high_b = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    return (x - low_b) / (high_b - low_b).clamp_min(1e-12)  # (B, C, H, W)


def to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    """One image ``(C, H, W)`` (or ``(H, W, C)``) as ``(H, W, C)`` in [0, 1]
    (:func:`display_images`)."""
    return display_images(torch.as_tensor(image)[None])[0].permute(1, 2, 0).numpy()


def overlay(
    ax: Any,
    image: Tensor | np.ndarray | None,
    heat: Tensor | np.ndarray,
    title: str | None = None,
    alpha: float = 0.6,
    cmap: str = HEATMAP_CMAP,
) -> AxesImage:
    """Heatmap (values in [0, 1]) over a dimmed greyscale copy of the image."""
    heat = heat.detach().float().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat)
    if image is not None:
        ax.imshow(
            to_numpy_image(image).mean(axis=-1), cmap="gray", vmin=0, vmax=1
        )  # (H, W) greyscale
    artist = ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=alpha if image is not None else None)
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


def heatmap_panels(
    heat: Tensor,
    images: Tensor | None,
    titles: Sequence[str],
    *,
    ncols: int | None = None,
    ax: Any = None,
    cmap: str = HEATMAP_CMAP,
    alpha: float = 0.6,
    title: str = "",
    colorbar: bool = True,
) -> Figure:
    """Heatmaps over their images, in a grid of ``ncols`` columns or in the axes ``ax``.

    Args:
        heat: ``(P, H, W)`` P panels' maps in [0, 1].
        images: ``(P, C, H, W)`` images in [0, 1] under the maps, or None.
        titles: one per panel.
        ncols: panels per row (default: about twice as many columns as rows).
        ax: an axes or an array of at least P axes to draw into, instead of a new figure.
        cmap, alpha: the heatmaps' colour map and opacity over the image.
        title: the new figure's title; with ``ax``, it heads the colour bar's label.
        colorbar: add one colour bar for all panels.
    """
    import matplotlib.pyplot as plt

    n, nrows = heat.shape[0], 1
    if ax is None:
        ncols = max(1, min(n, ncols or math.ceil(math.sqrt(2 * n))))
        nrows = -(-n // ncols)
        size = (PANEL * ncols + float(colorbar), PANEL * nrows + 0.4)  # + colour bar, + title
        fig, grid = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")
        axes = list(grid.flat)
    else:
        axes = list(np.ravel(ax))
        if len(axes) < n:
            raise ValueError(
                f"ax has {len(axes)} axes for {n} panels; pass at least {n} axes "
                "(plt.subplots(rows, cols)) or leave ax=None for a new figure"
            )
        fig = axes[0].figure
    for i, axis in enumerate(axes[:n]):
        artist = overlay(
            axis, None if images is None else images[i], heat[i], titles[i], alpha, cmap
        )
    for axis in axes[n:]:
        axis.set_axis_off()
    if colorbar and n:
        label = "relevance (min-max per map)" if ax is None else f"{title} (min-max per map)"
        fig.colorbar(artist, ax=axes, shrink=0.8 if nrows > 1 else 1.0, label=label)
    if ax is None and title:
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
