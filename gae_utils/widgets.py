"""Interactive explorers: pure render functions, and ipywidgets that only wire controls to them.

One :func:`explore_record` call records a batch of images for *every* class at once (one forward
pass, one backward per class, per-head maps kept); each slider then calls a pure function
``render_*(recording, images, ...) -> Figure`` that the tests exercise directly:

- :func:`render_layer`: the relevancy ``R`` after layer ``l`` (Eq. 6 accumulated so far), the
  aggregated map ``Abar`` of layer ``l`` (Eq. 5), or one head's ``(dA * A)^+`` at layer ``l``;
  each as the explained row over the image and as the full token x token matrix.
- :func:`render_methods`: GAE beside the baselines for one example and class.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import method_names
from .explainer import Recording, record
from .figures import METHOD_LABELS, PANEL, overlay, plot_matrix, show_image
from .layout import TokenLayout

__all__ = [
    "explore_record",
    "row_heatmap",
    "layer_matrix",
    "render_layer",
    "render_steps",
    "render_methods",
    "explorer",
    "VIEWS",
    "cross_attention_matrix",
    "render_translation",
    "render_translation_layer",
    "translation_explorer",
]

VIEWS = ("relevancy", "attn_bar", "head")


def explore_record(model: nn.Module, images: Tensor, num_classes: int | None = None) -> Recording:
    """Record ``images`` for every class (K = num_classes targets) with per-head maps kept."""
    if num_classes is None:
        with torch.no_grad():
            num_classes = record(model, images[:1], target=0).logits.shape[-1]
    targets = torch.arange(num_classes).expand(images.shape[0], -1)  # (B, C)
    return record(model, images, target=targets, keep_heads=True)


def row_heatmap(layout: TokenLayout, matrix: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """The explained row of a token x token matrix as an image-sized map in [0, 1].

    Args:
        layout: token layout (which rows are explained, prefix tokens, patch grid).
        matrix: ``(N, N)`` a relevancy or attention matrix.
        size: output ``(H, W)``; None keeps the patch grid.

    Returns:
        ``(H, W)`` min-max normalised map.
    """
    readout = layout.readouts[0]
    row = layout.read({(readout.rows_of, readout.columns_of): matrix[None]})[readout.name][0]  # (n_content,)
    grid = row.reshape(1, 1, *layout.segment(readout.columns_of).grid).float()  # (1, 1, h, w)
    if size is not None:
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    grid = grid[0, 0]
    span = grid.max() - grid.min()
    return (grid - grid.min()) / span if span > 0 else torch.zeros_like(grid)


def layer_matrix(
    rec: Recording, index: int, target: int, layer: int, view: str, head: int = 0, start_layer: int = 0
) -> Tensor:
    """The ``(N, N)`` matrix a layer view shows.

    Args:
        rec: a recording with per-head maps (:func:`explore_record`).
        index: example in the batch.
        target: target column (class index for :func:`explore_record` recordings).
        layer: layer index.
        view: ``"relevancy"`` (R after ``layer``), ``"attn_bar"`` (Eq. 5 map of ``layer``) or
            ``"head"`` (``(dA * A)^+`` of one head at ``layer``).
        head: head index for ``view="head"``.
        start_layer: first layer accumulated for ``view="relevancy"``.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    if not 0 <= layer < len(rec.layers):
        raise ValueError(f"layer {layer} is out of range (0..{len(rec.layers) - 1})")
    record_ = rec.layers[layer]
    if view == "relevancy":
        if layer < start_layer:
            raise ValueError(f"layer {layer} comes before start_layer={start_layer}; nothing is accumulated yet")
        key = (record_.query, record_.key)
        return rec.history(start_layer)[layer - start_layer][key][index, target]  # (N, N)
    if view == "attn_bar":
        return record_.cam[index, target]  # (N, N)
    if record_.attn is None or record_.grad is None:
        raise ValueError("per-head maps were not kept; record with keep_heads=True (explore_record does)")
    if not 0 <= head < record_.attn.shape[1]:
        raise ValueError(f"head {head} is out of range (0..{record_.attn.shape[1] - 1})")
    return (record_.grad[index, target, head] * record_.attn[index, head]).clamp(min=0)  # (N, N)


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
            row_heatmap(rec.layout, rec_layer.cam[index, target], size),
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
        exp = rec.explanation(method, start_layer if method in ("gae", "rollout") else 0)
        heat = exp.heatmap(size)  # (B, K, H, W)
        overlay(ax, images[index], heat[index, target], METHOD_LABELS.get(method, method))
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
    from IPython.display import display

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

    def show(out, fig):
        with out:
            out.clear_output(wait=True)
            display(fig)
            plt.close(fig)

    def update(*_):
        kwargs = dict(index=index.value, target=target.value, class_names=names)
        show(out_methods, render_methods(rec, images, start_layer=start.value, highlight=method.value, **kwargs))
        lay = max(layer.value, start.value) if view.value == "relevancy" else layer.value
        show(
            out_layer,
            render_layer(rec, images, layer=lay, view=view.value, head=head.value, start_layer=start.value, **kwargs),
        )

    for control in (index, target, method, view, layer, head, start):
        control.observe(update, names="value")
    update()
    return W.VBox(
        [W.HBox([index, target]), method, start, out_methods, W.HBox([view]), W.HBox([layer, head]), out_layer]
    )


