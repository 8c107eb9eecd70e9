"""Interactive explorers: pure render functions, and ipywidgets that only wire controls to them.

The tensors they draw come from :mod:`gae_workbook.exploration.views`. Each ``render_*`` function is a pure
function of a recording and the control values that returns a matplotlib figure; the tests call
them directly. An explorer records once (:func:`~gae_workbook.exploration.views.explore_record` records a batch
for *every* class: one forward pass, one backward per class, per-head maps kept), keeps one figure
per view, and on a control change redraws only the views that depend on it: each ``render_*``
takes ``fig=`` (a figure it returned before) and then updates that figure's artists in place
(``set_data``, ``set_clim``) instead of building a new one. A view is shown as one PNG in an
``ipywidgets.Image``, so every control change replaces exactly one ``<img>`` in the page. The PNG
is drawn by parts (:class:`_Blitter`): axes, ticks and labels once, then per change only the
data, titles and colour bars, on a copy of that background; the result equals a full draw.

- :func:`render_layer`: what layer ``l`` contributes: the explained row of ``R`` after layer ``l``
  with the matrix layer ``l`` added to ``R`` (Eq. 6's term; ``R`` itself is dominated by its
  identity start), the Eq. 5 map ``Abar`` of layer ``l``, or one head's ``(dA * A)^+``; the
  explained row over the image and the full token x token matrix, both with raw-valued colour bars.
- :func:`render_methods`: GAE beside the baselines for one example and class.
- Two-stream models (co-attention VQA): :func:`render_flow` (the four maps step by step),
  :func:`render_flow_step` (the four maps after one step), :func:`render_stream_row` (one row of one
  map over the image or the words); :func:`coattention_explorer`.
- Dual encoders, seq2seq and DETR: :func:`dual_explorer`, :func:`translation_explorer`,
  :func:`detr_explorer` and their render functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from io import BytesIO

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import Colorbar
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.transforms import Bbox
from torch import Tensor, nn

from gae_utils.dual import explain_dual
from gae_utils.explainer import Recording
from gae_utils.generation import record_generation
from gae_utils.heatmaps import normalize_maps
from gae_utils.methods import method_label, method_names
from gae_utils.plotting import to_numpy_image
from gae_utils.rules import head_relevance

from .figures import (
    HEATMAP_CMAP,
    MATRIX_CMAP,
    PANEL,
    overlay,
    plot_alignment,
    plot_matrix,
    plot_token_relevance,
    show_image,
)
from .views import (
    LAYER_VIEWS_DETR,
    PAIRS,
    VIEWS,
    cross_attention_matrix,
    detr_boxes,
    detr_layer_map,
    detr_slot,
    dual_record,
    dual_tower,
    explore_detr,
    explore_record,
    flow_steps,
    layer_labels,
    layer_matrix,
    layers_attending,
    readout_grid,
    relevancy_added,
    row_heatmap,
    shown_matrix,
    stream_row,
)

__all__ = [
    "MEAN_HEAD",
    "figure_png",
    "render_layer",
    "render_steps",
    "render_methods",
    "explorer",
    "render_flow",
    "render_flow_step",
    "render_stream_row",
    "coattention_explorer",
    "render_dual_pair",
    "dual_explorer",
    "render_translation",
    "render_translation_layer",
    "translation_explorer",
    "render_detections",
    "render_detr_query",
    "detr_explorer",
]


MEAN_HEAD = -1  # the head menus' "mean" entry: ipywidgets reads a None value as "nothing selected"


def _head_options(n_heads: int) -> list[tuple[str, int]]:
    return [("mean", MEAN_HEAD), *[(str(h), h) for h in range(n_heads)]]


def _head(value: int) -> int | None:
    """A head menu's value as the render functions take it (None: the mean over heads)."""
    return None if value == MEAN_HEAD else value


# ----------------------------------------------------------------------------- figures kept in place


class ExplorerFigure(Figure):
    """A figure that an explorer keeps and redraws: it holds its painter (the artists made once and
    updated in place), its :class:`_Blitter`, the axes redrawn whole on every change and its colour
    bars, so that nothing is stored on matplotlib's own objects."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.painter: _Painter | None = None
        self.blitter: _Blitter | None = None
        self.live_axes: list[plt.Axes] = []  # axes whose ticks change with the data (see live_axes)
        self.colorbars: dict[plt.Axes, Colorbar] = {}  # colour bar axes -> their colour bar

    def colorbar(self, mappable, *args, **kwargs) -> Colorbar:
        bar = super().colorbar(mappable, *args, **kwargs)
        self.colorbars[bar.ax] = bar
        return bar


def _new_figure(figsize: tuple[float, float], live: bool) -> ExplorerFigure:
    """A constrained-layout figure; ``live``: outside pyplot (an explorer keeps it; the inline
    backend never shows or closes it on its own)."""
    if live:
        fig = ExplorerFigure(figsize=figsize, dpi=EXPLORER_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        return fig
    return plt.figure(figsize=figsize, layout="constrained", FigureClass=ExplorerFigure)


def _painter(fig: Figure | None, kind: type, figsize: tuple[float, float], *args) -> _Painter:
    """The painter of ``fig`` (made by ``kind`` before), or a new figure with a new painter."""
    if fig is not None:
        painter = fig.painter if isinstance(fig, ExplorerFigure) else None
        if not isinstance(painter, kind):
            raise ValueError(f"fig was not made by this render function (expected a {kind.__name__} figure)")
        return painter
    return _attach(kind, _new_figure(figsize, live=False), *args)


def _attach(kind: type, fig: ExplorerFigure, *args) -> _Painter:
    """A new painter of ``kind`` on ``fig``, kept by the figure."""
    fig.painter = painter = kind(fig, *args)
    return painter


EXPLORER_DPI = 100  # the explorers' PNG resolution (independent of the notebook's figure settings)


def _encode_png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas' pixels as PNG bytes: RGB (an explorer's figure is opaque), light compression."""
    from PIL import Image

    width, height = canvas.get_width_height(physical=True)
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]  # (H, W, 3)
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes: one Agg draw of the whole figure at its own dpi, light compression.
    ``savefig`` would draw twice (a layout pass, then the picture) and follow the notebook's
    ``savefig.bbox="tight"``, a third pass."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return _encode_png(canvas)


def live_axes(ax: plt.Axes) -> plt.Axes:
    """Mark ``ax`` as redrawn whole on every explorer redraw (its ticks change with the data: a bar
    chart rebuilt each time); other axes keep their ticks and labels from the last full draw."""
    fig = ax.figure.figure  # the root figure (an axes of a subfigure too)
    if isinstance(fig, ExplorerFigure) and ax not in fig.live_axes:
        fig.live_axes.append(ax)
    return ax


