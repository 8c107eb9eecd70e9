"""What the explorers show, as tensors: the recordings they read and the rows and matrices they draw.

Pure functions of a :class:`~gae_utils.Recording` (no matplotlib, no widgets), tested on their
values; :mod:`gae_workbook.exploration.widgets` draws them and wires them to controls.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from gae_utils.explainer import Recording, record
from gae_utils.explanation import Explanation
from gae_utils.heatmaps import grid_heatmap
from gae_utils.layout import TokenLayout
from gae_utils.propagation import layer_steps
from gae_utils.rules import head_relevance
from gae_utils.targets import PairSimilarity
from shapesworld.inputs import REGION_GRID
from shapesworld.targets import cxcywh_to_xyxy

__all__ = [
    "VIEWS",
    "PAIRS",
    "LAYER_VIEWS_DETR",
    "explore_record",
    "explore_detr",
    "row_heatmap",
    "region_heatmap",
    "readout_grid",
    "layer_matrix",
    "shown_matrix",
    "relevancy_added",
    "history_step",
    "layers_attending",
    "dual_record",
    "dual_tower",
    "layer_labels",
    "flow_steps",
    "stream_row",
    "cross_attention_matrix",
    "detr_boxes",
    "detr_slot",
    "detr_layer_map",
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
    return grid_heatmap(row.float(), layout.segment(readout.columns_of).grid, size)  # (H, W)


def region_heatmap(relevance: Tensor, size: int | tuple[int, int]) -> Tensor:
    """shapes-vqa's region relevance ``(..., G*G)`` as images ``(..., H, W)``: bilinearly upsampled
    from the region grid, min-max normalised per map."""
    return grid_heatmap(relevance.float(), (REGION_GRID, REGION_GRID), size)  # (..., H, W)


def readout_grid(layout: TokenLayout, matrix: Tensor) -> Tensor:
    """The explained row of a token x token matrix on its patch grid, raw values (not normalised).

    Args:
        layout: token layout (which rows are explained, prefix tokens, patch grid).
        matrix: ``(N, N)`` a relevancy or attention matrix.

    Returns:
        ``(h, w)`` the readout row's content columns in raster order.
    """
    readout = layout.readouts[0]
    row = layout.read({(readout.rows_of, readout.columns_of): matrix[None]})[readout.name][0]  # (n_content,)
    return row.float().reshape(layout.segment(readout.columns_of).grid)  # (h, w)


def shown_matrix(matrix: Tensor, view: str) -> Tensor:
    """What a layer view draws: ``R - I`` for ``view="relevancy"`` (what the layers added to the
    identity start of Eq. 6, which otherwise dominates the colour scale), the matrix itself otherwise.

    Args:
        matrix: ``(N, N)`` from :func:`layer_matrix`.
        view: the view it came from.
    """
    if view != "relevancy":
        return matrix
    return matrix - torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)  # (N, N)


def layer_matrix(
    rec: Recording,
    index: int,
    target: int,
    layer: int,
    view: str,
    head: int = 0,
    start_layer: int = 0,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
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
        history: ``rec.history(start_layer)`` when the caller keeps it (the explorers do), so that a
            slider move does not propagate every layer again.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    if not 0 <= layer < len(rec.layers):
        raise ValueError(f"layer {layer} is out of range (0..{len(rec.layers) - 1})")
    chosen_layer = rec.layers[layer]
    if view == "relevancy":
        key = (chosen_layer.query, chosen_layer.key)
        history = rec.history(start_layer) if history is None else history
        return history[history_step(rec, layer, start_layer)][key][index, target]  # (N, N)
    if view == "attn_bar":
        return chosen_layer.attn_bar[index, target]  # (N, N)
    if chosen_layer.attn is None or chosen_layer.grad is None:
        raise ValueError("per-head maps were not kept; record with keep_heads=True (explore_record does)")
    if not 0 <= head < chosen_layer.attn.shape[1]:
        raise ValueError(f"head {head} is out of range (0..{chosen_layer.attn.shape[1] - 1})")
    return head_relevance(chosen_layer.attn[index, head], chosen_layer.grad[index, target, head])  # (N, N)


def history_step(rec: Recording, layer: int, start_layer: int = 0) -> int:
    """The entry of ``rec.history(start_layer)`` that holds ``R`` after ``layer``. The layers of one
    co-attention block are applied together (docs/rules.md), so they share one entry; a stack of
    self-attention layers has one entry per layer."""
    if layer < start_layer:
        raise ValueError(f"layer {layer} comes before start_layer={start_layer}; nothing is accumulated yet")
    for step, layers in enumerate(layer_steps(rec.layers, start_layer)):
        if layer in layers:
            return step
    raise ValueError(f"layer {layer} is not among the propagated layers from start_layer={start_layer}")


def relevancy_added(
    rec: Recording,
    index: int,
    target: int,
    layer: int,
    start_layer: int = 0,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
) -> Tensor:
    """What the step holding ``layer`` added to ``R``: ``R_l - R_{l-1}`` (Eq. 6's term
    ``Abar_l @ R_{l-1}``), with ``R_{start_layer - 1} = I``; for a layer of a co-attention block,
    what the block's layers added together (:func:`history_step`).

    Returns:
        ``(N, N)``.
    """
    key = (rec.layers[layer].query, rec.layers[layer].key)
    history = rec.history(start_layer) if history is None else history
    step = history_step(rec, layer, start_layer)
    after = history[step][key][index, target]  # (N, N)
    if step == 0:
        return shown_matrix(after, "relevancy")  # (N, N) R - I
    return after - history[step - 1][key][index, target]  # (N, N)


PAIRS = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))
"""The four relevancy maps of a two-stream model, in the order the flow figures show them."""


def layer_labels(rec: Recording) -> list[str]:
    """One label per recorded layer: ``"3 cross text->image"``, ``"0 self text"``."""
    labels = []
    for i, layer in enumerate(rec.layers):
        what = f"self {layer.query}" if layer.kind == "self" else f"cross {layer.query}->{layer.key}"
        labels.append(f"{i} {what}")
    return labels


def layers_attending(rec: Recording, pair: tuple[str, str]) -> list[int]:
    """The recorded layers whose attention has queries ``pair[0]`` and keys ``pair[1]``: the layers
    whose ``(dA * A)^+`` has the shape of the map ``R[pair]`` (the head view's choices for that map)."""
    return [i for i, layer in enumerate(rec.layers) if (layer.query, layer.key) == tuple(pair)]


def flow_steps(rec: Recording) -> list[str]:
    """One label per entry of :meth:`Recording.history`: a layer, or a co-attention block's two
    cross-attention directions applied together (docs/rules.md)."""
    names = layer_labels(rec)
    return [" + ".join(names[i] for i in step) for step in layer_steps(rec.layers)]


def stream_row(
    rec: Recording,
    index: int,
    target: int,
    step: int,
    pair: tuple[str, str],
    token: int,
    view: str = "relevancy",
    head: int = 0,
    history: list[dict[tuple[str, str], Tensor]] | None = None,
) -> Tensor:
    """Row ``token`` of map ``pair`` for one example: ``R`` after propagation step ``step``, or, for
    ``view="head"``, ``(dA * A)^+`` of one head of recorded layer ``step`` (that layer's own pair;
    Eq. 5 before the mean over heads), or, for ``view="attention"``, that head's attention
    probabilities ``A_h`` themselves (what the head attends, whether or not it reaches the score).
    ``history``: ``rec.history()`` when the caller keeps it.

    Returns:
        ``(N_columns,)``.
    """
    if view == "relevancy":
        history = rec.history() if history is None else history
        if not -len(history) <= step < len(history):
            raise ValueError(f"step {step} is out of range (0..{len(history) - 1})")
        matrix = history[step][pair][index, target]  # (Na, Nb)
    elif view in ("head", "attention"):
        layer = rec.layers[step % len(rec.layers)]
        if (layer.query, layer.key) != pair:
            raise ValueError(f"layer {step} attends {layer.query}->{layer.key}, not {pair[0]}->{pair[1]}")
        matrix = layer_matrix(rec, index, target, step % len(rec.layers), "head", head)  # (Na, Nb) (dA_h * A_h)^+
        if view == "attention":
            matrix = layer.attn[index, head]  # (Na, Nb) A_h; layer_matrix checked keep_heads and the head
    else:
        raise ValueError(f"unknown view {view!r}; choose 'relevancy', 'head' or 'attention'")
    if not 0 <= token < matrix.shape[0]:
        raise ValueError(f"token {token} is out of range: {pair[0]} has {matrix.shape[0]} tokens")
    return matrix[token]


def cross_attention_matrix(rec: Recording, index: int = 0, layer: int = -1, head: int | None = None) -> Tensor:
    """A decoder cross-attention map ``(T, S)``: one cross-attention layer, one head or the head mean.

    Args:
        rec: a recording of :func:`gae_utils.generation.record_generation` (``keep_heads=True`` for heads).
        index: example in the batch.
        layer: index among the cross-attention layers (``-1``: the last decoder layer).
        head: a head, or ``None`` for the mean over heads (the raw-attention baseline).
    """
    cross = [entry for entry in rec.layers if entry.kind == "cross"]
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


LAYER_VIEWS_DETR = ("attention", "attn_bar")


def detr_slot(rec: Recording, index: int, detection: int) -> int:
    """The object query explained in target slot ``detection`` of image ``index``."""
    queries = rec.extra.get("queries")
    if queries is None:
        raise ValueError("this recording has no object queries; record a DetrForObjectDetection")
    if not 0 <= index < len(queries):
        raise ValueError(f"image {index} is out of range (0..{len(queries) - 1})")
    valid = [q for q in queries[index] if q >= 0]
    if not 0 <= detection < len(valid):
        raise ValueError(f"image {index} has {len(valid)} explained detections; detection {detection} is out of range")
    return valid[detection]


def detr_boxes(rec: Recording, size: tuple[int, int]) -> Tensor:
    """``(B, K, 4)`` pixel boxes ``(x0, y0, x1, y1)`` of the explained queries (padding slots: zeros)."""
    queries = torch.tensor(rec.extra["queries"])  # (B, K)
    boxes = cxcywh_to_xyxy(rec.output.pred_boxes.detach().cpu(), size)  # (B, Q, 4)
    picked = boxes.gather(1, queries.clamp_min(0)[..., None].expand(-1, -1, 4))  # (B, K, 4)
    return picked * (queries >= 0)[..., None]


def detr_layer_map(
    rec: Recording, index: int, detection: int, layer: int, view: str = "attention", head: int | None = None
) -> Tensor:
    """The row of one recorded layer for the explained query: ``(Nk,)`` over that layer's keys.

    Encoder layers have no object-query rows and raise. ``view="attention"``: attention
    probabilities (head ``head``, or the mean over heads); ``"attn_bar"``: the Eq. 5 map
    ``mean_h (dA * A)^+`` (or one head's ``(dA * A)^+``) for this detection's target.
    """
    if view not in LAYER_VIEWS_DETR:
        raise ValueError(f"unknown view {view!r}; choose one of {LAYER_VIEWS_DETR}")
    if not -len(rec.layers) <= layer < len(rec.layers):
        raise ValueError(f"layer {layer} is out of range (0..{len(rec.layers) - 1})")
    chosen_layer = rec.layers[layer]
    if chosen_layer.query != "query":
        raise ValueError(
            f"layer {layer} ({chosen_layer.name}) is an encoder layer: its rows are image tokens, not object queries; "
            "choose a decoder layer"
        )
    q = detr_slot(rec, index, detection)
    if head is None:
        return chosen_layer.attn_mean[index, q] if view == "attention" else chosen_layer.attn_bar[index, detection, q]
    if chosen_layer.attn is None or chosen_layer.grad is None:
        raise ValueError("per-head maps were not kept; record with keep_heads=True (explore_detr does)")
    if not 0 <= head < chosen_layer.attn.shape[1]:
        raise ValueError(f"head {head} is out of range (0..{chosen_layer.attn.shape[1] - 1})")
    attn = chosen_layer.attn[index, head, q]  # (Nk,)
    return attn if view == "attention" else head_relevance(attn, chosen_layer.grad[index, detection, head, q])


def explore_detr(model: nn.Module, pixel_values: Tensor, target=None) -> Recording:
    """Record every confident detection (or ``target`` queries) of a batch with per-head maps kept."""
    return record(model, pixel_values, target=target, keep_heads=True)


def dual_record(model: nn.Module, pixel_values: Tensor, texts: dict) -> Recording:
    """Record every (image, text) pair of a dual encoder once: ``(B_i, B_t)`` similarity targets.

    Args:
        model: a dual encoder (Hugging Face ``CLIPModel``).
        pixel_values: ``(B_i, 3, H, W)`` what the model takes.
        texts: tokenizer output of ``B_t`` texts.
    """
    return record(model, {"pixel_values": pixel_values, **dict(texts)}, PairSimilarity("all"))


def dual_tower(rec: Recording, modality: str, method: str = "gae", start_layer: int = 0) -> Explanation:
    """One tower of a :func:`dual_record` recording explained on its own layers (as
    :func:`gae_utils.dual.explain_dual` does): ``relevance["image"]`` is ``(B_i, B_t, N)``, and
    ``relevance["text"]`` is ``(B_t, B_i, L)`` (the text tower's targets are the images)."""
    own = [layer for layer in rec.layers if layer.query == modality]
    if not 0 <= start_layer < len(own):
        raise ValueError(f"start_layer={start_layer} is out of range for the {modality} tower's {len(own)} layers")
    scores = rec.scores if modality == "image" else rec.scores.T  # (B_i, B_t) or (B_t, B_i)
    return replace(rec, layers=own, layout=rec.layout.only(modality), scores=scores).explanation(method, start_layer)