# ----------------------------------------------------------------------------- seq2seq explorer


def cross_attention_matrix(rec: Recording, index: int = 0, layer: int = -1, head: int | None = None) -> Tensor:
    """A decoder cross-attention map ``(T, S)``: one cross-attention layer, one head or the head mean.

    Args:
        rec: a recording of :func:`gae_utils.seq2seq.record_generation` (``keep_heads=True`` for heads).
        index: example in the batch.
        layer: index among the cross-attention layers (``-1``: the last decoder layer).
        head: a head, or ``None`` for the mean over heads (the raw-attention baseline).
    """
    cross = [layer_ for layer_ in rec.layers if layer_.kind == "cross"]
    if not cross:
        raise ValueError("the recording has no cross-attention layer; record an encoder-decoder")
    if not -len(cross) <= layer < len(cross):
        raise ValueError(f"cross-attention layer {layer} is out of range (0..{len(cross) - 1})")
    chosen = cross[layer]
    if head is None:
        return chosen.attn_mean[index]  # (T, S)
    if chosen.attn is None:
        raise ValueError("per-head maps were not kept; record with keep_heads=True")
    if not 0 <= head < chosen.attn.shape[1]:
        raise ValueError(f"head {head} is out of range (0..{chosen.attn.shape[1] - 1})")
    return chosen.attn[index, head]  # (T, S)


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
        rec: a recording of :func:`gae_utils.seq2seq.record_generation` (every step explained).
        source_tokens: the source tokens of example ``index`` (columns).
        target_tokens: the generated tokens of example ``index`` (rows), as many as steps shown.
        index: example in the batch.
        method: ``gae`` or a baseline with a source map (rollout has none).
        step: the selected generated token (framed; its prefix relevance is shown).
        start_layer: first aggregated layer for ``gae``.
    """
    from .figures import plot_alignment, plot_token_relevance

    if not 0 <= step < len(target_tokens):
        raise ValueError(f"step {step} is out of range for {len(target_tokens)} generated tokens")
    exp = rec.explanation(method, start_layer if method == "gae" else 0)
    source = exp.relevance["source"][index]  # (K, S)
    prefix = exp.relevance["target"][index, step, : step + 1]  # (t + 1,)
    fig = plt.figure(figsize=(PANEL * 4.2, PANEL * 2.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[5, 1])
    ax_rel, ax_att, ax_prefix = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    label = METHOD_LABELS.get(method, method)
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
    from .figures import plot_alignment

    cross = [layer_ for layer_ in rec.layers if layer_.kind == "cross"]
    attn = cross_attention_matrix(rec, index, layer, head)  # (T, S)
    chosen = cross[layer]
    if head is None:
        cam = chosen.cam[index, step]  # (T, S) Eq. 5: mean over heads of (dA * A)+
    else:
        cam = (chosen.grad[index, step, head] * chosen.attn[index, head]).clamp(min=0)  # (T, S)
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
        model: an encoder-decoder (see :func:`gae_utils.seq2seq.explain_generation`).
        inputs: the source of one example, ``{"input_ids": (1, S), "attention_mask": (1, S)}``.
        generated: ``(1, 1 + T)`` start token + generated tokens.
        source_tokens: the S source tokens.
        target_tokens: the T generated tokens.
    """
    import ipywidgets as W
    from IPython.display import display

    from .seq2seq import record_generation

    rec = record_generation(model, inputs, generated, keep_heads=True)
    cross = [layer_ for layer_ in rec.layers if layer_.kind == "cross"]
    methods = [m for m in method_names() if m != "rollout"]  # rollout has no cross-attention rule
    step = W.Dropdown(options=[(f"{t}: {w}", t) for t, w in enumerate(target_tokens)], description="token")
    method = W.ToggleButtons(options=methods, description="method")
    layer = W.IntSlider(len(cross) - 1, 0, len(cross) - 1, description="cross layer")
    head = W.Dropdown(
        options=[("mean", None), *[(str(h), h) for h in range(cross[-1].attn.shape[1])]], description="head"
    )
    out_methods, out_layer = W.Output(), W.Output()

    def show(out, fig):
        with out:
            out.clear_output(wait=True)
            display(fig)
            plt.close(fig)

    def update(*_):
        show(out_methods, render_translation(rec, source_tokens, target_tokens, method=method.value, step=step.value))
        show(
            out_layer,
            render_translation_layer(
                rec, source_tokens, target_tokens, step=step.value, layer=layer.value, head=head.value
            ),
        )

    for control in (step, method, layer, head):
        control.observe(update, names="value")
    update()
    return W.VBox([W.HBox([step]), method, out_methods, W.HBox([layer, head]), out_layer])