class _Blitter:
    """Redraws an explorer's figure by parts: the static parts once, the data on every change.

    Drawing a figure with Agg is dominated by its text (tick labels, axis labels, titles), which
    most control changes leave as they are. So the figure is drawn once without its *live*
    artists (per axes: images, meshes, patches, lines, texts, titles, frames; whole axes for
    colour bars and axes marked :func:`live_axes`), that picture is kept, and each redraw restores
    it and draws only the live artists on top. Texts and colour bars are *stamps*: once drawn, the
    pixels of their box are kept per content (text and font, or colour limits), and a redraw that
    shows the same content again copies those pixels back instead of drawing the glyphs. Whenever
    the static parts change (an axes' position, limits, tick positions or labels, axis labels,
    visibility) the figure is drawn in full again and the stamps are dropped. The picture equals a
    full draw (the tests compare them).
    """

    MAX_STAMPS = 256

    def __init__(self, fig: ExplorerFigure):
        self.fig = fig
        self.canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
        self.background = None
        self.key = None
        self.stamps: dict = {}

    def _whole(self, ax: plt.Axes) -> bool:
        return ax in self.fig.colorbars or ax in self.fig.live_axes

    @staticmethod
    def _axes_key(ax: plt.Axes):
        if not ax.get_visible():
            return None

        def axis_key(axis):
            if not ax.axison:
                return None
            labels = getattr(axis.get_major_formatter(), "seq", None)
            return tuple(axis.get_majorticklocs()), tuple(labels or ()), axis.label.get_text(), axis.get_visible()

        return ax.get_position().bounds, ax.get_xlim(), ax.get_ylim(), axis_key(ax.xaxis), axis_key(ax.yaxis)

    def _static_key(self):
        return self.canvas.get_width_height(physical=True), tuple(
            (id(ax), None if self._whole(ax) else self._axes_key(ax)) for ax in self.fig.axes
        )

    def _live(self) -> tuple[list, list]:
        """The live artists in drawing order: stamps (texts, colour bars) first, then the rest."""
        from matplotlib.axis import Axis

        live = []
        for ax in sorted(self.fig.axes, key=lambda a: a.zorder):
            if not ax.get_visible():  # a hidden panel draws nothing, whatever its artists say
                continue
            if self._whole(ax):
                live.append(ax)
                continue
            framed = ax.axison and ax.get_frame_on()
            spines = set(ax.spines.values())
            children = [
                a
                for a in ax.get_children()
                if a is not ax.patch and not isinstance(a, Axis) and (framed or a not in spines)
            ]
            live += sorted(children, key=lambda a: a.zorder)
        axes = set(self.fig.axes)
        live += sorted((a for a in self.fig.get_children() if a is not self.fig.patch and a not in axes),
                       key=lambda a: a.zorder)  # fmt: skip
        stamps = [a for a in live if self._stamp_key(a) is not None]
        ids = {id(a) for a in stamps}
        return stamps, [a for a in live if id(a) not in ids]

    def _stamp_key(self, artist):
        """What a stamp's pixels depend on (the axes stay where they are while the background holds)."""
        from matplotlib.text import Text

        if isinstance(artist, Text) and type(artist) is Text and not artist.get_wrap():
            return (
                "text", id(artist), artist.get_text(), artist.get_unitless_position(), artist.get_fontproperties(),
                str(artist.get_color()), artist.get_rotation(), artist.get_ha(), artist.get_va(), artist.get_alpha(),
            )  # fmt: skip
        colorbar = self.fig.colorbars.get(artist)
        if colorbar is not None:
            norm, cmap = colorbar.mappable.norm, colorbar.mappable.get_cmap()
            return (
                "colorbar", id(artist), artist.get_xlim(), artist.get_ylim(), artist.yaxis.label.get_text(),
                artist.xaxis.label.get_text(), type(norm).__name__, getattr(norm, "gamma", None), cmap.name,
                colorbar.mappable.get_alpha(),
            )  # fmt: skip
        return None

    def _box(self, artist, renderer) -> Bbox | None:
        """The pixels a stamp covers (padded; clipped to the figure)."""
        box = artist.get_tightbbox(renderer) if artist in self.fig.colorbars else artist.get_window_extent(renderer)
        return None if box is None else Bbox.intersection(box.padded(2), self.fig.bbox)

    def _full_draw(self, live: list) -> None:
        """Draw the background: the figure without its live artists. Texts are made transparent
        rather than hidden, so that the axes place their titles as they do in a full draw."""
        from matplotlib.text import Text

        texts = [(a, a.get_alpha()) for a in live if isinstance(a, Text) and a.get_visible()]
        hidden = [a for a in live if not isinstance(a, Text) and a.get_visible()]
        for artist, _ in texts:
            artist.set_alpha(0.0)
        for artist in hidden:
            artist.set_visible(False)
        try:
            self.canvas.draw()
            self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        finally:
            for artist, alpha in texts:
                artist.set_alpha(alpha)
            for artist in hidden:
                artist.set_visible(True)
        self.stamps.clear()

    def png(self) -> bytes:
        """The figure as PNG bytes, drawing only what may have changed since the last call."""
        if self.background is None:  # the first draw: the whole figure, as laid out by its layout engine
            self.canvas.draw()
            engine = self.fig.get_layout_engine()
            if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
                self.fig.set_layout_engine("none")  # keep that layout: controls change data, not panels
        stamps, rest = self._live()
        key = self._static_key()
        if key != self.key or self.background is None:
            self._full_draw(stamps + rest)
            self.key = key
        else:
            self.canvas.restore_region(self.background)
        renderer = self.canvas.get_renderer()
        stamps = [a for a in stamps if a.get_visible() and not (hasattr(a, "get_text") and not a.get_text())]
        keys = [self._stamp_key(a) for a in stamps]
        boxes = [self.stamps[k][1] if k in self.stamps else self._box(a, renderer) for a, k in zip(stamps, keys)]
        for k, (artist, stamp_key, box) in enumerate(zip(stamps, keys, boxes)):
            # a stamp holds its box's pixels: it is used only where no other stamp's box overlaps it
            alone = box is not None and not any(
                j != k and other is not None and box.overlaps(other) for j, other in enumerate(boxes)
            )
            if alone and stamp_key in self.stamps:
                self.canvas.restore_region(self.stamps[stamp_key][0])
                continue
            artist.draw(renderer)
            if alone and len(self.stamps) < self.MAX_STAMPS:
                self.stamps[stamp_key] = (self.canvas.copy_from_bbox(box), box)
        for artist in rest:
            if artist.get_visible():
                artist.draw(renderer)
        return _encode_png(self.canvas)


def _show(out, fig: ExplorerFigure) -> None:
    """Show ``fig`` in the ``ipywidgets.Image`` ``out`` (its PNG replaces what ``out`` showed).

    The first show lays the figure out; later shows keep that layout and redraw only the parts
    that changed (:class:`_Blitter`)."""
    if fig.blitter is None:
        fig.blitter = _Blitter(fig)
    out.value = fig.blitter.png()


def _image_output():
    import ipywidgets as W

    return W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))


def _extent(height: int, width: int) -> tuple[float, float, float, float]:
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def _set_image(artist: AxesImage, data: np.ndarray, extent: tuple[float, float, float, float] | None = None) -> None:
    """Replace an ``imshow`` artist's data (and its extent and the axes' limits when the shape changes)."""
    artist.set_data(data)
    extent = extent or _extent(*data.shape[:2])
    artist.set_extent(extent)
    artist.axes.set_xlim(extent[0], extent[1])
    artist.axes.set_ylim(extent[2], extent[3])


def _clim(values: np.ndarray) -> tuple[float, float]:
    """Colour limits from 0 (or the minimum, when negative) to the maximum: raw values, not min-max."""
    low = min(0.0, float(values.min()))
    return low, max(float(values.max()), low + 1e-12)


def _numpy(t: Tensor | np.ndarray) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t, dtype=np.float32)


def _grey(image: Tensor) -> np.ndarray:
    return to_numpy_image(image).mean(axis=-1)  # (H, W)


def _blank(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


class _Painter:
    """A figure whose artists are made once; ``draw`` updates them in place."""

    def __init__(self, fig: Figure):
        self.fig = fig


class _GridOverlay:
    """A raw-valued grid (patches, regions) over a greyscale image, nearest-neighbour, with a colour bar."""

    def __init__(self, fig: Figure, ax: plt.Axes, label: str):
        self.ax = ax
        self.grey = ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1)
        self.heat = ax.imshow(np.zeros((2, 2)), cmap=HEATMAP_CMAP, alpha=0.65, interpolation="nearest")
        self.bar = fig.colorbar(self.heat, ax=ax, shrink=0.8, label=label)
        _blank(ax)

    def draw(self, image: Tensor, grid: np.ndarray, title: str, clim: tuple[float, float] | None = None) -> None:
        grey = _grey(image)
        _set_image(self.grey, grey)
        _set_image(self.heat, grid, _extent(*grey.shape))
        self.heat.set_clim(*(clim or _clim(grid)))
        self.ax.set_title(title, fontsize=9)


# ----------------------------------------------------------------------------- single stream (ViT)


_VIEW_TITLES = {
    "relevancy": ("R after layer {l}: explained row", "added by layer {l}: R_{l} - R_{p} (Eq. 6)"),
    "attn_bar": ("Abar at layer {l}: explained row", "Abar at layer {l} (Eq. 5)"),
    "head": ("head {h} at layer {l}: explained row", "head {h}: (dA*A)+ at layer {l}"),
}


class _LayerPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        ax_in, ax_row, ax_mat = fig.subplots(1, 3, width_ratios=[1, 1.2, 1.2])
        self.input = ax_in.imshow(np.zeros((2, 2, 3)))
        _blank(ax_in)
        self.row = _GridOverlay(fig, ax_row, "relevance (raw)")
        self.matrix = ax_mat.imshow(
            np.zeros((2, 2)), cmap=MATRIX_CMAP, interpolation="nearest", norm=PowerNorm(0.5, vmin=0, vmax=1)
        )
        fig.colorbar(self.matrix, ax=ax_mat, shrink=0.8, label="raw value (sqrt scale)")
        ax_mat.set_xlabel("key token")
        ax_mat.set_ylabel("query token")
        self.ax_in, self.ax_mat = ax_in, ax_mat

    def draw(self, image: Tensor, grid: Tensor, matrix: Tensor, titles: tuple[str, str, str], suptitle: str) -> None:
        _set_image(self.input, to_numpy_image(image))
        self.ax_in.set_title(titles[0], fontsize=9)
        self.row.draw(image, _numpy(grid), titles[1])
        m = _numpy(matrix)
        _set_image(self.matrix, m)
        self.matrix.set_clim(*_clim(m))  # square-root colour scale: one large entry does not hide the rest
        self.ax_mat.set_title(titles[2], fontsize=9)
        self.fig.suptitle(suptitle, fontsize=10)


