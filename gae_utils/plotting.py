"""Drawing an :class:`~gae_utils.explanation.Explanation`: heatmaps over the inputs.

matplotlib is imported only when a figure is drawn, so ``import gae_utils`` stays free of it.
The workbook's figure module builds its figures from these helpers. Heatmaps use ``inferno``,
a perceptually uniform colour map whose lightness rises monotonically, so a map still reads
correctly in greyscale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage


__all__ = ["HEATMAP_CMAP", "PANEL", "overlay", "plot_explanation", "to_numpy_image"]

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
