"""Interactive explorers: pure render functions, and ipywidgets that only wire controls to them.

The tensors they draw come from :mod:`gae_workbook.views`. One
:func:`~gae_workbook.views.explore_record` call records a batch of images for *every* class at once (one forward
pass, one backward per class, per-head maps kept); each slider then calls a pure function
``render_*(recording, images, ...) -> Figure`` that the tests exercise directly:

- :func:`render_layer`: the relevancy ``R`` after layer ``l`` (Eq. 6 accumulated so far), the
  aggregated map ``Abar`` of layer ``l`` (Eq. 5), or one head's ``(dA * A)^+`` at layer ``l``;
  each as the explained row over the image and as the full token x token matrix.
- :func:`render_methods`: GAE beside the baselines for one example and class.

For two-stream models (co-attention VQA), :func:`render_flow` shows the four maps
``R[t, t], R[t, i], R[i, t], R[i, i]`` step by step and :func:`render_stream_row` one row of one
map over the image or the words; :func:`coattention_explorer` wires them to widgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from gae_utils.dual import explain_dual
from gae_utils.explainer import Recording
from gae_utils.generation import record_generation
from gae_utils.maps import grid_heatmap
from gae_utils.methods import method_label, method_names
from gae_utils.rules import head_relevance

from .figures import PANEL, overlay, plot_alignment, plot_matrix, plot_token_relevance, show_image
from .views import (
    LAYER_VIEWS_DETR,
    PAIRS,
    VIEWS,
    cross_attention_matrix,
    detr_boxes,
    detr_layer_map,
    detr_slot,
    explore_detr,
    explore_record,
    flow_steps,
    layer_labels,
    layer_matrix,
    row_heatmap,
    stream_row,
)

__all__ = [
    "render_layer",
    "render_steps",
    "render_methods",
    "explorer",
    "render_flow",
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


def _show(out, fig: plt.Figure) -> None:
    """Replace what the ipywidgets ``Output`` area ``out`` shows with ``fig``, then close ``fig``."""
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        display(fig)
        plt.close(fig)


_VIEW_TITLES = {
    "relevancy": "R after layer {l}",
    "attn_bar": "Abar at layer {l} (Eq. 5)",
    "head": "head {h}: (dA*A)+ at layer {l}",
}


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
) -> plt.Figure:
    """Input, the explained row of the chosen layer view over the image, and the full matrix."""
    layer = layer % len(rec.layers)
    matrix = layer_matrix(rec, index, target, layer, view, head, start_layer)
    heat = row_heatmap(rec.layout, matrix, tuple(images.shape[-2:]))
    fig, axes = plt.subplots(1, 3, figsize=(PANEL * 3.3, PANEL * 1.1), layout="constrained")
    name = class_names[target] if class_names is not None else f"class {target}"
    show_image(axes[0], images[index], f"input, explaining '{name}'")
    title = _VIEW_TITLES[view].format(l=layer, h=head)
    overlay(axes[1], images[index], heat, title)
    artist = plot_matrix(axes[2], matrix, "token x token")
    axes[2].set_xlabel("key token")
    axes[2].set_ylabel("query token")
    fig.colorbar(artist, ax=axes[2], shrink=0.8)
    return fig


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


def render_methods(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    target: int = 0,
    methods: Sequence[str] | None = None,
    start_layer: int = 0,
    class_names: Sequence[str] | None = None,
    highlight: str | None = None,
) -> plt.Figure:
    """The input and every method's map for one example and target column, side by side.

    ``highlight`` frames one method's panel (the explorer's method toggle)."""
    methods = list(methods or method_names())
    size = tuple(images.shape[-2:])
    fig, axes = plt.subplots(
        1, len(methods) + 1, figsize=(PANEL * (len(methods) + 1), PANEL * 1.1), layout="constrained"
    )
    name = class_names[target] if class_names is not None else f"class {target}"
    show_image(axes[0], images[index], f"'{name}'")
    for ax, method in zip(axes[1:], methods):
        exp = rec.explanation(method, start_layer)
        heat = exp.heatmap(size)  # (B, K, H, W)
        overlay(ax, images[index], heat[index, target], method_label(method))
        if method == highlight:
            ax.set_title(ax.get_title(), fontweight="bold")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_linewidth(3)
    return fig


def explorer(model: nn.Module, images: Tensor, class_names: Sequence[str] | None = None):
    """An ipywidgets explorer of one batch: example, class, method, layer view, layer, head, start_layer.

    Returns:
        An ``ipywidgets.VBox``; display it in a notebook.
    """
    import ipywidgets as W

    rec = explore_record(model, images, len(class_names) if class_names is not None else None)
    n_layers = len(rec.layers)
    n_heads = rec.layers[-1].attn.shape[1]
    n_classes = rec.scores.shape[1]
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(n_classes)]
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="example")
    target = W.Dropdown(
        options=[(n, k) for k, n in enumerate(names)], value=int(rec.logits[0].argmax()), description="class"
    )
    method = W.ToggleButtons(options=method_names(), description="method")
    view = W.ToggleButtons(options=VIEWS, description="layer view")
    layer = W.IntSlider(n_layers - 1, 0, n_layers - 1, description="layer")
    head = W.IntSlider(0, 0, n_heads - 1, description="head")
    start = W.IntSlider(0, 0, n_layers - 1, description="start_layer")
    out_methods, out_layer = W.Output(), W.Output()

    def update(*_):
        kwargs = dict(index=index.value, target=target.value, class_names=names)
        _show(out_methods, render_methods(rec, images, start_layer=start.value, highlight=method.value, **kwargs))
        lay = max(layer.value, start.value) if view.value == "relevancy" else layer.value
        _show(
            out_layer,
            render_layer(rec, images, layer=lay, view=view.value, head=head.value, start_layer=start.value, **kwargs),
        )

    for control in (index, target, method, view, layer, head, start):
        control.observe(update, names="value")
    update()
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
) -> plt.Figure:
    """One row of one map as what it is about: over the image for image columns (a heatmap on the
    region grid), over the words for text columns.

    Args:
        rec: a recording of a two-modality model whose image tokens form a square grid.
        images: ``(B, 3, H, W)`` the images shown under the heatmaps.
        tokens: the text tokens of every example.
        index, target, step, pair, token, view, head: see :func:`stream_row`.
        target_names: names of the target columns (the answers).
    """
    row = stream_row(rec, index, target, step, pair, token, view, head).float().cpu()
    a, b = pair
    words = list(tokens[index])
    who = f"'{words[token]}'" if a == "text" and token < len(words) else f"{a} token {token}"
    name = target_names[target] if target_names is not None else f"target {target}"
    where = f"after step {step % len(rec.history())}" if view == "relevancy" else f"layer {step}, head {head}"
    title = f"R[{a}, {b}] row of {who} ({name}), {where}" if view == "relevancy" else f"(dA*A)+ of {who}, {where}"
    if b == "image":
        side = math.isqrt(row.shape[-1])
        heat = grid_heatmap(row, (side, side), tuple(images.shape[-2:]))  # (H, W)
        fig, axes = plt.subplots(1, 2, figsize=(PANEL * 2.2, PANEL * 1.2), layout="constrained")
        show_image(axes[0], images[index], "input")
        overlay(axes[1], images[index], heat, None)
        fig.suptitle(title, fontsize=9)
        return fig
    fig, ax = plt.subplots(figsize=(PANEL * 3.5, 0.9), layout="constrained")
    plot_token_relevance(ax, words, row[: len(words)], title)
    return fig


def coattention_explorer(
    rec: Recording,
    images: Tensor,
    tokens: Sequence[Sequence[str]],
    target_names: Sequence[str] | None = None,
):
    """An ipywidgets explorer of a two-stream recording (record it with ``keep_heads=True`` and the
    targets to browse): example, target, map, text token, propagation step or layer, head.

    Returns:
        An ``ipywidgets.VBox``; display it in a notebook.
    """
    import ipywidgets as W

    steps, layers = flow_steps(rec), layer_labels(rec)
    n_targets = rec.scores.shape[1]
    names = list(target_names) if target_names is not None else [f"target {k}" for k in range(n_targets)]
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="example")
    target = W.Dropdown(options=[(n, k) for k, n in enumerate(names)], value=0, description="target")
    pair = W.Dropdown(options=[(f"R[{a}, {b}]", (a, b)) for a, b in PAIRS], value=("text", "image"), description="map")
    token = W.Dropdown(description="row token")
    view = W.ToggleButtons(options=["relevancy", "head"], description="view")
    step = W.Dropdown(options=[(s, i) for i, s in enumerate(steps)], value=len(steps) - 1, description="after")
    layer = W.Dropdown(options=[(s, i) for i, s in enumerate(layers)], value=len(layers) - 1, description="layer")
    head = W.IntSlider(0, 0, rec.layers[-1].attn.shape[1] - 1 if rec.layers[-1].attn is not None else 0)
    head.description = "head"
    out_flow, out_row = W.Output(), W.Output()

    def set_tokens(*_):
        a = pair.value[0]
        n = len(tokens[index.value]) if a == "text" else rec.layout.segment("image").n_tokens
        labels = list(tokens[index.value]) if a == "text" else [f"region {r}" for r in range(n)]
        token.options = [(f"{i} {t}", i) for i, t in enumerate(labels)]
        token.value = 0

    def update(*_):
        if token.value is None:
            return
        _show(out_flow, render_flow(rec, index.value, target.value, tokens=tokens[index.value]))
        at = step.value if view.value == "relevancy" else layer.value
        try:
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
            )
        except ValueError as err:  # a head view of a layer that does not attend this pair
            with out_row:
                out_row.clear_output(wait=True)
                print(err)
            return
        _show(out_row, fig)

    for control in (index, pair):
        control.observe(set_tokens, names="value")
    for control in (index, target, pair, token, view, step, layer, head):
        control.observe(update, names="value")
    set_tokens()
    update()
    return W.VBox(
        [W.HBox([index, target]), W.HBox([pair, token]), view, W.HBox([step, layer, head]), out_row, out_flow]
    )


# ----------------------------------------------------------------------------- dual encoders


def render_dual_pair(
    model: nn.Module,
    images: Tensor,
    texts: dict,
    words: Sequence[Sequence[str]],
    image: int = 0,
    caption: int = 0,
    method: str = "gae",
    image_start_layer: int = 0,
    pixel_values: Tensor | None = None,
    word_offset: int = 1,
) -> plt.Figure:
    """One (image, caption) pair of a dual encoder: the image tower's map for the pair's similarity
    over the image, and the text tower's word relevance for it.

    Args:
        model: a dual encoder (Hugging Face ``CLIPModel``).
        images: ``(B_i, 3, H, W)`` images in [0, 1] to show.
        texts: tokenizer output of the captions.
        words: the words of every caption (shown without the special tokens).
        image: which image.
        caption: which caption.
        method: ``gae`` or a baseline.
        image_start_layer: first aggregated image-tower layer.
        pixel_values: what the model takes for ``images`` (default: ``images`` themselves).
        word_offset: token index of the first word (1: after ``[BOS]``).
    """
    pixels = images if pixel_values is None else pixel_values
    one = {k: v[caption : caption + 1] for k, v in texts.items()}
    dual = explain_dual(
        model, pixels[image : image + 1], one, method=method, image_start_layer=image_start_layer, pairs="diagonal"
    )
    heat = dual.image.heatmap(tuple(images.shape[-2:]))[0]  # (H, W)
    text = dual.text.relevance["text"][0]  # (L,)
    first = word_offset
    fig = plt.figure(figsize=(PANEL * 3, PANEL * 1.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[4, 1])
    show_image(fig.add_subplot(grid[0, 0]), images[image], "input")
    label = method_label(method)
    overlay(fig.add_subplot(grid[0, 1]), images[image], heat, f"{label}, logit {float(dual.logits[0]):.2f}")
    plot_token_relevance(fig.add_subplot(grid[1, :]), words[caption], text[first : first + len(words[caption])])
    return fig


def dual_explorer(
    model: nn.Module,
    images: Tensor,
    texts: dict,
    words: Sequence[Sequence[str]],
    pixel_values: Tensor | None = None,
):
    """An ipywidgets explorer of a dual encoder: image, caption, method, image-tower start layer.

    Returns:
        An ``ipywidgets.VBox``; display it in a notebook.
    """
    import ipywidgets as W

    n_layers = getattr(getattr(model.config, "vision_config", None), "num_hidden_layers", 1)
    image = W.IntSlider(0, 0, images.shape[0] - 1, description="image")
    caption = W.Dropdown(options=[(" ".join(w), k) for k, w in enumerate(words)], value=0, description="caption")
    method = W.ToggleButtons(options=method_names(), description="method")
    start = W.IntSlider(0, 0, n_layers - 1, description="start_layer")
    out = W.Output()

    def update(*_):
        fig = render_dual_pair(
            model, images, texts, words, image.value, caption.value, method.value, start.value, pixel_values
        )
        _show(out, fig)

    for control in (image, caption, method, start):
        control.observe(update, names="value")
    update()
    return W.VBox([W.HBox([image, caption]), method, start, out])


# ----------------------------------------------------------------------------- seq2seq explorer


def render_translation(
    rec: Recording,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    index: int = 0,
    method: str = "gae",
    step: int = 0,
    start_layer: int = 0,
) -> plt.Figure:
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
    """
    if not 0 <= step < len(target_tokens):
        raise ValueError(f"step {step} is out of range for {len(target_tokens)} generated tokens")
    exp = rec.explanation(method, start_layer)
    source = exp.relevance["source"][index]  # (K, S)
    prefix = exp.relevance["target"][index, step, : step + 1]  # (t + 1,)
    fig = plt.figure(figsize=(PANEL * 4.2, PANEL * 2.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[5, 1])
    ax_rel, ax_att, ax_prefix = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    label = method_label(method)
    plot_alignment(ax_rel, source, source_tokens, target_tokens, f"{label}: source relevance", highlight=step)
    raw = cross_attention_matrix(rec, index)
    plot_alignment(ax_att, raw, source_tokens, target_tokens, "last cross-attention, head mean", highlight=step)
    inputs = ["<start>", *target_tokens][: step + 1]  # decoder inputs up to step t
    plot_token_relevance(ax_prefix, inputs, prefix, f"prefix relevance of '{target_tokens[step]}' (decoder inputs)")
    return fig


def render_translation_layer(
    rec: Recording,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    index: int = 0,
    step: int = 0,
    layer: int = -1,
    head: int | None = None,
) -> plt.Figure:
    """One decoder layer's cross-attention (one head or the mean) and its Eq. 5 map for token ``step``."""
    cross = [entry for entry in rec.layers if entry.kind == "cross"]
    attn = cross_attention_matrix(rec, index, layer, head)  # (T, S)
    chosen = cross[layer]
    if head is None:
        cam = chosen.attn_bar[index, step]  # (T, S) Eq. 5: mean over heads of (dA * A)+
    else:
        cam = head_relevance(chosen.attn[index, head], chosen.grad[index, step, head])  # (T, S)
    fig, axes = plt.subplots(1, 2, figsize=(PANEL * 4.2, PANEL * 1.8), layout="constrained")
    which = "head mean" if head is None else f"head {head}"
    number = layer % len(cross)
    plot_alignment(axes[0], attn, source_tokens, target_tokens, f"cross-attention {number}, {which}", highlight=step)
    plot_alignment(
        axes[1], cam, source_tokens, target_tokens, f"(dA*A)+ for '{target_tokens[step]}', {which}", highlight=step
    )
    return fig


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
    """
    import ipywidgets as W

    rec = record_generation(model, inputs, generated, keep_heads=True)
    cross = [entry for entry in rec.layers if entry.kind == "cross"]
    methods = method_names()
    step = W.Dropdown(options=[(f"{t}: {w}", t) for t, w in enumerate(target_tokens)], description="token")
    method = W.ToggleButtons(options=methods, description="method")
    layer = W.IntSlider(len(cross) - 1, 0, len(cross) - 1, description="cross layer")
    head = W.Dropdown(options=_head_options(cross[-1].attn.shape[1]), value=MEAN_HEAD, description="head")
    out_methods, out_layer = W.Output(), W.Output()

    def update(*_):
        _show(out_methods, render_translation(rec, source_tokens, target_tokens, method=method.value, step=step.value))
        _show(
            out_layer,
            render_translation_layer(
                rec, source_tokens, target_tokens, step=step.value, layer=layer.value, head=_head(head.value)
            ),
        )

    for control in (step, method, layer, head):
        control.observe(update, names="value")
    update()
    return W.VBox([W.HBox([step]), method, out_methods, W.HBox([layer, head]), out_layer])


# ----------------------------------------------------------------------------- DETR: one detected object
# A DETR recording explains every confident detection of a batch at once (target k of image b is
# object query ``rec.extra["queries"][b][k]``); the callbacks below show one of them.


def _draw_box(ax: plt.Axes, box: Tensor, colour: str = "cyan") -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))


def _detr_name(rec: Recording, index: int, detection: int, class_names: Sequence[str] | None) -> str:
    label = int(rec.target[index, detection])
    score = float(rec.output.logits[index, detr_slot(rec, index, detection)].detach().softmax(-1)[label])
    name = class_names[label] if class_names is not None else f"class {label}"
    return f"{name} ({score:.2f})"


def render_detections(
    rec: Recording,
    images: Tensor,
    index: int = 0,
    method: str = "gae",
    class_names: Sequence[str] | None = None,
) -> plt.Figure:
    """Every explained detection of image ``index``: its map (row k of ``R[query, image]``) beside its box."""
    size = tuple(images.shape[-2:])
    n = len([q for q in rec.extra["queries"][index] if q >= 0])
    heat = rec.explanation(method).heatmap(size)[index]  # (K, H, W)
    boxes = detr_boxes(rec, size)[index]  # (K, 4)
    fig, axes = plt.subplots(1, n + 1, figsize=(PANEL * (n + 1), PANEL * 1.15), squeeze=False, layout="constrained")
    show_image(axes[0, 0], images[index], "detections")
    for k in range(n):
        _draw_box(axes[0, 0], boxes[k])
        overlay(axes[0, k + 1], images[index], heat[k], _detr_name(rec, index, k, class_names))
        _draw_box(axes[0, k + 1], boxes[k])
    return fig


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
) -> plt.Figure:
    """One detection: the method's map with the box, ``R[query, query]`` row (how the decoder mixed
    the queries), and one decoder layer's row for this query (image grid for cross-attention,
    queries for self-attention)."""
    size = tuple(images.shape[-2:])
    q = detr_slot(rec, index, detection)
    exp = rec.explanation(method)
    box = detr_boxes(rec, size)[index, detection]
    fig, axes = plt.subplots(1, 3, figsize=(PANEL * 3.4, PANEL * 1.15), layout="constrained")
    overlay(axes[0], images[index], exp.heatmap(size)[index, detection], f"{method_label(method)}")
    _draw_box(axes[0], box)
    axes[0].set_xlabel(_detr_name(rec, index, detection, class_names))
    mixing = rec.explanation("gae").relevance["query"][index, detection].detach().cpu()  # (Q,)
    axes[1].bar(
        range(len(mixing)), mixing.numpy(), color=["tab:orange" if j == q else "tab:blue" for j in range(len(mixing))]
    )
    axes[1].set_title(f"R[query, query], row {q}")
    axes[1].set_xlabel("object query")
    row = detr_layer_map(rec, index, detection, layer, view, head).detach().cpu()
    chosen_layer = rec.layers[layer]
    what = "mean over heads" if head is None else f"head {head}"
    title = f"layer {layer % len(rec.layers)} {chosen_layer.kind}, {view}\n{what}"
    if chosen_layer.key == "image":
        grid = rec.layout.segment("image").grid
        overlay(axes[2], images[index], grid_heatmap(row, grid, size), title)
        _draw_box(axes[2], box)
    else:
        axes[2].bar(range(len(row)), row.numpy())
        axes[2].set_title(title)
        axes[2].set_xlabel("object query")
    return fig


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
    """
    import ipywidgets as W

    rec = explore_detr(model, pixel_values, target)
    decoder = [i for i, layer in enumerate(rec.layers) if layer.query == "query"]
    n_heads = rec.layers[decoder[-1]].attn.shape[1]
    index = W.IntSlider(0, 0, images.shape[0] - 1, description="image")
    detection = W.Dropdown(description="detection")
    method = W.ToggleButtons(options=method_names(), description="method")
    layer = W.SelectionSlider(options=decoder, value=decoder[-1], description="decoder layer")
    head = W.Dropdown(options=_head_options(n_heads), value=MEAN_HEAD, description="head")
    view = W.ToggleButtons(options=LAYER_VIEWS_DETR, description="layer view")
    out_all, out_one = W.Output(), W.Output()

    def refresh_detections(*_):
        n = len([q for q in rec.extra["queries"][index.value] if q >= 0])
        detection.options = [(_detr_name(rec, index.value, k, class_names), k) for k in range(n)]
        detection.value = 0 if n else None  # ipywidgets selects nothing when options are assigned

    def update(*_):
        if detection.value is None:
            return
        _show(out_all, render_detections(rec, images, index.value, method.value, class_names))
        _show(
            out_one,
            render_detr_query(
                rec,
                images,
                index.value,
                detection.value,
                method.value,
                layer.value,
                _head(head.value),
                view.value,
                class_names,
            ),
        )

    refresh_detections()  # before the observers: the first figures are drawn once, by update() below
    index.observe(refresh_detections, names="value")
    for control in (index, detection, method, layer, head, view):
        control.observe(update, names="value")
    update()
    return W.VBox([W.HBox([index, detection]), method, out_all, W.HBox([layer, head]), view, out_one])