def render_layer(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    target: int = 0,
    layer: int = -1,
    view: str = "relevancy",
    head: int = 0,
    start_layer: int = 0,
    class_names: Sequence[str] | None = None,
    *,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Input, the explained row of the chosen layer view over the image, and the full matrix.

    The relevancy view shows the explained row of ``R`` after layer ``l`` over the image and, as a
    matrix, what layer ``l`` itself added, ``R_l - R_{l-1} = Abar_l @ R_{l-1}`` (Eq. 6). ``R``
    itself would not do: it starts as ``I``, and next to the identity's 1s the layers' additions
    (often ~0.01) vanish on one colour scale, so moving the layer slider would change nothing
    visible. Both panels use raw values with a colour bar (no min-max; the matrix on a square-root
    scale), so the size of what a layer adds is read off the bar.

    Args:
        rec: a recording with per-head maps (:func:`~gae_workbook.exploration.views.explore_record`).
        images: ``(B, 3, H, W)`` the recorded images in [0, 1].
        index: example.
        target: target column (the class for an ``explore_record`` recording).
        layer: layer index (negative counts from the end).
        view: one of :data:`~gae_workbook.exploration.views.VIEWS`.
        head: head for ``view="head"``.
        start_layer: first accumulated layer of the relevancy view.
        class_names: names of the target columns.
        history: ``rec.history(start_layer)``, when the caller keeps it.
        fig: a figure this function returned before: updated in place and returned.
    """
    layer = layer % len(rec.layers)
    matrix = layer_matrix(rec, index, target, layer, view, head, start_layer, history)  # (N, N)
    row = readout_grid(rec.layout, shown_matrix(matrix, view))  # (h, w) the explained row, raw
    if view == "relevancy":  # the layer's own term: changes from layer to layer, unlike the accumulated R
        matrix = relevancy_added(rec, index, target, layer, start_layer, history)  # (N, N)
    name = class_names[target] if class_names is not None else f"class {target}"
    before = "I" if layer == start_layer else f"{layer - 1}"
    row_title, matrix_title = (t.format(l=layer, h=head, p=before) for t in _VIEW_TITLES[view])
    painter = _painter(fig, _LayerPainter, (PANEL * 3.6, PANEL * 1.35))
    painter.draw(
        images[index],
        row,
        matrix,
        ("input", row_title, matrix_title),
        f"example {index}, explaining '{name}'",
    )
    return painter.fig


def render_steps(rec: Recording, images: Tensor, index: int = 0, target: int = 0, start_layer: int = 0) -> plt.Figure:
    """The method step by step: per layer, the Eq. 5 map ``Abar`` (top) and ``R`` after it (bottom)."""
    layers = list(range(start_layer, len(rec.layers)))
    history = rec.history(start_layer)
    size = tuple(images.shape[-2:])
    fig, axes = plt.subplots(
        2, len(layers) + 1, figsize=(PANEL * (len(layers) + 1), PANEL * 2.1), squeeze=False, layout="constrained"
    )
    show_image(axes[0, 0], images[index], "input")
    axes[1, 0].axis("off")
    for col, layer in enumerate(layers, start=1):
        rec_layer = rec.layers[layer]
        key = (rec_layer.query, rec_layer.key)
        overlay(
            axes[0, col],
            images[index],
            row_heatmap(rec.layout, rec_layer.attn_bar[index, target], size),
            f"Abar, layer {layer}",
        )
        overlay(
            axes[1, col],
            images[index],
            row_heatmap(rec.layout, history[col - 1][key][index, target], size),
            f"R after layer {layer}",
        )
    axes[0, 1].set_ylabel("this layer (Eq. 5)")
    axes[1, 1].set_ylabel("accumulated (Eq. 6)")
    return fig


class _MethodsPainter(_Painter):
    def __init__(self, fig: Figure, methods: Sequence[str]):
        super().__init__(fig)
        axes = fig.subplots(1, len(methods) + 1)
        self.methods = list(methods)
        self.ax_in, self.axes = axes[0], list(axes[1:])
        self.input = self.ax_in.imshow(np.zeros((2, 2, 3)))
        _blank(self.ax_in)
        self.grey, self.heat = [], []
        for ax, method in zip(self.axes, self.methods):
            self.grey.append(ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1))
            self.heat.append(ax.imshow(np.zeros((2, 2)), cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.6))
            ax.set_title(method_label(method), fontsize=9)
            _blank(ax)
        fig.colorbar(self.heat[-1], ax=self.axes[-1], shrink=0.8, label="min-max per map")

    def draw(self, image: Tensor, heats: Sequence[Tensor], title: str, highlight: str | None) -> None:
        _set_image(self.input, to_numpy_image(image))
        self.ax_in.set_title(title, fontsize=9)
        grey = _grey(image)
        for ax, method, g, h, heat in zip(self.axes, self.methods, self.grey, self.heat, heats):
            _set_image(g, grey)
            _set_image(h, _numpy(heat))
            chosen = method == highlight
            ax.title.set_fontweight("bold" if chosen else "normal")
            for spine in ax.spines.values():
                spine.set_visible(chosen)
                spine.set_linewidth(3)


def render_methods(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    target: int = 0,
    methods: Sequence[str] | None = None,
    start_layer: int = 0,
    class_names: Sequence[str] | None = None,
    highlight: str | None = None,
    *,
    heatmaps: Callable[[str, int], Tensor] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The input and every method's map for one example and target column, side by side.

    Args:
        rec, images, index, target, start_layer, class_names: see :func:`render_layer`.
        methods: the methods shown (default: :func:`~gae_utils.methods.method_names`).
        highlight: one method whose panel is framed (the explorer's method toggle).
        heatmaps: ``(method, start_layer) -> (B, K, H, W)`` maps, when the caller caches them.
        fig: a figure this function returned before (same ``methods``): updated in place.
    """
    methods = list(methods or method_names())
    size = tuple(images.shape[-2:])
    heatmaps = heatmaps or (lambda method, start: rec.explanation(method, start).heatmap(size))
    name = class_names[target] if class_names is not None else f"class {target}"
    painter = _painter(fig, _MethodsPainter, (PANEL * (len(methods) + 1.3), PANEL * 1.15), methods)
    painter.draw(images[index], [heatmaps(m, start_layer)[index, target] for m in methods], f"'{name}'", highlight)
    return painter.fig


class _Wiring:
    """Controls wired to views: a change redraws only the views that read that control.

    Args:
        views: ``{name: (controls read, draw)}``; ``draw()`` renders and shows one view.
    """

    def __init__(self, views: dict[str, tuple[Sequence, Callable[[], None]]]):
        self.views = views
        self.held = False

    def redraw(self, *names: str) -> None:
        for name in names or self.views:
            self.views[name][1]()

    def observe(self, before: Callable[[object], None] | None = None) -> None:
        """Redraw on every change; ``before(control)`` runs first (it may change other controls
        while the views are held: they redraw once, after it)."""
        controls = {id(c): c for _, (cs, _) in self.views.items() for c in cs}

        def changed(change):
            if self.held:
                return
            self.held = True
            try:
                if before is not None:
                    before(change.owner)
            finally:
                self.held = False
            self.redraw(*[n for n, (cs, _) in self.views.items() if any(c is change.owner for c in cs)])

        for control in controls.values():
            control.observe(changed, names="value")


def explorer(model: nn.Module, images: Tensor, class_names: Sequence[str] | None = None):
    """An ipywidgets explorer of one batch: example, class, method, layer view, layer, head, start_layer.

    Records once (every class); each control redraws only the views that depend on it, in place.

    Returns:
        An ``ipywidgets.VBox``: the controls and two ``ipywidgets.Image`` views (the methods row,
        then the layer view); display it in a notebook.
    """
    import ipywidgets as W

    rec = explore_record(model, images, len(class_names) if class_names is not None else None)
    n_layers = len(rec.layers)
    n_heads = rec.layers[-1].attn.shape[1]
    n_classes = rec.scores.shape[1]
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(n_classes)]
    size = tuple(images.shape[-2:])
    history = lru_cache(maxsize=None)(rec.history)
    heatmaps = lru_cache(maxsize=None)(lambda method, start: rec.explanation(method, start).heatmap(size))
    for start_layer in range(n_layers):  # every start_layer's maps now, for all examples and classes at once:
        history(start_layer)  # a control change is then only a redraw
        for name in method_names():
            heatmaps(name, start_layer)
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="example")
    target = W.Dropdown(
        options=[(n, k) for k, n in enumerate(names)], value=int(rec.logits[0].argmax()), description="class"
    )
    method = W.ToggleButtons(options=method_names(), description="method")
    view = W.ToggleButtons(options=VIEWS, description="layer view")
    layer = W.IntSlider(n_layers - 1, 0, n_layers - 1, description="layer")
    head = W.IntSlider(0, 0, n_heads - 1, description="head", disabled=True)
    start = W.IntSlider(0, 0, n_layers - 1, description="start_layer")
    out_methods, out_layer = _image_output(), _image_output()
    methods_fig = _new_figure((PANEL * (len(method_names()) + 1.3), PANEL * 1.15), live=True)
    layer_fig = _new_figure((PANEL * 3.6, PANEL * 1.35), live=True)
    _attach(_MethodsPainter, methods_fig, method_names())
    _attach(_LayerPainter, layer_fig)

    def draw_methods():
        fig = render_methods(
            rec,
            images,
            index.value,
            target.value,
            None,
            start.value,
            names,
            method.value,
            heatmaps=heatmaps,
            fig=methods_fig,
        )
        _show(out_methods, fig)

    def draw_layer():
        lay = max(layer.value, start.value) if view.value == "relevancy" else layer.value
        fig = render_layer(
            rec,
            images,
            index.value,
            target.value,
            lay,
            view.value,
            head.value,
            start.value,
            names,
            history=history(start.value),
            fig=layer_fig,
        )
        _show(out_layer, fig)

    wiring = _Wiring(
        {
            "methods": ((index, target, method, start), draw_methods),
            "layer": ((index, target, view, layer, head, start), draw_layer),
        }
    )
    wiring.observe(lambda control: setattr(head, "disabled", view.value != "head"))
    wiring.redraw()
    return W.VBox(
        [W.HBox([index, target]), method, start, out_methods, W.HBox([view]), W.HBox([layer, head]), out_layer]
    )


