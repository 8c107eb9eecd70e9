"""The one figure module: style, plotting helpers and saving to ``figures/``.

Every figure the workbook makes goes through :func:`save_figure`, which writes ``<name>.png`` and
``<name>.pdf`` with stable names into :func:`figures_dir`. Heatmaps use ``inferno``, a
perceptually uniform colour map whose lightness rises monotonically, so a relevance map still
reads correctly when printed in greyscale; curves differ by line style and marker as well as by
colour for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gae_utils.maps import normalize_maps
from gae_utils.methods import method_label
from gae_utils.plotting import HEATMAP_CMAP, PANEL, overlay, plot_explanation, plot_token_relevance, to_numpy_image

__all__ = [
    "HEATMAP_CMAP",
    "MATRIX_CMAP",
    "PANEL",
    "set_style",
    "figures_dir",
    "save_figure",
    "show_image",
    "overlay",
    "plot_heatmap_grid",
    "plot_panels",
    "plot_explanation",
    "plot_matrix",
    "plot_token_relevance",
    "plot_perturbation_curves",
    "plot_alignment",
    "plot_target_scale",
]

MATRIX_CMAP = "viridis"
LINE_STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "x", "P"]


def set_style() -> None:
    """Readable defaults for every workbook figure (font sizes, dpi, no top/right spines)."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "font.size": 10,
            "axes.titlesize": 10,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.cmap": HEATMAP_CMAP,
            "pdf.fonttype": 42,
        }
    )


def figures_dir() -> Path:
    """Where figures go: ``$GAE_FIGURES_DIR``, else the repository's ``figures/``, else ``./figures``."""
    if os.environ.get("GAE_FIGURES_DIR"):
        return Path(os.environ["GAE_FIGURES_DIR"])
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "figures"
    return Path.cwd() / "figures"


class SavedFigure(list):
    """The paths :func:`save_figure` wrote; shown in a notebook as one line, not a list of paths."""

    def __repr__(self) -> str:
        return f"saved {', '.join(p.name for p in self)} in {self[0].parent}" if self else "nothing saved"


