"""The one figure module: style, plotting helpers and saving to ``figures/``.

Every figure the workbook makes goes through :func:`save_figure`, which writes ``<name>.png`` and
``<name>.pdf`` with stable names into :func:`figures_dir`. Heatmaps use ``inferno``, a
perceptually uniform colour map whose lightness rises monotonically, so a relevance map still
reads correctly when printed in greyscale; curves differ by line style and marker as well as by
colour for the same reason.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import Normalize, PowerNorm  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from torch import Tensor  # noqa: E402

from gae_utils.heatmaps import normalize_maps
from gae_utils.methods import method_label
from gae_utils.plotting import HEATMAP_CMAP, PANEL, display_images, overlay, to_numpy_image

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
    "plot_matrix",
    "plot_token_relevance",
    "plot_perturbation_curves",
    "plot_alignment",
    "plot_target_scale",
    "plot_rule_blocks",
    "plot_region_maps",
    "plot_map_flow",
    "rule_diagram",
    "plot_rule_steps",
    "course_map",
    "plot_token_matrix",
    "plot_perturbation_panels",
    "plot_caption_maps",
    "plot_sentence_pairs",
    "plot_word_strips",
    "plot_coattention_flow",
    "first_detection_per_class",
    "plot_detection_methods",
    "plot_query_mixing",
    "plot_segmentation_examples",
    "plot_alignment_methods",
    "plot_token_methods",
    "plot_small_matrices",
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
    """Where figures go: ``$GAE_FIGURES_DIR``, else ``./figures`` in the current directory (never the
    repository's committed ``figures/`` unless asked: ``make figures`` sets the variable)."""
    if os.environ.get("GAE_FIGURES_DIR"):
        return Path(os.environ["GAE_FIGURES_DIR"])
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
        directory: where to write, e.g. ``"paper"``; defaults to :func:`figures_dir`.

    Returns:
        The two written paths (a list).
    """
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    png, pdf = directory / f"{name}.png", directory / f"{name}.pdf"
    picture = io.BytesIO()
    fig.savefig(picture, format="png", metadata={"Software": None})  # fixed metadata: same pixels, same bytes
    if png.exists() and pdf.exists() and png.read_bytes() == picture.getvalue():
        # the same picture: both files stay as they are, since a PDF's vector data follows the last
        # digits of the computed values (thread counts, machines) even where no pixel moves
        return SavedFigure([png, pdf])
    png.write_bytes(picture.getvalue())
    fig.savefig(pdf, metadata={"CreationDate": None})
    return SavedFigure([png, pdf])


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
    normalization=None,
) -> plt.Figure:
    """One row per example, one column per map (e.g. per method), heatmaps in [0, 1].

    Args:
        images: ``(R, 3, H, W)`` images shown in the first column (and under the maps), or None.
        columns: ``{column title: (R, H, W)}`` maps in [0, 1]; a method's key is shown by its label.
        row_labels: a label per row (e.g. the explained class).
        show_input: add the input image as the first column.
        colorbar: add one shared colour bar.
        normalization: the images' normalisation, undone to draw them (``exp.normalization``, an
            image processor or ``(mean, std)``; see :func:`gae_utils.plotting.display_images`).
    """
    images = None if images is None else display_images(images, normalization)  # (R, C, H, W) in [0, 1]
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
            image = images[r] if images is not None else None
            artist = overlay(axes[r, c0 + c], image, maps[r], method_label(title) if r == 0 else None)
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
    # a single row needs the full height, or the bar is shorter than its label
    fig.colorbar(artist, ax=axes, shrink=0.6 if rows > 1 else 1.0, label="relevance\n(min-max per map)")
    return fig


def plot_token_relevance(
    ax: plt.Axes, tokens: Sequence[str], relevance: Tensor | Sequence[float], title: str | None = None
) -> AxesImage:
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


# ----------------------------------------------------------------------------- teaching diagrams


def _cells(
    ax: plt.Axes,
    x: float,
    y: float,
    values: np.ndarray,
    title: str,
    highlight_row: int | None = None,
    cmap: str = "Greys",
    vmax: float | None = None,
    cell: float = 0.32,
) -> None:
    """A small matrix drawn cell by cell at ``(x, y)`` (its top-left corner), values as grey shades."""
    n_rows, n_cols = values.shape
    colours = plt.get_cmap(cmap)
    top = vmax if vmax is not None else max(float(np.abs(values).max()), 1e-9)
    for i in range(n_rows):
        for j in range(n_cols):
            shade = colours(0.08 + 0.8 * float(values[i, j]) / top)
            ax.add_patch(
                plt.Rectangle(
                    (x + j * cell, y - (i + 1) * cell), cell, cell, facecolor=shade, edgecolor="0.45", linewidth=0.6
                )
            )
    if highlight_row is not None:
        ax.add_patch(
            plt.Rectangle(
                (x, y - (highlight_row + 1) * cell),
                n_cols * cell,
                cell,
                fill=False,
                edgecolor="tab:orange",
                linewidth=2.2,
                linestyle="--",
            )
        )
    ax.text(x + n_cols * cell / 2, y + 0.12, title, ha="center", va="bottom", fontsize=9)


def rule_diagram() -> plt.Figure:
    """The self-attention rule drawn as matrix products, and which block of ``R`` each attention type writes.

    Left: Eq. 5, ``Abar = E_h[(grad A * A)^+]`` for two heads of a 4-token layer (token 0 = CLS).
    Middle: Eq. 6, ``R <- R + Abar @ R`` starting from ``R = I``; the dashed row is the CLS row, the
    one the explanation reads. Right: the relevancy blocks of a two-modality model (``s`` = the
    explained stream, ``q`` = the other one) and the equation that writes each block: a
    self-attention layer of ``s`` updates its whole row band (Eq. 6, 7), a cross-attention from
    ``s`` to ``q`` writes ``R[s,q]`` (Eq. 10, with Eq. 8-9's ``Rbar``) and ``R[s,s]`` (Eq. 11).
    Shades and hatching (not colour) carry the meaning, so the figure reads in greyscale.

    Returns:
        The figure (three panels).
    """
    rng = np.random.default_rng(0)
    n = 4
    attn = rng.dirichlet(np.ones(n), size=(2, n))  # (H=2, N, N) rows sum to 1
    grad = rng.normal(size=(2, n, n))  # (H, N, N)
    grad[:, 1:] *= 0.15  # the CLS row carries most of the gradient
    heads = np.clip(grad * attn, 0, None)  # (H, N, N) Eq. 5 before the mean
    attn_bar = heads.mean(0)  # (N, N)
    eye = np.eye(n)
    r_new = eye + attn_bar @ eye  # (N, N)

    fig, axes = plt.subplots(
        1, 3, figsize=(PANEL * 5.2, PANEL * 1.55), layout="constrained", gridspec_kw={"width_ratios": [1.35, 1.45, 1.0]}
    )
    for ax in axes:
        ax.set_axis_off()
        ax.set_aspect("equal")

    ax = axes[0]
    ax.set_xlim(0, 6.6)
    ax.set_ylim(-3.3, 1.2)
    _cells(ax, 0.0, 0.4, attn[0], r"$A_h$")
    ax.text(1.47, -0.25, r"$\odot$", fontsize=14, ha="center", va="center")
    _cells(ax, 1.65, 0.4, np.abs(grad[0]), r"$|\nabla A_h|$")
    ax.text(3.18, -0.25, r"$\rightarrow$", fontsize=14, ha="center", va="center")
    _cells(ax, 3.4, 0.4, heads[0], r"$(\nabla A_h \odot A_h)^+$")
    ax.text(4.93, -0.05, r"$\mathbb{E}_h$", fontsize=10, ha="center", va="center")
    ax.text(4.93, -0.35, r"$\rightarrow$", fontsize=14, ha="center", va="center")
    _cells(ax, 5.2, 0.4, attn_bar, r"$\bar A$", highlight_row=0)
    ax.text(
        3.3, -2.0, r"Eq. 5:  $\bar A = \mathbb{E}_h[(\nabla A_h \odot A_h)^+]$   (B, N, N)", fontsize=9, ha="center"
    )
    ax.text(
        3.3,
        -2.55,
        "one head shown; a negative product or no gradient gives white.\nOnly the CLS row gets a large gradient here.",
        fontsize=7,
        ha="center",
        va="top",
        color="0.3",
    )

    ax = axes[1]
    ax.set_xlim(0, 7.2)
    ax.set_ylim(-3.3, 1.2)
    _cells(ax, 0.0, 0.4, r_new, r"$R$ after", highlight_row=0, vmax=r_new.max())
    ax.text(1.5, -0.25, "=", fontsize=14, ha="center", va="center")
    _cells(ax, 1.7, 0.4, eye, r"$R$ before ($=I$)", vmax=r_new.max())
    ax.text(3.2, -0.25, "+", fontsize=14, ha="center", va="center")
    _cells(ax, 3.4, 0.4, attn_bar, r"$\bar A$", highlight_row=0, vmax=r_new.max())
    ax.text(4.9, -0.25, "@", fontsize=12, ha="center", va="center")
    _cells(ax, 5.1, 0.4, eye, r"$R$ before", vmax=r_new.max())
    ax.text(3.4, -2.0, r"Eq. 6:  $R \leftarrow R + \bar A\,R$,  $R_0 = I$   (B, N, N)", fontsize=9, ha="center")
    ax.text(
        3.4,
        -2.55,
        "one grey scale for all four: Abar is faint next to I.\nDashed: token 0 (CLS), the row the explanation reads.",
        fontsize=7,
        ha="center",
        va="top",
        color="0.3",
    )

    ax = axes[2]
    ax.set_xlim(-0.9, 4.2)
    ax.set_ylim(-3.3, 1.2)
    blocks = {
        ("s", "s"): ("Eq. 6 (self of s)\nEq. 11 (cross s→q)", "//"),
        ("s", "q"): ("Eq. 7 (self of s)\nEq. 10 (cross s→q)", "\\\\"),
        ("q", "s"): ("q's layers", ""),
        ("q", "q"): ("q's layers", ""),
    }
    size = 1.6
    for (row, col), (label, hatch) in blocks.items():
        x = 0.0 if col == "s" else size
        y = 0.4 - (size if row == "s" else 2 * size)
        ax.add_patch(
            plt.Rectangle(
                (x, y), size, size, facecolor="0.92" if hatch else "white", hatch=hatch, edgecolor="0.2", linewidth=1.0
            )
        )
        ax.text(
            x + size / 2,
            y + size / 2,
            f"R[{row},{col}]\n{label}",
            ha="center",
            va="center",
            fontsize=6.5,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
        )
    ax.text(-0.15, 0.4 - size / 2, "rows s", rotation=90, ha="right", va="center", fontsize=8)
    ax.text(-0.15, 0.4 - 1.5 * size, "rows q", rotation=90, ha="right", va="center", fontsize=8)
    ax.text(size / 2, 0.5, "columns s", ha="center", va="bottom", fontsize=8)
    ax.text(1.5 * size, 0.5, "columns q", ha="center", va="bottom", fontsize=8)
    ax.text(size, -3.1, "start: R[s,s] = R[q,q] = I, R[s,q] = R[q,s] = 0", fontsize=7, ha="center", color="0.3")
    return fig


def plot_rule_steps(
    rec, images: Tensor, index: int = 0, target: int = 0, grid: tuple[int, int] | None = None
) -> plt.Figure:
    """Eq. 5-6 on a recorded ViT, layer by layer, in raw values with one colour bar per row.

    Row 1: each layer's ``Abar`` summed along its rows, one bar per query token on a log scale, so a
    row that is exactly zero has no bar and the count of non-zero rows is printed (in the last layer
    only the CLS row, drawn in its own colour, is non-zero). Row 2: ``R - I`` after that layer (what
    the layers have added to the identity), token x token on a square-root colour scale shared along
    the row, so that the rows other than CLS, a hundred times weaker, stay visible. Row 3: the CLS
    row of ``R - I`` over the image patches. Nothing is min-max normalised.

    Args:
        rec: a :class:`~gae_utils.explainer.Recording` of a single-modality self-attention stack with
            a CLS token at index 0.
        images: ``(B, 3, H, W)`` the recorded images.
        index: the example.
        target: the target column.
        grid: the patch grid ``(h, w)``; default: a square grid.

    Returns:
        The figure.
    """
    history = rec.history()
    n_layers = len(rec.layers)
    bars = [layer.attn_bar[index, target].detach().float().cpu() for layer in rec.layers]  # (N, N) each
    key = (rec.layers[0].query, rec.layers[0].key)
    gains = [h[key][index, target].detach().float().cpu() for h in history]  # (N, N) each
    n = gains[0].shape[-1]
    gains = [g - torch.eye(n) for g in gains]  # R - I
    patches = n - 1
    grid = grid or (int(round(patches**0.5)),) * 2
    rows = [g[0, 1:].reshape(grid) for g in gains]  # (h, w) CLS row over the patches
    fig, axes = plt.subplots(
        3, n_layers + 1, figsize=(PANEL * (n_layers + 1.3), PANEL * 3.1), squeeze=False, layout="constrained"
    )
    show_image(axes[2, 0], images[index], "input")
    axes[0, 0].set_axis_off()
    axes[1, 0].set_axis_off()
    axes[0, 0].text(
        0.5,
        0.5,
        r"$\bar A_l$ (Eq. 5): sum of each row" + "\none bar per query token\n(log scale; a zero row\nhas no bar)",
        ha="center",
        va="center",
        fontsize=9,
        transform=axes[0, 0].transAxes,
    )
    axes[1, 0].text(
        0.5,
        0.5,
        r"$R - I$ after layer $l$" + "\n(Eq. 6, accumulated)\nrows: query token\ncolumns: key token",
        ha="center",
        va="center",
        fontsize=9,
        transform=axes[1, 0].transAxes,
    )
    sums = [m.clamp(min=0).sum(-1) for m in bars]  # (N,) each: the row sums of Abar
    positive = torch.cat([v[v > 0] for v in sums])
    low = float(positive.min()) / 2 if positive.numel() else 1e-6
    high = float(positive.max()) * 2 if positive.numel() else 1.0
    for layer, v in enumerate(sums):
        ax = axes[0, layer + 1]
        colours = ["tab:orange"] + ["0.35"] * (n - 1)  # the CLS row in its own colour
        ax.bar(np.arange(n), v.numpy(), width=1.0, color=colours)
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_xlim(-1, n)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("query token (0 = CLS)", fontsize=7)
        ax.tick_params(labelsize=7)
        if layer:
            ax.tick_params(labelleft=False)
        nonzero = int((v > 0).sum())
        ax.text(
            0.97,
            0.95,
            f"non-zero rows: {nonzero} of {n}",
            ha="right",
            va="top",
            fontsize=7,
            transform=ax.transAxes,
            bbox={"facecolor": "white", "edgecolor": "0.7", "pad": 2},
        )
    panels = [(gains, "R - I (square-root scale)"), (rows, "R[CLS] - I, patches")]
    for r, (mats, label) in enumerate(panels, start=1):
        vmax = max(float(m.max()) for m in mats)
        norm = PowerNorm(0.5, vmin=0, vmax=vmax) if r == 1 else Normalize(vmin=0, vmax=vmax)
        artist = None
        for layer, m in enumerate(mats):
            ax = axes[r, layer + 1]
            artist = ax.imshow(m.clamp(min=0).numpy(), cmap=HEATMAP_CMAP, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 2:
                ax.set_xlabel(f"CLS row sum {float(m.sum()):.2f}", fontsize=8)
        fig.colorbar(artist, ax=axes[r, 1:], shrink=0.9, label=label)
    return fig


def course_map() -> plt.Figure:
    """The course as a road map: one box per notebook, with the rule it introduces or applies and its time."""
    steps = [
        ("00", "prerequisites", "attention, heads,\nCLS, residual", "30 min"),
        ("01", "vision transformer", "new: self-attention\nrule, Eq. 5-6", "45 min"),
        ("02", "dual encoders", "Eq. 5-6 in\ntwo towers", "30 min"),
        ("03", "VQA co-attention", "new: cross-attention\nrules, Eq. 8-11", "60-75 min"),
        ("04", "DETR", "Eq. 10-11 on\nquery → image", "45 min"),
        ("05", "seq2seq", "Eq. 6-11 on\ntarget → source", "45 min"),
        ("06", "causal LM", "Eq. 5-6, causal,\nrow p of R - I", "45 min"),
    ]
    fig, ax = plt.subplots(figsize=(PANEL * 5.2, PANEL * 1.0), layout="constrained")
    ax.set_axis_off()
    width, gap = 1.0, 0.35
    ax.set_xlim(-0.1, len(steps) * (width + gap))
    ax.set_ylim(-0.15, 1.25)
    for i, (number, name, rule, time) in enumerate(steps):
        x = i * (width + gap)
        ax.add_patch(plt.Rectangle((x, 0.0), width, 1.0, facecolor="0.93", edgecolor="0.2", linewidth=1.0))
        ax.text(x + width / 2, 0.86, number, ha="center", va="center", fontsize=12, fontweight="bold")
        ax.text(x + width / 2, 0.66, name, ha="center", va="center", fontsize=8)
        ax.text(x + width / 2, 0.38, rule, ha="center", va="center", fontsize=7, color="0.25")
        ax.text(x + width / 2, 0.1, time, ha="center", va="center", fontsize=8, style="italic")
        if i + 1 < len(steps):
            ax.annotate(
                "", xy=(x + width + gap, 0.5), xytext=(x + width, 0.5), arrowprops={"arrowstyle": "->", "color": "0.2"}
            )
    ax.set_title("the course: 01 and 03 introduce the rules; 02, 04, 05 and 06 apply them to new models", fontsize=10)
    return fig


def plot_rule_blocks(
    modalities: Sequence[str], layers: Sequence[tuple[str, Mapping[tuple[str, str], str]]], title: str | None = None
) -> plt.Figure:
    """Which blocks of ``R`` each attention type of a model writes, one panel per layer type.

    ``R`` is drawn as a block matrix: the block in row ``s``, column ``q`` is ``R[s, q]`` (rows: the
    tokens being explained, columns: the tokens they draw on). A written block is shaded and hatched
    and carries the equation that writes it (Eq. 6-7 for self-attention, Eq. 10-11 for
    cross-attention); blocks the layer leaves alone stay white. Hatching, not colour, carries the
    meaning, so the figure reads in greyscale.

    Args:
        modalities: the token groups in block order, e.g. ``["text", "image"]``.
        layers: ``(panel title, {(row modality, column modality): label})`` per attention type.
        title: figure title.

    Returns:
        The figure.
    """
    n = len(modalities)
    fig, axes = plt.subplots(1, len(layers), figsize=(PANEL * 1.55 * len(layers), PANEL * 1.75), layout="constrained")
    axes = np.atleast_1d(axes)
    for ax, (name, writes) in zip(axes, layers):
        ax.set_xlim(-0.05, n + 0.05)
        ax.set_ylim(-0.05, n + 0.05)
        ax.set_aspect("equal")
        for i, s in enumerate(modalities):
            for j, q in enumerate(modalities):
                label = writes.get((s, q))
                ax.add_patch(
                    plt.Rectangle(
                        (j, n - 1 - i),
                        1,
                        1,
                        facecolor="0.8" if label else "white",
                        hatch="//" if label else None,
                        edgecolor="0.2",
                        linewidth=1.0,
                    )
                )
                ax.text(
                    j + 0.5,
                    n - 1 - i + 0.7,
                    f"R[{s}, {q}]",
                    ha="center",
                    va="center",
                    fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0} if label else None,
                )
                if label:
                    ax.text(
                        j + 0.5,
                        n - 1 - i + 0.32,
                        label,
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        fontweight="bold",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
                    )
        ax.set_xticks([j + 0.5 for j in range(n)], list(modalities), fontsize=8)
        ax.set_yticks([n - 1 - i + 0.5 for i in range(n)], list(modalities), fontsize=8)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ("left", "bottom", "top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("columns: tokens drawn on", fontsize=8)
        ax.set_ylabel("rows: tokens explained", fontsize=8)
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_region_maps(
    image: Tensor,
    rows: Mapping[str, Tensor],
    titles: Sequence[str],
    truth: Tensor | None = None,
    grid: int = 4,
) -> plt.Figure:
    """Region relevance of several questions about one image, one row per explained scalar or method.

    Each map is drawn on its region grid (nearest neighbour, with grid lines: a region is one
    value, not a blurred pixel map), min-max normalised per panel; each panel's own largest raw value
    is printed under it (the row label names only the method), so maps of very different magnitude
    stay comparable. ``truth`` outlines the
    objects each question refers to.

    Args:
        image: ``(3, H, W)`` the image.
        rows: ``{row label: (Q, grid * grid)}`` region relevance of the Q questions.
        titles: the Q column titles (the questions).
        truth: ``(Q, H, W)`` bool masks of the referred objects (an all-False mask draws nothing).
        grid: regions per side.

    Returns:
        The figure.
    """
    n_rows, n_cols = len(rows), len(titles)
    fig, all_axes = plt.subplots(
        n_rows,
        n_cols + 1,
        figsize=(PANEL * 1.25 * (n_cols + 1), PANEL * 1.35 * n_rows),
        layout="constrained",
        squeeze=False,
    )
    show_image(all_axes[0, 0], image, "input")
    for ax in all_axes[1:, 0]:
        ax.set_axis_off()
    axes = all_axes[:, 1:]
    size = image.shape[-1]
    grey = to_numpy_image(image).mean(axis=-1)
    artist = None
    for r, (label, maps) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            values = maps[c].detach().float().cpu().reshape(grid, grid)  # (grid, grid)
            shown = (values - values.min()) / (values.max() - values.min()).clamp(min=1e-12)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=(0, size, size, 0))
            artist = ax.imshow(
                shown.numpy(),
                cmap=HEATMAP_CMAP,
                vmin=0,
                vmax=1,
                alpha=0.55,
                extent=(0, size, size, 0),
                interpolation="nearest",
            )
            for k in range(1, grid):
                ax.axhline(k * size / grid, color="white", linewidth=0.4, alpha=0.6)
                ax.axvline(k * size / grid, color="white", linewidth=0.4, alpha=0.6)
            if truth is not None and bool(truth[c].any()):
                ax.contour(truth[c].float().numpy(), levels=[0.5], colors="cyan", linewidths=1.2, linestyles="--")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"raw max {float(values.max()):.1e}", fontsize=7)  # this panel's own maximum
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.colorbar(artist, ax=all_axes, shrink=0.7, label="relevance, min-max normalised per panel")
    return fig


def plot_token_matrix(
    tokens: Sequence[Sequence[str]],
    values: Sequence[Tensor | Sequence[float]],
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    label: str = "relevance (raw)",
) -> plt.Figure:
    """Several token strips on one raw colour scale with a colour bar (magnitudes stay comparable).

    Unlike :func:`plot_token_relevance` (each strip min-max normalised), every cell of every strip
    is drawn on the same scale, from 0 to the largest value shown, and the colour bar gives it.

    Args:
        tokens: one sequence of tokens per row.
        values: one ``(len(tokens[r]),)`` raw relevance per row.
        row_labels: a label per row (e.g. the pair's score).
        title: figure title.
        label: the colour bar's label.

    Returns:
        The figure.
    """
    width = max(len(t) for t in tokens)
    grid = np.full((len(tokens), width), np.nan)
    for r, row in enumerate(values):
        row = torch.as_tensor(row, dtype=torch.float32)[: len(tokens[r])]
        grid[r, : len(row)] = row.numpy()
    vmax = max(float(np.nanmax(grid)), 1e-12)
    fig, ax = plt.subplots(figsize=(0.75 * width + 2.5, 0.45 * len(tokens) + 0.9), layout="constrained")
    artist = ax.imshow(np.ma.masked_invalid(grid), cmap=HEATMAP_CMAP, vmin=0, vmax=vmax, aspect="auto")
    for r, row in enumerate(tokens):
        for c, token in enumerate(row):
            colour = "black" if grid[r, c] > 0.6 * vmax else "white"
            ax.text(c, r, token, ha="center", va="center", fontsize=8 if len(token) <= 7 else 6.5, color=colour)
    ax.set_xticks([])
    ax.set_yticks(range(len(tokens)), row_labels if row_labels is not None else [""] * len(tokens), fontsize=8)
    ax.set_facecolor("white")
    if title:
        ax.set_title(title)
    fig.colorbar(artist, ax=ax, label=label, shrink=0.9)
    return fig


def plot_map_flow(
    history: Sequence[Mapping[tuple[str, str], Tensor]],
    step_labels: Sequence[str],
    tokens: Sequence[str],
    streams: tuple[str, str] = ("text", "image"),
) -> plt.Figure:
    """The four relevancy maps of a two-stream model after chosen propagation steps, in raw values.

    One row per step, one column per map: ``R[a, a] - I``, ``R[a, b]``, ``R[b, a]``, ``R[b, b] - I``
    (the self maps minus their identity start). Each column has one colour scale for all its rows,
    with its colour bar, so a map's growth from step to step is visible.

    Args:
        history: the maps after each shown step, ``{(x, y): (Nx, Ny)}`` for one example and target.
        step_labels: one label per shown step.
        tokens: the first stream's tokens to show (the rows/columns beyond ``len(tokens)``, e.g.
            padding, are cut).
        streams: the two stream names, the token stream first.

    Returns:
        The figure.
    """
    a, b = streams
    keys = [(a, a), (a, b), (b, a), (b, b)]
    n = len(tokens)
    panels = []
    for maps in history:
        row = []
        for x, y in keys:
            m = maps[(x, y)].detach().float().cpu()
            if x == y:
                m = m - torch.eye(m.shape[-1])
            m = m[:n] if x == a else m
            m = m[:, :n] if y == a else m
            row.append(m.numpy())
        panels.append(row)
    fig, axes = plt.subplots(
        len(history), 4, figsize=(PANEL * 4.6, PANEL * 1.15 * len(history)), layout="constrained", squeeze=False
    )
    titles = [f"R[{a}, {a}] − I", f"R[{a}, {b}]", f"R[{b}, {a}]", f"R[{b}, {b}] − I"]
    for c in range(4):
        vmax = max(float(np.abs(p[c]).max()) for p in panels) or 1.0
        artist = None
        for r, row in enumerate(panels):
            ax = axes[r, c]
            artist = ax.imshow(row[c], cmap=HEATMAP_CMAP, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
            rows_are_tokens, cols_are_tokens = keys[c][0] == a, keys[c][1] == a
            ax.set_yticks(range(n), tokens, fontsize=6) if rows_are_tokens else ax.set_yticks([])
            ax.set_xticks(range(n), tokens, fontsize=6, rotation=90) if cols_are_tokens else ax.set_xticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(step_labels[r], fontsize=8)
            if not cols_are_tokens and r == len(panels) - 1:
                ax.set_xlabel(f"{b} regions", fontsize=7)
        fig.colorbar(artist, ax=axes[:, c], shrink=0.6, label="relevance (raw)", location="bottom")
    return fig


# ----------------------------------------------------------------------------- one call, one picture
# The notebooks' figure cells are one call each; the layout, selection and list-building live here.


def plot_perturbation_panels(
    curves: Mapping[str, Tensor],
    results: Mapping[str, Mapping[str, float]],
    steps: Sequence[float],
    panels: Sequence[tuple[str, str, str]],
    ylabel: str = "explained class still detected",
    ncols: int = 2,
    legend_loc: str = "best",
    legend_fontsize: float = 9,
) -> plt.Figure:
    """Perturbation curves of every method, one panel per test, AUCs in the legends.

    Args:
        curves: ``{method: (P, len(steps))}``, P tests (as returned by the evaluation functions of
            :mod:`gae_workbook.evaluate`); the first ``len(panels)`` of them are drawn, in order.
        results: ``{method: {metric: value}}``; each panel's AUC is read from its ``auc_key``.
        steps: the fractions removed at each step.
        panels: one ``(title, auc_key, xlabel)`` per test, e.g.
            ``("positive perturbation (lower is better)", "pos_auc", "fraction of pixels removed")``.
        ylabel: the y axis label of every panel.
        ncols: panels per row.
        legend_loc: where each panel's legend goes (a matplotlib ``loc``).
        legend_fontsize: the legends' font size (smaller where many curves share a small panel).

    Returns:
        The figure.
    """
    n_tests = next(iter(curves.values())).shape[0] if curves else 0
    if not 0 < len(panels) <= n_tests:
        raise ValueError(
            f"{len(panels)} panels for curves of {n_tests} tests; give one (title, auc_key, xlabel) per test drawn"
        )
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(PANEL * 2.2 * ncols, PANEL * 1.6 * nrows), layout="constrained", squeeze=False
    )
    for i, (ax, (title, auc_key, xlabel)) in enumerate(zip(axes.flat, panels)):
        plot_perturbation_curves(
            {m: c[i] for m, c in curves.items()},
            steps,
            title,
            auc={m: r[auc_key] for m, r in results.items() if auc_key in r},
            ax=ax,
            xlabel=xlabel,
            ylabel=ylabel,
        )
        ax.legend(frameon=False, fontsize=legend_fontsize, loc=legend_loc)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    return fig


def plot_caption_maps(image: Tensor, dual, captions: Sequence, is_true: Sequence[bool]) -> plt.Figure:
    """One image explained against each of its captions (a dual encoder's image tower, CLS row).

    Args:
        image: ``(1, 3, H, W)`` the image.
        dual: the :func:`gae_utils.dual.explain_dual` result for this image and the captions.
        captions: the captions (strings, or objects with a ``.text``), in the order they were explained.
        is_true: whether each caption describes the image; shown in the panel's title with the logit.

    Returns:
        The figure: the input, then one map per caption (min-max per map, the logit in the title).
    """
    import textwrap

    size = int(image.shape[-1])
    texts = [getattr(c, "text", c) for c in captions]  # strings or the workbook's caption objects
    titles = [
        textwrap.fill(text, 20) + f"\n{'TRUE' if ok else 'FALSE'}, logit {float(dual.logits[0, k]):.1f}"
        for k, (text, ok) in enumerate(zip(texts, is_true))
    ]
    return plot_panels(image, dual.image.heatmap(size)[:1], [titles])


def plot_sentence_pairs(pair, title: str | None = None) -> plt.Figure:
    """Token strips of sentence pairs explained for their similarity, two strips per pair.

    Args:
        pair: a :class:`gae_utils.similarity.PairExplanation` made with a tokenizer (token strings kept).
        title: figure title.

    Returns:
        The figure: per pair, the first sentence's strip (titled with the pair's cosine) over the
        second's; each strip min-max normalised (the colour bar says so), tokens printed on their cells.
    """
    if pair.tokens_first is None or pair.tokens_second is None:
        raise ValueError("the pair explanation holds no tokens; call explain_similarity(..., tokenizer=tokenizer)")
    n = len(pair.tokens_first)
    fig, axes = plt.subplots(2 * n, 1, figsize=(PANEL * 4.4, 1.3 * n), layout="constrained", squeeze=False)
    for i in range(n):
        sim = float(pair.similarity[i])
        plot_token_relevance(
            axes[2 * i, 0], pair.tokens_first[i], pair.first.relevance["text"][i], f"pair {i}: cos {sim:.2f}"
        )
        artist = plot_token_relevance(axes[2 * i + 1, 0], pair.tokens_second[i], pair.second.relevance["text"][i])
    fig.colorbar(artist, ax=axes, shrink=0.9, label="relevance\n(min-max per strip)")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_word_strips(relevance: Mapping[str, Tensor], words: Sequence[Sequence[str]]) -> plt.Figure:
    """Word relevance of several questions, one column per explained scalar, one row per question.

    Args:
        relevance: ``{column label: (Q, T)}`` text relevance whose column 0 is ``[CLS]`` and columns
            ``1 .. len(words[q])`` the question's words (special tokens and padding are not drawn).
        words: the Q questions' words.

    Returns:
        The figure; each strip is min-max normalised and labelled with its largest raw value.
    """
    n_cols, n_rows = len(relevance), len(words)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(PANEL * 2.5 * n_cols, 0.6 * n_rows), layout="constrained", squeeze=False
    )
    for col, (label, values) in enumerate(relevance.items()):
        for k, question in enumerate(words):
            strip = values[k, 1 : 1 + len(question)]
            plot_token_relevance(axes[k, col], question, strip, title=None)
            axes[k, col].set_ylabel(f"max {float(strip.max()):.1e}", rotation=0, ha="right", va="center", fontsize=7)
        axes[0, col].set_title(f"GAE word relevance, {label} target", loc="left")
    return fig


def plot_coattention_flow(rec, tokens: Sequence[str], example: int = 0, target: int = 0) -> plt.Figure:
    """The four maps of a two-stream recording after the single-stream layers, after each
    co-attention block and at the end (:func:`plot_map_flow` on the chosen steps of ``rec.history()``).

    Args:
        rec: a :class:`gae_utils.Recording` of a two-stream (text, image) model with co-attention blocks.
        tokens: the shown text tokens of ``example`` (e.g. ``["[CLS]", *words, "[SEP]"]``; padding is cut).
        example: which example of the batch.
        target: which target of that example.

    Returns:
        The figure.
    """
    from gae_utils.propagation import layer_steps

    history = rec.history()  # the maps after each propagation step, {(a, b): (B, K, Na, Nb)}
    steps = layer_steps(rec.layers)
    blocks = [i for i, step in enumerate(steps) if len(step) == 2]
    if not blocks:
        raise ValueError("the recording has no co-attention block (no step of two layers); use plot_map_flow")
    shown = {blocks[0] - 1: "after the\nsingle-stream layers"} if blocks[0] > 0 else {}
    shown |= {i: f"after co-attention\nblock {n + 1}" for n, i in enumerate(blocks)}
    shown[len(steps) - 1] = "at the end"
    snapshots = [{key: value[example, target] for key, value in history[i].items()} for i in shown]
    return plot_map_flow(snapshots, list(shown.values()), tokens)


def first_detection_per_class(rec, n_images: int = 2) -> list[tuple[int, int]]:
    """``(image, slot)`` of the first explained detection of each class in the first ``n_images``
    images of a DETR recording (duplicates of a class in one image left out; empty slots skipped)."""
    slots = []
    for b, row in enumerate(rec.extra["queries"][:n_images]):
        classes = [int(rec.target[b, k]) for k, q in enumerate(row) if q >= 0]
        slots += [(b, k) for k, c in enumerate(classes) if c not in classes[:k]]
    return slots


def plot_detection_methods(
    rec, images: Tensor, slots: Sequence[tuple[int, int]], class_names: Sequence[str], methods: Sequence[str]
) -> plt.Figure:
    """Every method's map of chosen detections: one row per ``(image, slot)``, one column per method.

    Args:
        rec: a DETR recording with one target per detection slot (``views.explore_detr``).
        images: ``(B, 3, H, W)`` the images shown under the maps.
        slots: the ``(image, slot)`` pairs to show, e.g. :func:`first_detection_per_class`.
        class_names: names of the class ids.
        methods: method names (``gu.method_names()``).

    Returns:
        The figure (maps min-max per panel).
    """
    size = tuple(images.shape[-2:])
    columns = {}
    for m in methods:
        heat = rec.explanation(m).heatmap(size)  # (B, K, H, W)
        columns[method_label(m)] = torch.stack([heat[b, k] for b, k in slots])
    labels = [f"image {b}: {class_names[int(rec.target[b, k])]}" for b, k in slots]
    return plot_heatmap_grid(images[[b for b, _ in slots]], columns, row_labels=labels)


def plot_query_mixing(rec, image: int, slot: int) -> plt.Figure:
    """``R[query, query] - I`` of one DETR detection, raw values with a colour bar.

    Args:
        rec: a DETR recording (``views.explore_detr``).
        image: the image index.
        slot: the detection slot of that image.

    Returns:
        The figure.
    """
    mixing = rec.explanation("gae").maps[("query", "query")][image, slot]  # (Nq, Nq)
    mixing = mixing - torch.eye(mixing.shape[-1])
    query = rec.extra["queries"][image][slot]
    fig, ax = plt.subplots(figsize=(PANEL * 1.5, PANEL * 1.25), layout="constrained")
    artist = plot_matrix(ax, mixing, f"R[query, query] − I, image {image}, detection {slot} (query {query})")
    ax.set_xlabel("object query drawn on")
    ax.set_ylabel("object query explained")
    fig.colorbar(artist, ax=ax, shrink=0.8, label="relevance (raw)")
    return fig


def plot_segmentation_examples(rec, detr, pixels: Tensor, images: Tensor, scenes: Sequence, n_images: int = 2):
    """DETR's weakly supervised segmentation on a few objects: GAE map, Otsu foreground, true mask.

    Each ground-truth object of the first ``n_images`` images is paired with the query whose box
    overlaps it most (IoU >= 0.5, :func:`gae_workbook.models.detection.box_matched_queries`); objects whose
    query was not explained (not a confident detection) are left out.

    Args:
        rec: a DETR recording of ``pixels`` (``views.explore_detr``).
        detr: the detector (run once more, without gradients, for its boxes).
        pixels: the detector's inputs.
        images: ``(B, 3, H, W)`` the images.
        scenes: the B ShapesWorld scenes (their masks are the ground truth).
        n_images: how many images to take objects from.

    Returns:
        The figure: one row per object, columns GAE map / Otsu foreground / ground truth.
    """
    from ..models.detection import box_matched_queries, otsu_foreground

    with torch.no_grad():
        boxes = detr(pixel_values=pixels).pred_boxes
    matched = box_matched_queries(boxes, list(scenes))  # (query, object) pairs with box IoU >= 0.5
    maps = rec.explanation("gae").heatmap(tuple(images.shape[-2:]))  # (B, K, H, W)
    rows, heat, truth = [], [], []
    for b, scene in enumerate(list(scenes)[:n_images]):
        explained = rec.extra["queries"][b]
        for q, o in matched[b]:
            if q in explained:
                rows.append(b)
                heat.append(maps[b, explained.index(q)])
                truth.append(torch.from_numpy(scene.objects[o].mask.copy()).float())
    if not rows:
        raise ValueError(f"no explained detection matches a ground-truth object in the first {n_images} images")
    heat_t = torch.stack(heat)
    columns = {
        "GAE map": heat_t,
        "Otsu foreground": otsu_foreground(heat_t).float(),
        "ground truth": torch.stack(truth),
    }
    return plot_heatmap_grid(images[rows], columns, colorbar=False)


def plot_alignment_methods(
    rec, source_tokens: Sequence[str], target_tokens: Sequence[str], methods: Sequence[str], highlight: int | None
) -> plt.Figure:
    """Every method's target x source relevance of one translation, side by side (rows min-max normalised).

    Args:
        rec: a generation recording (:func:`gae_utils.generation.record_generation`) of one sentence.
        source_tokens: the source tokens (columns).
        target_tokens: the generated tokens (rows).
        methods: method names (``gu.method_names()``).
        highlight: a row to frame in every panel.

    Returns:
        The figure.
    """
    fig, axes = plt.subplots(
        1, len(methods), figsize=(PANEL * 1.9 * len(methods), PANEL * 1.6), squeeze=False, layout="constrained"
    )
    artist = None
    for ax, method in zip(axes[0], methods):
        rows = rec.explanation(method).relevance["source"][0]  # (T, S)
        artist = plot_alignment(ax, rows, source_tokens, target_tokens, method_label(method), highlight=highlight)
    if artist is not None:
        fig.colorbar(artist, ax=axes, shrink=0.8, label="relevance\n(min-max per row)")
    return fig


def plot_token_methods(
    rec,
    methods: Sequence[str],
    example: int,
    tokens: Sequence[str],
    frame: int | None = None,
    title: str | None = None,
    explained: int | None = None,
) -> plt.Figure:
    """One prompt's token relevance for every method, one strip per method, in raw values.

    Every method is read the same way: the explained row (the last real token ``p``, whose next
    token is explained) over the tokens before it. The explained position itself is left out of the
    colour scale and drawn hatched: its value only restates that ``p`` is relevant to itself (for the
    baselines' ``map - I`` it is negative, about -1, and would stretch the scale). Each strip is drawn
    from 0 to its own largest raw value, with its own colour bar, so a method whose values are all
    near 0 looks dark instead of being stretched to full contrast.

    Args:
        rec: a recording of a single-stream text model (relevance under ``"text"``).
        methods: method names (``gu.method_names()``).
        example: which prompt of the batch.
        tokens: its tokens, without padding.
        frame: a token position to frame in every strip (e.g. the word that determines the answer).
        title: figure title.
        explained: the explained position ``p`` (default: the last token).

    Returns:
        The figure.
    """
    n = len(tokens)
    p = n - 1 if explained is None else explained
    fig, axes = plt.subplots(
        len(methods), 1, figsize=(PANEL * 7, 0.62 * len(methods) + 0.7), layout="constrained", squeeze=False
    )
    cmap = matplotlib.colormaps[HEATMAP_CMAP].copy()
    cmap.set_bad("0.85")
    for ax, method in zip(axes[:, 0], methods):
        relevance = rec.explanation(method).relevance["text"][example, :n].detach().float().cpu()  # (n,) raw
        others = torch.cat([relevance[:p], relevance[p + 1 :]])
        vmax = max(float(others.max()), 1e-12)
        vmin = min(float(others.min()), 0.0)
        shown = np.ma.masked_array(relevance[None].numpy(), mask=np.arange(n)[None] == p)
        artist = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.add_patch(plt.Rectangle((p - 0.5, -0.5), 1, 1, fill=False, hatch="///", edgecolor="0.5", linewidth=0))
        for i, (token, v) in enumerate(zip(tokens, relevance.tolist())):
            bright = i != p and (v - vmin) > 0.6 * (vmax - vmin)
            ax.text(
                i,
                0,
                token,
                ha="center",
                va="center",
                fontsize=9 if len(token) <= 7 else 7,
                color="black" if bright or i == p else "white",
            )
        ax.set_xticks([])
        ax.set_yticks([])
        median = float(others.median())
        ax.set_title(
            f"{method_label(method)}   (raw max {vmax:.2g}, median {median:.2g})",
            loc="left",
            fontsize=9,
        )
        if frame is not None:
            ax.add_patch(plt.Rectangle((frame - 0.5, -0.5), 1, 1, fill=False, edgecolor="deepskyblue", linewidth=2.5))
        bar = fig.colorbar(artist, ax=ax, pad=0.01, fraction=0.03, aspect=6)
        bar.ax.tick_params(labelsize=7)
    note = f"hatched: the explained position {tokens[p]!r}, left out of each row's scale; colour bars: raw values"
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=9)
    return fig


def plot_small_matrices(
    matrices: Mapping[str, Tensor],
    tokens: Sequence[str],
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> plt.Figure:
    """Small matrices (e.g. a 3-token attention map) side by side, every value written in its cell.

    Each panel has its own colour scale from ``min(0, min)`` to its maximum, rows and columns are
    labelled with the tokens, and the numbers are printed, so the figure can be checked by hand.

    Args:
        matrices: ``{panel title: (N, M) values}``.
        tokens: the N row labels (also the column labels when ``columns`` is None and M == N).
        title: figure title.
        columns: the M column labels, when they are not the tokens (e.g. value dimensions).

    Returns:
        The figure.
    """
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(PANEL * 0.95 * len(matrices), PANEL * 1.05), layout="constrained", squeeze=False
    )
    for ax, (label, matrix) in zip(axes[0], matrices.items()):
        m = torch.as_tensor(matrix, dtype=torch.float32).detach().cpu()
        low, high = min(float(m.min()), 0.0), max(float(m.max()), 1e-12)
        ax.imshow(m.numpy(), cmap=MATRIX_CMAP, vmin=low, vmax=high)
        for (r, c), v in np.ndenumerate(m.numpy()):
            bright = (v - low) > 0.6 * (high - low)
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if bright else "white")
        cols = list(columns) if columns is not None else list(tokens)
        ax.set_xticks(range(m.shape[1]), cols[: m.shape[1]], fontsize=7)
        ax.set_yticks(range(m.shape[0]), list(tokens)[: m.shape[0]], fontsize=7)
        ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