# ------------------------------------------------------------------ two modalities (co-attention)


def render_flow(
    rec: Recording,
    index: int = 0,
    target: int = 0,
    steps: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
) -> plt.Figure:
    """How relevance flows between two streams: the four maps ``R[t, t], R[t, i], R[i, t], R[i, i]``
    (columns) after each chosen step of the propagation (rows), for one example and target. The
    self maps are shown minus their identity start.

    Args:
        rec: a recording of a two-modality model (text and image).
        index: example in the batch.
        target: target column.
        steps: indices into :func:`flow_steps` (default: every step).
        tokens: the example's text tokens, to label the text axes.
    """
    history = rec.history()
    labels = flow_steps(rec)
    steps = list(range(len(history))) if steps is None else [s % len(history) for s in steps]
    fig, axes = plt.subplots(
        len(steps), 4, figsize=(PANEL * 4.2, PANEL * 1.05 * len(steps)), squeeze=False, layout="constrained"
    )
    for row, step in enumerate(steps):
        for col, (a, b) in enumerate(PAIRS):
            ax = axes[row, col]
            matrix = history[step][(a, b)][index, target]  # (Na, Nb)
            if a == b:  # the identity start dominates the colour scale: show what the layers added
                matrix = matrix - torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
            plot_matrix(ax, matrix, (f"R[{a}, {b}] - I" if a == b else f"R[{a}, {b}]") if row == 0 else None)
            if tokens is not None and a == "text":
                ax.set_yticks(range(len(tokens)), tokens, fontsize=6)
            else:
                ax.set_yticks([])
            if tokens is not None and b == "text" and row == len(steps) - 1:
                ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
            else:
                ax.set_xticks([])
        axes[row, 0].set_ylabel(f"after {labels[step]}", fontsize=7)
    return fig


def _pair_title(a: str, b: str) -> str:
    return f"R[{a}, {b}] - I" if a == b else f"R[{a}, {b}]"


class _FlowStepPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        self.axes = list(fig.subplots(1, 4))
        self.images = []
        for ax, (a, b) in zip(self.axes, PAIRS):
            self.images.append(ax.imshow(np.zeros((2, 2)), cmap=MATRIX_CMAP, interpolation="nearest"))
            fig.colorbar(self.images[-1], ax=ax, shrink=0.7)
            ax.set_title(_pair_title(a, b), fontsize=9)
            ax.set_xlabel(f"{b} token", fontsize=8)
            ax.set_ylabel(f"{a} token", fontsize=8)

    def draw(self, maps: Sequence[Tensor], tokens: Sequence[str] | None, pair, title: str) -> None:
        for ax, image, (a, b), matrix in zip(self.axes, self.images, PAIRS, maps):
            m = _numpy(matrix)
            _set_image(image, m)
            image.set_clim(*_clim(m))
            for axis, side, ticks in ((ax.yaxis, a, ax.set_yticks), (ax.xaxis, b, ax.set_xticks)):
                n = m.shape[0] if axis is ax.yaxis else m.shape[1]
                if side == "text" and tokens is not None:
                    shown = list(tokens[:n])
                    ticks(range(len(shown)), shown, fontsize=6, rotation=90 if axis is ax.xaxis else 0)
                else:
                    ticks([])
            chosen = (a, b) == tuple(pair)
            for spine in ax.spines.values():  # the selected map framed on all four sides
                spine.set_visible(True)
                spine.set_linewidth(3 if chosen else 0.8)
        self.fig.suptitle(title, fontsize=10)