def save_figure(fig: plt.Figure, name: str, directory: str | Path | None = None) -> SavedFigure:
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf``.

    Args:
        fig: the figure.
        name: stable file stem, e.g. ``"01_class_specific"``.
        directory: defaults to :func:`figures_dir`.

    Returns:
        The two written paths (a list).
    """
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    for path in paths:
        # fixed metadata so that re-running the workbook does not change unchanged PDFs
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else {"Software": None}
        fig.savefig(path, metadata=metadata)
    return SavedFigure(paths)


def show_image(ax: plt.Axes, image: Tensor | np.ndarray, title: str | None = None) -> None:
    ax.imshow(to_numpy_image(image))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


def plot_heatmap_grid(
    images: Tensor | None,
    columns: Mapping[str, Tensor],
    row_labels: Sequence[str] | None = None,
    show_input: bool = True,
    colorbar: bool = True,
) -> plt.Figure:
    """One row per example, one column per map (e.g. per method), heatmaps in [0, 1].

    Args:
        images: ``(R, 3, H, W)`` images shown in the first column (and under the maps), or None.
        columns: ``{column title: (R, H, W)}`` maps in [0, 1].
        row_labels: a label per row (e.g. the explained class).
        show_input: add the input image as the first column.
        colorbar: add one shared colour bar.
    """
    rows = next(iter(columns.values())).shape[0]
    ncols = len(columns) + int(show_input and images is not None)
    fig, axes = plt.subplots(rows, ncols, figsize=(PANEL * ncols, PANEL * rows), squeeze=False, layout="constrained")
    artist = None
    for r in range(rows):
        c0 = 0
        if show_input and images is not None:
            show_image(axes[r, 0], images[r], "input" if r == 0 else None)
            c0 = 1
        for c, (title, maps) in enumerate(columns.items()):
            artist = overlay(
                axes[r, c0 + c], images[r] if images is not None else None, maps[r], title if r == 0 else None
            )
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r])
    if colorbar and artist is not None:
        fig.colorbar(artist, ax=axes, shrink=0.6, label="relevance (min-max normalised)")
    return fig


def plot_panels(images: Tensor, maps: Tensor, titles: Sequence[Sequence[str]], show_input: bool = True) -> plt.Figure:
    """A grid of heatmaps over their images with a title per panel.

    Args:
        images: ``(R, 3, H, W)``.
        maps: ``(R, C, H, W)`` in [0, 1].
        titles: ``R`` rows of ``C`` titles.
        show_input: first column shows the plain input.
    """
    rows, cols = maps.shape[:2]
    ncols = cols + int(show_input)
    fig, axes = plt.subplots(rows, ncols, figsize=(PANEL * ncols, PANEL * rows), squeeze=False, layout="constrained")
    artist = None
    for r in range(rows):
        if show_input:
            show_image(axes[r, 0], images[r], "input")
        for c in range(cols):
            artist = overlay(axes[r, c + int(show_input)], images[r], maps[r, c], titles[r][c])
    fig.colorbar(artist, ax=axes, shrink=0.6, label="relevance (min-max normalised)")
    return fig


def plot_matrix(
    ax: plt.Axes,
    matrix: Tensor | np.ndarray,
    title: str | None = None,
    labels: Sequence[str] | None = None,
    cmap: str = MATRIX_CMAP,
):
    """A token x token matrix (Abar, R) with its own colour scale."""
    m = matrix.detach().float().cpu().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix)
    artist = ax.imshow(m, cmap=cmap)
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if title:
        ax.set_title(title)
    return artist


def plot_perturbation_curves(
    curves: Mapping[str, Tensor | Sequence[float]],
    steps: Sequence[float],
    title: str,
    auc: Mapping[str, float] | None = None,
    ax: plt.Axes | None = None,
    xlabel: str = "fraction of pixels removed",
    ylabel: str = "explained class still detected",
) -> plt.Figure:
    """Accuracy against the fraction of removed tokens, one line per method (style + marker + colour)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(PANEL * 2, PANEL * 1.5), layout="constrained")
    else:
        fig = ax.figure
    for i, (method, curve) in enumerate(curves.items()):
        values = torch.as_tensor(curve, dtype=torch.float32).numpy()
        label = method_label(method) + (f" (AUC {auc[method]:.1f})" if auc and method in auc else "")
        ax.plot(
            steps,
            values,
            linestyle=LINE_STYLES[i % len(LINE_STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            markersize=4,
            label=label,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def plot_target_scale(ranks: Mapping[str, Mapping], ax: plt.Axes | None = None) -> plt.Figure:
    """Key-word top-1 of GAE against the factor on the explained scalar, one line per target
    (the first table of :func:`gae_workbook.evaluate.vqa_word_study`), rollout as a reference line."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(PANEL * 2, PANEL * 1.5), layout="constrained")
    else:
        fig = ax.figure
    scores = list(dict.fromkeys(row["score"] for row in ranks.values() if "factor" in row))
    for i, score in enumerate(scores):
        rows = sorted((row["factor"], row["text_top1"]) for row in ranks.values() if row.get("score") == score)
        factors, top1 = zip(*rows)
        ax.plot(
            factors,
            top1,
            linestyle=LINE_STYLES[i % len(LINE_STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            label=f"GAE, answer {score.replace('_', '-')}",
        )
    if "rollout" in ranks:
        ax.axhline(ranks["rollout"]["text_top1"], color="0.3", linestyle=":", label="rollout")
    ax.set_xscale("log")
    ax.set_xlabel("factor on the explained scalar")
    ax.set_ylabel("key word ranked first")
    ax.set_ylim(0, 1)
    ax.set_title("GAE's word relevance depends on the gradients' scale")
    ax.legend(frameon=False)
    return fig


set_style()


# ----------------------------------------------------------------------------- seq2seq


def plot_alignment(
    ax: plt.Axes,
    matrix: Tensor | np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    title: str | None = None,
    highlight: int | None = None,
    normalise_rows: bool = True,
):
    """A target x source relevance (or attention) matrix with the tokens as tick labels (a seaborn heatmap).

    Args:
        ax: the axes.
        matrix: ``(T, S)`` one row per generated token, one column per source token.
        source_tokens: column labels (``S`` of them or fewer: extra columns are cut).
        target_tokens: row labels.
        title: axes title.
        highlight: a row to frame (the selected generated token).
        normalise_rows: min-max normalise each row (each token's own explanation) for display.

    Returns:
        The heatmap's mesh (for a colour bar).
    """
    import seaborn as sns

    m = matrix.detach().float().cpu() if isinstance(matrix, Tensor) else torch.as_tensor(matrix, dtype=torch.float32)
    m = m[: len(target_tokens), : len(source_tokens)]  # (T, S)
    if normalise_rows:
        m = normalize_maps(m[:, None, :])[:, 0]  # each row to [0, 1] (a constant row gives zeros)
    sns.heatmap(
        m.numpy(),
        ax=ax,
        cmap=HEATMAP_CMAP,
        vmin=0 if normalise_rows else None,
        vmax=1 if normalise_rows else None,
        cbar=False,
        xticklabels=list(source_tokens[: m.shape[1]]),
        yticklabels=list(target_tokens[: m.shape[0]]),
        linewidths=0.5,
        linecolor="white",
    )
    ax.set_xticklabels(ax.get_xticklabels(), rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0, fontsize=8)
    ax.set_xlabel("source token")
    ax.set_ylabel("generated token")
    if highlight is not None:  # seaborn puts cell (i, j) on [j, j + 1] x [i, i + 1]
        ax.add_patch(plt.Rectangle((0, highlight), m.shape[1], 1, fill=False, edgecolor="cyan", linewidth=2))
    artist = ax.collections[0]
    if title:
        ax.set_title(title)
    return artist