def render_flow_step(
    rec: Recording,
    index: int = 0,
    target: int = 0,
    step: int = -1,
    pair: tuple[str, str] = ("text", "image"),
    tokens: Sequence[str] | None = None,
    *,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The four maps after one propagation step (self maps minus ``I``), raw values with a colour
    bar each; the map ``pair`` is framed.

    Args:
        rec: a recording of a two-modality model.
        index, target: example and target column.
        step: an index into :func:`~gae_workbook.exploration.views.flow_steps`.
        pair: the selected map.
        tokens: the example's text tokens (axis labels).
        history: ``rec.history()``, when the caller keeps it.
        fig: a figure this function returned before: updated in place.
    """
    history = rec.history() if history is None else history
    if not -len(history) <= step < len(history):
        raise ValueError(f"step {step} is out of range (0..{len(history) - 1})")
    maps = [history[step][p][index, target] for p in PAIRS]  # (Na, Nb) each
    maps = [shown_matrix(m, "relevancy") if a == b else m for m, (a, b) in zip(maps, PAIRS)]  # self maps: R - I
    label = flow_steps(rec)[step]
    painter = _painter(fig, _FlowStepPainter, (PANEL * 4.6, PANEL * 1.4))
    painter.draw(maps, tokens, pair, f"the four maps after step {step % len(history)} ({label})")
    return painter.fig


def _row_title(rec: Recording, words, index, target, step, pair, token, view, head, target_names) -> str:
    a, b = pair
    who = f"'{words[token]}'" if a == "text" and token < len(words) else f"{a} token {token}"
    name = target_names[target] if target_names is not None else f"target {target}"
    if view == "relevancy":
        return f"R[{a}, {b}] row of {who} ({name}), after step {step % len(flow_steps(rec))}"
    return f"layer {step % len(rec.layers)} ({a}->{b}), head {head}: row of {who}, explaining {name}"


def _head_note(rec: Recording, index: int, target: int, step: int, contribution: np.ndarray) -> str:
    """What the head view's right panel means, in particular when it is all zero (always two lines)."""
    layer = step % len(rec.layers)
    if not rec.layers[layer].attn_bar[index, target].any():
        return (
            f"(dA*A)+ is 0 for every head of layer {layer}: its output never reaches the explained score,\n"
            "so this head attends (left) but contributes nothing to this score (right)"
        )
    if not contribution.any():
        return (
            "this head's (dA*A)+ row is all zero: where it attends, the gradient is negative,\n"
            "so Eq. 5's positive part drops it: it attends (left) but adds nothing to this score (right)"
        )
    return "left: where the head attends, A_h\nright: what that adds to the explained score, (dA_h*A_h)+ (Eq. 5)"


def _head_clim(values: np.ndarray) -> tuple[float, float]:
    """Raw colour limits; an all-zero map gets 0..1 (its colour bar then reads 0, not 1e-12)."""
    return (0.0, 1.0) if not values.any() else _clim(values)


class _RowImagePainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        ax_in, ax_row = fig.subplots(1, 2)
        self.input, self.ax_in = ax_in.imshow(np.zeros((2, 2, 3))), ax_in
        ax_in.set_title("input", fontsize=9)
        _blank(ax_in)
        self.row = _GridOverlay(fig, ax_row, "relevance (raw)")

    def draw(self, image: Tensor, grid: np.ndarray, title: str) -> None:
        _set_image(self.input, to_numpy_image(image))
        self.row.draw(image, grid, "row over the image regions")
        self.fig.suptitle(title, fontsize=9)


class _HeadImagePainter(_Painter):
    """The head view over the image: the head's attention row beside its (dA*A)+ row, each with a colour bar."""

    def __init__(self, fig: Figure):
        super().__init__(fig)
        ax_in, ax_attn, ax_cam = fig.subplots(1, 3, width_ratios=[1, 1.25, 1.25])
        self.input, self.ax_in = ax_in.imshow(np.zeros((2, 2, 3))), ax_in
        ax_in.set_title("input", fontsize=9)
        _blank(ax_in)
        self.attn = _GridOverlay(fig, ax_attn, "attention A_h")
        self.cam = _GridOverlay(fig, ax_cam, "(dA_h*A_h)+ (raw)")

    def draw(self, image: Tensor, attention: np.ndarray, contribution: np.ndarray, title: str, note: str) -> None:
        _set_image(self.input, to_numpy_image(image))
        self.attn.draw(image, attention, "where the head attends: A_h")
        self.cam.draw(image, contribution, "its contribution: (dA_h*A_h)+", _head_clim(contribution))
        self.fig.suptitle(f"{title}\n{note}", fontsize=8)


class _RowTextPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        self.ax = live_axes(fig.subplots())  # rebuilt on every draw

    def draw(self, words: Sequence[str], values: np.ndarray, title: str) -> None:
        ax = self.ax
        ax.cla()
        ax.bar(range(len(words)), values[: len(words)], color="tab:blue")
        ax.set_xticks(range(len(words)), words, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("relevance (raw)", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(title, fontsize=9)


class _HeadTextPainter(_Painter):
    """The head view over the words: the head's attention row beside its (dA*A)+ row, as bars."""

    def __init__(self, fig: Figure):
        super().__init__(fig)
        self.axes = [live_axes(ax) for ax in fig.subplots(1, 2)]  # rebuilt on every draw

    def draw(self, words: Sequence[str], attention: np.ndarray, contribution: np.ndarray, title: str, note: str):
        parts = (
            (attention, "tab:blue", "where the head attends: A_h", "attention"),
            (contribution, "tab:orange", "its contribution: (dA_h*A_h)+", "(dA_h*A_h)+ (raw)"),
        )
        for ax, (values, colour, name, unit) in zip(self.axes, parts):
            ax.cla()
            ax.bar(range(len(words)), values[: len(words)], color=colour)
            ax.set_xticks(range(len(words)), words, rotation=45, ha="right", fontsize=8)
            ax.set_ylabel(unit, fontsize=8)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_title(name, fontsize=9)
            if not values.any():
                ax.set_ylim(0, 1)
        self.fig.suptitle(f"{title}\n{note}", fontsize=8)


_ROW_PAINTERS = {
    ("image", "relevancy"): _RowImagePainter,
    ("text", "relevancy"): _RowTextPainter,
    ("image", "head"): _HeadImagePainter,
    ("text", "head"): _HeadTextPainter,
}
_ROW_SIZES = {"relevancy": (PANEL * 2.6, PANEL * 1.3), "head": (PANEL * 3.6, PANEL * 1.45)}


def render_stream_row(
    rec: Recording,
    images: Tensor,
    tokens: Sequence[Sequence[str]],
    index: int = 0,
    target: int = 0,
    step: int = -1,
    pair: tuple[str, str] = ("text", "image"),
    token: int = 0,
    view: str = "relevancy",
    head: int = 0,
    target_names: Sequence[str] | None = None,
    *,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One row of one map as what it is about, raw values with a scale: over the image for image
    columns (the region grid, nearest-neighbour, with a colour bar), as bars over the words for
    text columns.

    The head view (``view="head"``) shows the head's attention row ``A_h`` beside its
    gradient-weighted contribution ``(dA_h * A_h)^+`` (Eq. 5 before the mean over heads), so a
    layer the explained score never reaches (its gradient is zero) still shows what the head
    attends, next to an all-zero contribution, and says so.

    Args:
        rec: a recording of a two-modality model whose image tokens form a square grid.
        images: ``(B, 3, H, W)`` the images shown under the heatmaps.
        tokens: the text tokens of every example.
        index, target, step, pair, token, view, head: see :func:`~gae_workbook.exploration.views.stream_row`.
        target_names: names of the target columns (the answers).
        history: ``rec.history()``, when the caller keeps it.
        fig: a figure this function returned before for the same column modality and view: updated in place.
    """
    row = _numpy(stream_row(rec, index, target, step, pair, token, view, head, history))  # (Nb,)
    words = list(tokens[index])
    title = _row_title(rec, words, index, target, step, pair, token, view, head, target_names)
    column = pair[1]
    painter = _painter(fig, _ROW_PAINTERS[column, view], _ROW_SIZES[view])
    if view == "head":
        attention = _numpy(stream_row(rec, index, target, step, pair, token, "attention", head))  # (Nb,)
        note = _head_note(rec, index, target, step, row)
        if column == "image":
            side = math.isqrt(row.shape[-1])
            painter.draw(images[index], attention.reshape(side, side), row.reshape(side, side), title, note)
        else:
            painter.draw(words, attention, row, title, note)
        return painter.fig
    if column == "image":
        side = math.isqrt(row.shape[-1])
        painter.draw(images[index], row.reshape(side, side), title)
    else:
        painter.draw(words, row, title)
    return painter.fig


def _message_figure(fig: Figure, text: str) -> Figure:
    fig.clf()
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    return fig


def coattention_explorer(
    rec: Recording,
    images: Tensor,
    tokens: Sequence[Sequence[str]],
    target_names: Sequence[str] | None = None,
):
    """An ipywidgets explorer of a two-stream recording (record it with ``keep_heads=True`` and the
    targets to browse): example, target, map, row token, propagation step, or a layer and head.

    The head view's layer menu lists only the layers that attend the selected map's pair (a
    text->image cross-attention for ``R[text, image]``), so every choice has a picture. It shows
    the head's attention ``A_h`` beside its contribution ``(dA_h * A_h)^+``: on a layer the
    explained score never reaches the contribution is all zero (the title says so), and the head
    slider still changes what is drawn.

    Returns:
        An ``ipywidgets.VBox``: the controls and two ``ipywidgets.Image`` views (the selected row,
        then the four maps after the selected step); display it in a notebook.
    """
    import ipywidgets as W

    steps, labels = flow_steps(rec), layer_labels(rec)
    n_targets = rec.scores.shape[1]
    names = list(target_names) if target_names is not None else [f"target {k}" for k in range(n_targets)]
    history = rec.history()
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="example")
    target = W.Dropdown(options=[(n, k) for k, n in enumerate(names)], value=0, description="target")
    pair = W.Dropdown(options=[(_pair_title(a, b), (a, b)) for a, b in PAIRS], value=PAIRS[1], description="map")
    token = W.Dropdown(description="row token")
    view = W.ToggleButtons(options=["relevancy", "head"], description="view")
    step = W.Dropdown(options=[(s, i) for i, s in enumerate(steps)], value=len(steps) - 1, description="after")
    layer = W.Dropdown(description="layer", disabled=True)
    n_heads = rec.layers[-1].attn.shape[1] if rec.layers[-1].attn is not None else 1
    head = W.IntSlider(0, 0, n_heads - 1, description="head", disabled=True)
    out_row, out_maps = _image_output(), _image_output()
    row_figs = {}  # one figure per (column modality, view), each kept and updated in place
    for (column, shown), kind in _ROW_PAINTERS.items():
        row_figs[column, shown] = _new_figure(_ROW_SIZES[shown], live=True)
        _attach(kind, row_figs[column, shown])
    maps_fig = _new_figure((PANEL * 4.6, PANEL * 1.4), live=True)
    _attach(_FlowStepPainter, maps_fig)
    empty = _new_figure((PANEL * 2.6, PANEL * 0.6), live=True)

    def set_tokens(keep: int = 0):
        a = pair.value[0]
        n = len(tokens[index.value]) if a == "text" else rec.layout.segment("image").n_tokens
        words = list(tokens[index.value]) if a == "text" else [f"region {r}" for r in range(n)]
        keep = keep if keep < n else 0
        token.options = [(f"{i} {t}", i) for i, t in enumerate(words)]
        token.value = keep

    def set_layers():
        attending = layers_attending(rec, pair.value)
        layer.options = [(labels[i], i) for i in attending]
        # open on the last layer whose Eq. 5 map is non-zero: a stream's last layers may never reach the
        # explained score (LXMERT's pooler reads the text [CLS] only), and their (dA*A)+ is all zero
        reached = [i for i in attending if rec.layers[i].attn_bar[index.value, target.value].any()]
        layer.value = (reached or attending)[-1] if attending else None

    def follow(control):
        if control is index:
            set_tokens(keep=token.value or 0)  # the same row of the next example
        if control is pair:
            set_tokens()
        if control is pair:
            set_layers()
        relevancy = view.value == "relevancy"
        step.disabled, layer.disabled, head.disabled = not relevancy, relevancy, relevancy

    def draw_row():
        if view.value == "head" and layer.value is None:
            a, b = pair.value
            _show(out_row, _message_figure(empty, f"no recorded layer attends {a} -> {b}: pick another map"))
            return
        at = step.value if view.value == "relevancy" else layer.value
        column = pair.value[1]
        fig = render_stream_row(
            rec,
            images,
            tokens,
            index.value,
            target.value,
            at,
            pair.value,
            token.value,
            view.value,
            head.value,
            names,
            history=history,
            fig=row_figs[column, view.value],
        )
        _show(out_row, fig)

    def draw_maps():
        fig = render_flow_step(
            rec,
            index.value,
            target.value,
            step.value,
            pair.value,
            tokens[index.value],
            history=history,
            fig=maps_fig,
        )
        _show(out_maps, fig)

    set_tokens()
    set_layers()
    # lay out the row figures that are not shown first now, so that the first switch to them is a redraw
    for (column, shown), fig in row_figs.items():
        pairs = [p for p in PAIRS if p[1] == column and (shown == "relevancy" or layers_attending(rec, p))]
        if pairs and (column, shown) != (pair.value[1], view.value):
            at = step.value if shown == "relevancy" else layers_attending(rec, pairs[0])[-1]
            render_stream_row(rec, images, tokens, 0, 0, at, pairs[0], 0, shown, 0, names, history=history, fig=fig)
            fig.blitter = _Blitter(fig)
            fig.blitter.png()
    wiring = _Wiring(
        {
            "row": ((index, target, pair, token, view, step, layer, head), draw_row),
            "maps": ((index, target, pair, step), draw_maps),  # the selected row is drawn above it
        }
    )
    wiring.observe(follow)
    wiring.redraw()
    return W.VBox(
        [W.HBox([index, target]), W.HBox([pair, token]), view, W.HBox([step, layer, head]), out_row, out_maps]
    )


# ----------------------------------------------------------------------------- dual encoders


class _DualPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        grid = fig.add_gridspec(2, 2, height_ratios=[4, 1])
        self.ax_in, self.ax_map = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
        self.input = self.ax_in.imshow(np.zeros((2, 2, 3)))
        self.ax_in.set_title("input", fontsize=9)
        _blank(self.ax_in)
        self.grey = self.ax_map.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1)
        self.heat = self.ax_map.imshow(np.zeros((2, 2)), cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.6)
        fig.colorbar(self.heat, ax=self.ax_map, shrink=0.8, label="min-max per map")
        _blank(self.ax_map)
        self.ax_words = live_axes(fig.add_subplot(grid[1, :]))  # last: fig.axes[-1] is the word strip

    def draw(self, image: Tensor, heat: Tensor, words: Sequence[str], text: Tensor, title: str) -> None:
        _set_image(self.input, to_numpy_image(image))
        _set_image(self.grey, _grey(image))
        _set_image(self.heat, _numpy(heat))
        self.ax_map.set_title(title, fontsize=9)
        self.ax_words.cla()
        plot_token_relevance(self.ax_words, words, text)
        scale = float(text.abs().max()) if len(text) else 0.0
        self.ax_words.set_title(f"word relevance (min-max; raw max {scale:.2g})", fontsize=8, loc="left")


def render_dual_pair(
    model: nn.Module | None,
    images: Tensor,
    texts: dict,
    words: Sequence[Sequence[str]],
    image: int = 0,
    caption: int = 0,
    method: str = "gae",
    image_start_layer: int = 0,
    pixel_values: Tensor | None = None,
    word_offset: int = 1,
    *,
    recording: Recording | None = None,
    towers: Callable[[str, str, int], object] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One (image, caption) pair of a dual encoder: the image tower's map for the pair's similarity
    over the image, and the text tower's word relevance for it.

    Args:
        model: a dual encoder (Hugging Face ``CLIPModel``); unused when ``recording`` is given.
        images: ``(B_i, 3, H, W)`` images in [0, 1] to show.
        texts: tokenizer output of the captions.
        words: the words of every caption (shown without the special tokens).
        image: which image.
        caption: which caption.
        method: ``gae`` or a baseline.
        image_start_layer: first aggregated image-tower layer.
        pixel_values: what the model takes for ``images`` (default: ``images`` themselves).
        word_offset: token index of the first word (1: after ``[BOS]``).
        recording: a :func:`~gae_workbook.exploration.views.dual_record` of every pair (the explorer records
            once); None: explain this one pair now.
        towers: ``(modality, method, start_layer) -> Explanation`` of ``recording``, when cached.
        fig: a figure this function returned before: updated in place.
    """
    if recording is None:
        pixels = images if pixel_values is None else pixel_values
        one = {k: v[caption : caption + 1] for k, v in texts.items()}
        dual = explain_dual(
            model, pixels[image : image + 1], one, method=method, image_start_layer=image_start_layer, pairs="diagonal"
        )
        heat = dual.image.heatmap(tuple(images.shape[-2:]))[0]  # (H, W)
        text = dual.text.relevance["text"][0]  # (L,)
        logit = float(dual.logits[0])
    else:
        towers = towers or (lambda modality, m, start: dual_tower(recording, modality, m, start))
        heat = towers("image", method, image_start_layer).heatmap(tuple(images.shape[-2:]))[image, caption]  # (H, W)
        text = towers("text", method, 0).relevance["text"][caption, image]  # (L,)
        logit = float(recording.scores[image, caption])
    first = word_offset
    painter = _painter(fig, _DualPainter, (PANEL * 3, PANEL * 1.5))
    label = method_label(method)
    painter.draw(
        images[image], heat, words[caption], text[first : first + len(words[caption])], f"{label}, logit {logit:.2f}"
    )
    return painter.fig


def dual_explorer(
    model: nn.Module,
    images: Tensor,
    texts: dict,
    words: Sequence[Sequence[str]],
    pixel_values: Tensor | None = None,
):
    """An ipywidgets explorer of a dual encoder: image, caption, method, image-tower start layer.

    Every (image, caption) pair is recorded once when the explorer opens; the controls only read it.

    Returns:
        An ``ipywidgets.VBox``: the controls and one ``ipywidgets.Image``; display it in a notebook.
    """
    import ipywidgets as W

    rec = dual_record(model, images if pixel_values is None else pixel_values, texts)
    n_layers = len([layer for layer in rec.layers if layer.query == "image"])
    towers = lru_cache(maxsize=None)(lambda modality, m, start: dual_tower(rec, modality, m, start))
    image = W.IntSlider(0, 0, images.shape[0] - 1, description="image")
    caption = W.Dropdown(options=[(" ".join(w), k) for k, w in enumerate(words)], value=0, description="caption")
    method = W.ToggleButtons(options=method_names(), description="method")
    start = W.IntSlider(0, 0, n_layers - 1, description="start_layer")
    out = _image_output()
    fig = _new_figure((PANEL * 3, PANEL * 1.5), live=True)
    _attach(_DualPainter, fig)

    def draw():
        render_dual_pair(
            None,
            images,
            texts,
            words,
            image.value,
            caption.value,
            method.value,
            start.value,
            recording=rec,
            towers=towers,
            fig=fig,
        )
        _show(out, fig)

    wiring = _Wiring({"pair": ((image, caption, method, start), draw)})
    wiring.observe()
    wiring.redraw()
    return W.VBox([W.HBox([image, caption]), method, start, out])


# ----------------------------------------------------------------------------- seq2seq explorer


def _row_normalised(matrix: Tensor, rows: int, columns: int) -> np.ndarray:
    m = matrix.detach().float().cpu()[:rows, :columns]  # (T, S)
    return normalize_maps(m[:, None, :])[:, 0].numpy()


class _AlignmentPanel:
    """A seaborn alignment heatmap made once; later draws replace its values and move the frame."""

    def __init__(self, ax: plt.Axes):
        self.ax, self.mesh, self.frame = ax, None, None

    def draw(self, matrix: Tensor, source: Sequence[str], target: Sequence[str], title: str, step: int) -> None:
        shape = (min(len(target), matrix.shape[0]), min(len(source), matrix.shape[1]))
        if self.mesh is None or self.mesh.get_array().shape != shape:
            self.ax.cla()
            self.mesh = plot_alignment(self.ax, matrix, source, target, title, highlight=step)
            self.frame = self.ax.patches[-1]
        self.mesh.set_array(_row_normalised(matrix, *shape))
        self.frame.set_y(step)
        self.ax.set_title(title, fontsize=9)


class _TranslationPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        grid = fig.add_gridspec(2, 2, height_ratios=[5, 1])
        self.rel = _AlignmentPanel(fig.add_subplot(grid[0, 0]))
        self.att = _AlignmentPanel(fig.add_subplot(grid[0, 1]))
        self.ax_prefix = live_axes(fig.add_subplot(grid[1, :]))  # rebuilt on every draw
        self.bar = None

    def draw(self, source, target, relevance, raw, prefix_words, prefix, step, label) -> None:
        scale = float(relevance[step].abs().max())
        self.rel.draw(relevance, source, target, f"{label}: source relevance (framed row's raw max {scale:.2g})", step)
        self.att.draw(raw, source, target, "last cross-attention, head mean", step)
        if self.bar is None:
            self.bar = self.fig.colorbar(
                self.att.mesh, ax=[self.rel.ax, self.att.ax], shrink=0.6, label="min-max per row"
            )
        self.ax_prefix.cla()
        plot_token_relevance(
            self.ax_prefix, prefix_words, prefix, f"prefix relevance of '{target[step]}' (decoder inputs)"
        )


def render_translation(
    rec: Recording,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    index: int = 0,
    method: str = "gae",
    step: int = 0,
    start_layer: int = 0,
    *,
    explanations: Callable[[str, int], object] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Token-by-token source relevance of ``method`` (generated x source) beside the last cross-attention,
    and the selected token's prefix relevance (its row of ``R[target, target]``).

    Args:
        rec: a recording of :func:`gae_utils.generation.record_generation` (every step explained).
        source_tokens: the source tokens of example ``index`` (columns).
        target_tokens: the generated tokens of example ``index`` (rows), as many as steps shown.
        index: example in the batch.
        method: ``gae`` or a baseline.
        step: the selected generated token (framed; its prefix relevance is shown).
        start_layer: first aggregated layer for ``gae``.
        explanations: ``(method, start_layer) -> Explanation`` of ``rec``, when the caller caches them.
        fig: a figure this function returned before: updated in place.
    """
    if not 0 <= step < len(target_tokens):
        raise ValueError(f"step {step} is out of range for {len(target_tokens)} generated tokens")
    exp = (explanations or rec.explanation)(method, start_layer)
    source = exp.relevance["source"][index]  # (K, S)
    prefix = exp.relevance["target"][index, step, : step + 1]  # (t + 1,)
    inputs = ["<start>", *target_tokens][: step + 1]  # decoder inputs up to step t
    painter = _painter(fig, _TranslationPainter, (PANEL * 4.2, PANEL * 2.2))
    painter.draw(
        source_tokens,
        target_tokens,
        source,
        cross_attention_matrix(rec, index),
        inputs,
        prefix,
        step,
        method_label(method),
    )
    return painter.fig


class _TranslationLayerPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        axes = fig.subplots(1, 2)
        self.att, self.cam = _AlignmentPanel(axes[0]), _AlignmentPanel(axes[1])
        self.bar = None

    def draw(self, source, target, attn, cam, step, titles) -> None:
        self.att.draw(attn, source, target, titles[0], step)
        self.cam.draw(cam, source, target, titles[1], step)
        if self.bar is None:
            self.bar = self.fig.colorbar(
                self.cam.mesh, ax=[self.att.ax, self.cam.ax], shrink=0.6, label="min-max per row"
            )


def render_translation_layer(
    rec: Recording,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    index: int = 0,
    step: int = 0,
    layer: int = -1,
    head: int | None = None,
    *,
    fig: Figure | None = None,
) -> Figure:
    """One decoder layer's cross-attention (one head or the mean) and its Eq. 5 map for token ``step``.

    ``fig``: a figure this function returned before: updated in place."""
    cross = [entry for entry in rec.layers if entry.kind == "cross"]
    attn = cross_attention_matrix(rec, index, layer, head)  # (T, S)
    chosen = cross[layer]
    if head is None:
        cam = chosen.attn_bar[index, step]  # (T, S) Eq. 5: mean over heads of (dA * A)+
    else:
        cam = head_relevance(chosen.attn[index, head], chosen.grad[index, step, head])  # (T, S)
    which = "head mean" if head is None else f"head {head}"
    number = layer % len(cross)
    titles = (f"cross-attention {number}, {which}", f"(dA*A)+ for '{target_tokens[step]}', {which}")
    painter = _painter(fig, _TranslationLayerPainter, (PANEL * 4.2, PANEL * 1.8))
    painter.draw(source_tokens, target_tokens, attn, cam, step, titles)
    return painter.fig


def translation_explorer(
    model: nn.Module, inputs: dict, generated: Tensor, source_tokens: Sequence[str], target_tokens: Sequence[str]
):
    """An ipywidgets explorer of one translation: generated token, method, cross-attention layer, head.

    Args:
        model: an encoder-decoder (see :func:`gae_utils.generation.explain_generation`).
        inputs: the source of one example, ``{"input_ids": (1, S), "attention_mask": (1, S)}``.
        generated: ``(1, 1 + T)`` start token + generated tokens.
        source_tokens: the S source tokens.
        target_tokens: the T generated tokens.

    Returns:
        An ``ipywidgets.VBox``: the controls and two ``ipywidgets.Image`` views.
    """
    import ipywidgets as W

    rec = record_generation(model, inputs, generated, keep_heads=True)
    explanations = lru_cache(maxsize=None)(rec.explanation)
    cross = [entry for entry in rec.layers if entry.kind == "cross"]
    methods = method_names()
    step = W.Dropdown(options=[(f"{t}: {w}", t) for t, w in enumerate(target_tokens)], value=0, description="token")
    method = W.ToggleButtons(options=methods, description="method")
    layer = W.IntSlider(len(cross) - 1, 0, len(cross) - 1, description="cross layer")
    head = W.Dropdown(options=_head_options(cross[-1].attn.shape[1]), value=MEAN_HEAD, description="head")
    out_methods, out_layer = _image_output(), _image_output()
    methods_fig = _new_figure((PANEL * 4.2, PANEL * 2.2), live=True)
    _attach(_TranslationPainter, methods_fig)
    layer_fig = _new_figure((PANEL * 4.2, PANEL * 1.8), live=True)
    _attach(_TranslationLayerPainter, layer_fig)

    def draw_methods():
        fig = render_translation(
            rec, source_tokens, target_tokens, 0, method.value, step.value, explanations=explanations, fig=methods_fig
        )
        _show(out_methods, fig)

    def draw_layer():
        fig = render_translation_layer(
            rec, source_tokens, target_tokens, 0, step.value, layer.value, _head(head.value), fig=layer_fig
        )
        _show(out_layer, fig)

    wiring = _Wiring({"methods": ((step, method), draw_methods), "layer": ((step, layer, head), draw_layer)})
    wiring.observe()
    wiring.redraw()
    return W.VBox([W.HBox([step]), method, out_methods, W.HBox([layer, head]), out_layer])


# ----------------------------------------------------------------------------- DETR: one detected object
# A DETR recording explains every confident detection of a batch at once (target k of image b is
# object query ``rec.extra["queries"][b][k]``); the callbacks below show one of them.


def _draw_box(ax: plt.Axes, box: Tensor, colour: str = "cyan") -> plt.Rectangle:
    x0, y0, x1, y1 = (float(v) for v in box)
    return ax.add_patch(
        plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5)
    )


def _detr_name(rec: Recording, index: int, detection: int, class_names: Sequence[str] | None) -> str:
    label = int(rec.target[index, detection])
    score = float(rec.output.logits[index, detr_slot(rec, index, detection)].detach().softmax(-1)[label])
    name = class_names[label] if class_names is not None else f"class {label}"
    return f"{name} ({score:.2f})"


def _n_detections(rec: Recording, index: int) -> int:
    return len([q for q in rec.extra["queries"][index] if q >= 0])


class _DetectionsPainter(_Painter):
    def __init__(self, fig: Figure, n_panels: int):
        super().__init__(fig)
        self.axes = list(fig.subplots(1, n_panels + 1, squeeze=False)[0])
        self.input = self.axes[0].imshow(np.zeros((2, 2, 3)))
        self.grey, self.heat = [], []
        for ax in self.axes[1:]:
            self.grey.append(ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1))
            self.heat.append(ax.imshow(np.zeros((2, 2)), cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.6))
        for ax in self.axes:
            _blank(ax)
        self.boxes: list = []

    def draw(self, image: Tensor, heats: Tensor, boxes: Tensor, names: Sequence[str]) -> None:
        for box in self.boxes:
            box.remove()
        self.boxes = []
        _set_image(self.input, to_numpy_image(image))
        n = len(names)
        self.axes[0].set_title("detections" if n else "no confident detection", fontsize=9)
        grey = _grey(image)
        for k, (ax, g, h) in enumerate(zip(self.axes[1:], self.grey, self.heat)):
            # an unused panel is emptied, not hidden: the figure's static parts stay as they are
            for artist in (g, h, *ax.spines.values()):
                artist.set_visible(k < n)
            if k >= n:
                ax.set_title("")
                continue
            _set_image(g, grey)
            _set_image(h, _numpy(heats[k]))
            ax.set_title(names[k], fontsize=8)
            self.boxes += [_draw_box(self.axes[0], boxes[k]), _draw_box(ax, boxes[k])]


def render_detections(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    method: str = "gae",
    class_names: Sequence[str] | None = None,
    *,
    heatmaps: Callable[[str], Tensor] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Every explained detection of image ``index``: its map (row k of ``R[query, image]``) beside its box.

    Args:
        heatmaps: ``method -> (B, K, H, W)`` maps of ``rec``, when the caller caches them.
        fig: a figure this function returned before (made for at least as many detections): updated in place.
    """
    size = tuple(images.shape[-2:])
    n = _n_detections(rec, index)
    heat = (heatmaps or (lambda m: rec.explanation(m).heatmap(size)))(method)[index]  # (K, H, W)
    boxes = detr_boxes(rec, size)[index]  # (K, 4)
    painter = _painter(fig, _DetectionsPainter, (PANEL * (n + 1), PANEL * 1.15), n)
    painter.draw(images[index], heat, boxes, [_detr_name(rec, index, k, class_names) for k in range(n)])
    return painter.fig


class _DetrQueryPainter(_Painter):
    def __init__(self, fig: Figure):
        super().__init__(fig)
        self.axes = list(fig.subplots(1, 3))
        live_axes(self.axes[2])  # rebuilt on every draw (an image grid or bars, by the layer's keys)
        self.bars = None  # the R[query, query] - I row: one bar per query, kept and updated
        ax = self.axes[0]  # the map: its artists are kept and updated
        self.grey = ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1)
        self.heat = ax.imshow(np.zeros((2, 2)), cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=0.6)
        self.name = ax.text(0.5, -0.03, "", transform=ax.transAxes, ha="center", va="top", fontsize=8)
        self.box = _draw_box(ax, torch.zeros(4))
        _blank(ax)

    def draw(self, image, heat, box, name, label, mixing, q, row, layer_title, image_keys, grid) -> None:
        self.axes[2].cla()
        grey = _grey(image)
        ax = self.axes[0]
        _set_image(self.grey, grey)
        _set_image(self.heat, _numpy(heat))
        ax.set_title(label, fontsize=9)
        self.name.set_text(name)
        x0, y0, x1, y1 = (float(v) for v in box)
        self.box.set_bounds(x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0)
        ax = self.axes[1]
        values = _numpy(mixing)
        if self.bars is None or len(self.bars) != len(values):
            ax.cla()
            self.bars = ax.bar(range(len(values)), values)
            ax.set_xlabel("object query (orange: this one)", fontsize=8)
        for j, (bar, value) in enumerate(zip(self.bars, values)):
            bar.set_height(value)
            bar.set_color("tab:orange" if j == q else "tab:blue")
        low, high = min(0.0, float(values.min())), max(float(values.max()), 1e-12)
        pad = 0.05 * (high - low)
        ax.set_ylim(low - pad if low < 0 else 0.0, high + pad)
        ax.set_title(f"R[query, query] - I, row {q}", fontsize=9)
        ax = self.axes[2]
        values = _numpy(row)
        if image_keys:
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            low, high = _clim(values)
            ax.imshow(
                values.reshape(grid),
                cmap=HEATMAP_CMAP,
                alpha=0.65,
                interpolation="nearest",
                extent=_extent(*grey.shape),
                vmin=low,
                vmax=high,
            )
            ax.set_xlim(-0.5, grey.shape[1] - 0.5)
            ax.set_ylim(grey.shape[0] - 0.5, -0.5)
            _blank(ax)
            _draw_box(ax, box)
            layer_title += f" (max {high:.2g})"
        else:
            ax.bar(range(len(values)), values)
            ax.set_xlabel("object query", fontsize=8)
        ax.set_title(layer_title, fontsize=9)


def render_detr_query(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    detection: int = 0,
    method: str = "gae",
    layer: int = -1,
    head: int | None = None,
    view: str = "attention",
    class_names: Sequence[str] | None = None,
    *,
    heatmaps: Callable[[str], Tensor] | None = None,
    explanations: Callable[[str], object] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One detection: the method's map with the box, the ``R[query, query] - I`` row (what the
    decoder's self-attention mixed in from the other queries; the identity start is taken out, as
    for every self map), and one decoder layer's row for this query (raw values: the image grid for
    cross-attention, bars over the queries for self-attention).

    Args:
        heatmaps: ``method -> (B, K, H, W)`` maps of ``rec``, when the caller caches them.
        explanations: ``method -> Explanation`` of ``rec``, when the caller caches them.
        fig: a figure this function returned before: updated in place.
    """
    size = tuple(images.shape[-2:])
    explanations = explanations or rec.explanation
    q = detr_slot(rec, index, detection)
    heat = (heatmaps or (lambda m: explanations(m).heatmap(size)))(method)[index, detection]  # (H, W)
    box = detr_boxes(rec, size)[index, detection]
    mixing = explanations("gae").relevance["query"][index, detection].detach().cpu().clone()  # (Q,)
    mixing[q] -= 1.0  # R starts at I: the query's own 1
    row = detr_layer_map(rec, index, detection, layer, view, head).detach().cpu()
    chosen_layer = rec.layers[layer]
    what = "mean over heads" if head is None else f"head {head}"
    title = f"layer {layer % len(rec.layers)} {chosen_layer.kind}, {view}\n{what}"
    image_keys = chosen_layer.key == "image"
    grid = rec.layout.segment("image").grid if image_keys else None
    painter = _painter(fig, _DetrQueryPainter, (PANEL * 3.4, PANEL * 1.15))
    painter.draw(
        images[index],
        heat,
        box,
        _detr_name(rec, index, detection, class_names),
        method_label(method),
        mixing,
        q,
        row,
        title,
        image_keys,
        grid,
    )
    return painter.fig


def detr_explorer(
    model: nn.Module,
    pixel_values: Tensor,
    images: Tensor,
    class_names: Sequence[str] | None = None,
    target=None,
):
    """An ipywidgets explorer of DETR detections: image, detection, method, layer, head, view.

    Args:
        model: a ``DetrForObjectDetection``.
        pixel_values: what the model takes, ``(B, 3, H, W)``.
        images: the same images in [0, 1] for display.
        class_names: names of the classes.
        target: explained queries (see :class:`gae_utils.targets.QueryTarget`); None: the
            confident detections.

    Returns:
        An ``ipywidgets.VBox``: the controls and two ``ipywidgets.Image`` views.
    """
    import ipywidgets as W

    rec = explore_detr(model, pixel_values, target)
    size = tuple(images.shape[-2:])
    explanations = lru_cache(maxsize=None)(rec.explanation)
    heatmaps = lru_cache(maxsize=None)(lambda m: explanations(m).heatmap(size))
    decoder = [i for i, layer in enumerate(rec.layers) if layer.query == "query"]
    n_heads = rec.layers[decoder[-1]].attn.shape[1]
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="image")
    detection = W.Dropdown(description="detection")
    method = W.ToggleButtons(options=method_names(), description="method")
    layer = W.SelectionSlider(options=decoder, value=decoder[-1], description="decoder layer")
    head = W.Dropdown(options=_head_options(n_heads), value=MEAN_HEAD, description="head")
    view = W.ToggleButtons(options=LAYER_VIEWS_DETR, description="layer view")
    out_all, out_one = _image_output(), _image_output()
    most = max(_n_detections(rec, b) for b in range(images.shape[0]))
    all_fig = _new_figure((PANEL * (most + 1), PANEL * 1.15), live=True)
    _attach(_DetectionsPainter, all_fig, most)
    one_fig = _new_figure((PANEL * 3.4, PANEL * 1.15), live=True)
    _attach(_DetrQueryPainter, one_fig)
    empty = _new_figure((PANEL * 3.4, PANEL * 0.6), live=True)

    def refresh_detections(control=None):
        if control is not None and control is not index:
            return
        n = _n_detections(rec, index.value)
        detection.options = [(_detr_name(rec, index.value, k, class_names), k) for k in range(n)]
        detection.value = 0 if n else None  # ipywidgets selects nothing when options are assigned

    def draw_all():
        fig = render_detections(rec, images, index.value, method.value, class_names, heatmaps=heatmaps, fig=all_fig)
        _show(out_all, fig)

    def draw_one():
        if detection.value is None:
            _show(out_one, _message_figure(empty, f"image {index.value} has no confident detection"))
            return
        fig = render_detr_query(
            rec,
            images,
            index.value,
            detection.value,
            method.value,
            layer.value,
            _head(head.value),
            view.value,
            class_names,
            heatmaps=heatmaps,
            explanations=explanations,
            fig=one_fig,
        )
        _show(out_one, fig)

    refresh_detections()
    wiring = _Wiring(
        {"all": ((index, method), draw_all), "one": ((index, detection, method, layer, head, view), draw_one)}
    )
    wiring.observe(refresh_detections)
    wiring.redraw()
    return W.VBox([W.HBox([index, detection]), method, out_all, W.HBox([layer, head]), view, out_one])
