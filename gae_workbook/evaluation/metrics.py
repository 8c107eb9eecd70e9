"""Evaluation metrics for relevancy maps, following the protocols the GAE authors used.

This module scores explanation maps the same way the papers do, so the numbers are comparable
with the published tables:

* **Perturbation test** (Chefer, Gur, Wolf, "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021, Sec. 4; reused in "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, Sec. 5): pixels are removed
  in order of relevance (most relevant first for the *positive* test, least relevant first for the
  *negative* test), the classifier is re-run at each step and its top-1 accuracy is recorded. The
  area under the accuracy curve is ``np.trapz(y, x) * 100``. See :func:`perturbation_curve` and
  :func:`perturbation_auc`.
* **Weakly-supervised segmentation test** (CVPR 2021 Sec. 4, ImageNet-segmentation; ICCV 2021
  DETR variant thresholded with Otsu's method): the map is binarised (above its mean, or above its
  Otsu threshold) and compared with the ground-truth mask by pixel accuracy and mIoU over
  {background, foreground}; the soft map is scored by average precision. See
  :func:`segmentation_scores`, :func:`otsu_threshold` and :func:`average_precision`.
* **Ground-truth checks for synthetic scenes**: the pointing game (Zhang et al., "Top-down Neural
  Attention by Excitation Backprop", ECCV 2016; the hit test is whether the argmax of the map lies
  inside the object's mask) and the relevance mass (share of positive relevance inside the mask).
  See :func:`pointing_game` and :func:`relevance_mass`.

All functions take batched torch tensors, work on any device and never assume a batch of one.
Scores are returned as fractions in [0, 1] (the papers print them as percentages), except the
perturbation AUC, which is already scaled by 100 as in the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from gae_utils.heatmaps import normalize_maps, upsample_maps

__all__ = [
    "PERTURBATION_STEPS",
    "SEGMENTATION_COUNTS",
    "average_precision",
    "box_iou",
    "detection_map",
    "masks_to_grid",
    "normalize_maps",
    "otsu_threshold",
    "perturbation_auc",
    "perturbation_curve",
    "pointing_game",
    "relevance_mass",
    "replacement_curve",
    "segmentation_counts",
    "segmentation_from_counts",
    "segmentation_scores",
    "upsample_maps",
]

PERTURBATION_STEPS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Fractions of pixels removed in the vision perturbation test (x = 0 is the unperturbed image)."""


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_float(maps: Tensor) -> Tensor:
    """Returns ``maps`` unchanged if it is floating point, else cast to float32."""
    return maps if maps.is_floating_point() else maps.float()


def _check_no_nan(maps: Tensor, name: str = "maps") -> None:
    if maps.is_floating_point() and bool(torch.isnan(maps).any()):
        raise ValueError(
            f"{name} contains NaN values; fix the explanation (e.g. a 0/0 in a normalisation) "
            f"or replace them with torch.nan_to_num before scoring."
        )


def _check_maps_masks(maps: Tensor, masks: Tensor) -> Tensor:
    """Validates an (N, H, W) map batch against an (N, H, W) bool mask batch.

    Returns:
        ``maps`` as a floating-point tensor.
    """
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise TypeError(
            f"maps and masks must both be torch tensors, got {type(maps).__name__} and "
            f"{type(masks).__name__}; convert with torch.as_tensor."
        )
    if maps.dim() != 3:
        raise ValueError(
            f"maps must have shape (N, H, W), got {tuple(maps.shape)}; add a batch dimension "
            f"with maps.unsqueeze(0) for a single map."
        )
    if maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must have the same shape, got maps {tuple(maps.shape)} and masks "
            f"{tuple(masks.shape)}; upsample the maps to the mask resolution with upsample_maps."
        )
    if masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be a bool tensor, got dtype {masks.dtype}; convert with masks > 0.5 (or masks.bool())."
        )
    if maps.shape[0] == 0:
        raise ValueError("empty batch: maps and masks have N = 0 items; pass at least one map.")
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps have an empty spatial size {tuple(maps.shape[1:])}.")
    _check_no_nan(maps)
    return _as_float(maps)


# --------------------------------------------------------------------------------------------
# Map preparation
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Ground-truth localisation metrics
# --------------------------------------------------------------------------------------------


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Pointing game (Zhang et al., ECCV 2016): does the most relevant pixel hit the object?

    Ties are broken towards the *first* maximal pixel in row-major (C) order, computed explicitly
    so that the result does not depend on the backend's ``argmax`` tie behaviour.

    Args:
        maps: Relevancy maps of shape ``(N, H, W)``.
        masks: Object masks of shape ``(N, H, W)``, dtype bool.

    Returns:
        Bool tensor of shape ``(N,)``: True where the argmax of the map lies inside the mask.

    Raises:
        ValueError: On mismatched shapes, non-bool masks, an empty batch or NaN in the maps.
    """
    maps = _check_maps_masks(maps, masks)
    flat = maps.flatten(1)  # (N, H*W)
    num_pixels = flat.shape[1]
    peak = flat.amax(dim=1, keepdim=True)  # (N, 1)
    positions = torch.arange(num_pixels, device=flat.device).expand_as(flat)  # (N, H*W)
    not_peak = torch.full_like(positions, num_pixels)
    first_peak = torch.where(flat == peak, positions, not_peak).amin(dim=1)  # (N,)
    return masks.flatten(1).gather(1, first_peak[:, None]).squeeze(1)  # (N,)


def masks_to_grid(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Pixel masks to a token grid: a cell is inside when it holds any pixel of the mask.

    Scores a patch-level map at its own resolution (e.g. the pointing game on a ViT's 8x8 patch
    grid: the most relevant *patch* covers part of the object).

    Args:
        masks: ``(N, H, W)`` bool, with ``H`` and ``W`` multiples of the grid.
        grid: ``(h, w)`` the map's grid.

    Returns:
        ``(N, h, w)`` bool.
    """
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {masks.dtype}; pass masks > 0.5")
    height, width = masks.shape[-2:]
    if height % grid[0] or width % grid[1]:
        raise ValueError(f"mask size {(height, width)} is not a multiple of the grid {grid}; resize the masks first")
    cells = masks.reshape(masks.shape[0], grid[0], height // grid[0], grid[1], width // grid[1])  # (N, h, ph, w, pw)
    return cells.any(dim=4).any(dim=2)  # (N, h, w)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the positive relevance that falls inside the mask.

    ``sum(relu(map) * mask) / sum(relu(map))`` per map; a map with no positive relevance scores 0.

    Args:
        maps: Relevancy maps of shape ``(N, H, W)``.
        masks: Object masks of shape ``(N, H, W)``, dtype bool.

    Returns:
        Float tensor of shape ``(N,)`` with values in [0, 1].

    Raises:
        ValueError: On mismatched shapes, non-bool masks, an empty batch or NaN in the maps.
    """
    maps = _check_maps_masks(maps, masks)
    positive = maps.clamp_min(0).flatten(1)  # (N, H*W)
    total = positive.sum(dim=1)  # (N,)
    inside = (positive * masks.flatten(1)).sum(dim=1)  # (N,)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, inside / safe_total, torch.zeros_like(total))


# --------------------------------------------------------------------------------------------
# Segmentation test
# --------------------------------------------------------------------------------------------


def otsu_threshold(maps: Tensor, nbins: int = 256) -> Tensor:
    """Otsu's threshold of every map, computed independently over its two trailing dims.

    Same algorithm as ``skimage.filters.threshold_otsu`` for float images: a ``nbins``-bin
    histogram over ``[min, max]`` of the map, the threshold is the bin centre that maximises the
    between-class variance (first maximum on ties); the foreground is ``map > threshold``.
    A constant map returns its value (so its foreground is empty). Computed in float64.

    Args:
        maps: Maps of shape ``(..., H, W)``.
        nbins: Number of histogram bins.

    Returns:
        Thresholds of shape ``(...)``, in the dtype of ``maps`` (float32 for integer maps).
    """
    if maps.dim() < 2:
        raise ValueError(f"maps must have at least 2 dims (..., H, W), got {tuple(maps.shape)}.")
    if nbins < 2:
        raise ValueError(f"nbins must be at least 2, got {nbins}.")
    if maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"maps have an empty spatial size {tuple(maps.shape[-2:])}.")
    _check_no_nan(maps)
    out_dtype = _as_float(maps).dtype
    leading = maps.shape[:-2]
    values = maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).double()  # (B, P)
    low = values.amin(dim=1, keepdim=True)  # (B, 1)
    high = values.amax(dim=1, keepdim=True)  # (B, 1)
    span = high - low
    constant = span <= 0  # (B, 1)
    span = torch.where(constant, torch.ones_like(span), span)

    # Bin edges and bin index of every value, as numpy.histogram does for uniform bins.
    steps = torch.linspace(0, 1, nbins + 1, dtype=torch.float64, device=values.device)
    edges = low + span * steps  # (B, nbins + 1)
    edges[:, -1:] = low + span  # exact last edge
    index = ((values - low) * (nbins / span)).long().clamp(0, nbins - 1)  # (B, P)
    index = index - (values < edges.gather(1, index)).long()  # rounding fix-up, as numpy
    index = index + ((values >= edges.gather(1, index + 1)) & (index != nbins - 1)).long()
    counts = torch.zeros(values.shape[0], nbins, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, index, torch.ones_like(values))  # (B, nbins)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2  # (B, nbins)

    # Class weights and means for every split "bins <= i | bins > i".
    weight_low = counts.cumsum(dim=1)  # (B, nbins)
    weight_high = counts.flip(1).cumsum(dim=1).flip(1)  # (B, nbins)
    mass = counts * centers
    mean_low = mass.cumsum(dim=1) / weight_low.clamp_min(1)
    mean_high = mass.flip(1).cumsum(dim=1).flip(1) / weight_high.clamp_min(1)
    between = weight_low[:, :-1] * weight_high[:, 1:] * (mean_low[:, :-1] - mean_high[:, 1:]) ** 2
    best = between.argmax(dim=1, keepdim=True)  # (B, 1); torch.argmax returns the first maximum
    threshold = centers.gather(1, best)  # (B, 1)
    threshold = torch.where(constant, low, threshold).squeeze(1)  # (B,)
    return threshold.to(out_dtype).reshape(leading)  # (...)


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of each row of scores against binary labels.

    Step-wise area under the precision-recall curve, ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds in decreasing order (tied scores form one threshold), as
    ``sklearn.metrics.average_precision_score``. Vectorised: one sort per row. Each positive
    contributes ``P / num_positives`` where ``P`` is the precision at the end of its tie group.
    A row without positives scores 0 (what the authors' ``np.nan_to_num`` of sklearn gives).

    Args:
        scores: Scores of shape ``(N, P)`` (higher means more likely positive).
        labels: Bool labels of shape ``(N, P)``.

    Returns:
        Float64 tensor of shape ``(N,)``.
    """
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must both have shape (N, P), got scores {tuple(scores.shape)} and "
            f"labels {tuple(labels.shape)}."
        )
    if labels.dtype != torch.bool:
        raise ValueError(f"labels must be a bool tensor, got dtype {labels.dtype}; convert with labels > 0.5.")
    _check_no_nan(scores, "scores")
    num_items = scores.shape[1]
    sorted_scores, order = scores.double().sort(dim=1, descending=True)  # (N, P)
    sorted_labels = labels.gather(1, order).double()  # (N, P)
    true_pos = sorted_labels.cumsum(dim=1)  # (N, P)
    ranks = torch.arange(1, num_items + 1, dtype=torch.float64, device=scores.device)  # (P,)
    precision = true_pos / ranks  # (N, P)
    # Index of the last element of each tie group, propagated back to every member of the group.
    group_end = torch.ones_like(sorted_labels, dtype=torch.bool)  # (N, P)
    group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    positions = torch.arange(num_items, device=scores.device).expand(scores.shape[0], -1)
    end_index = torch.where(group_end, positions, torch.full_like(positions, num_items))
    end_index = end_index.flip(1).cummin(dim=1).values.flip(1)  # (N, P)
    precision_at_end = precision.gather(1, end_index)  # (N, P)
    num_pos = sorted_labels.sum(dim=1)  # (N,)
    ap = (sorted_labels * precision_at_end).sum(dim=1) / num_pos.clamp_min(1)
    return torch.where(num_pos > 0, ap, torch.zeros_like(ap))


def segmentation_scores(
    maps: Tensor,
    masks: Tensor,
    threshold: str = "mean",
    ap_over_both_classes: bool = False,
) -> dict[str, float]:
    """Weakly-supervised segmentation scores of relevancy maps against ground-truth masks.

    Every map is min-max normalised (so raw or normalised maps give the same result) and
    binarised: foreground = ``map > mean(map)`` (``threshold="mean"``, ViT ImageNet-segmentation
    protocol) or ``map > otsu_threshold(map)`` (``threshold="otsu"``, DETR protocol).

    Accumulation, as in the authors' ``imagenet_seg_eval.py``: intersections, unions, correct
    pixels and labelled pixels are *summed over the whole set* before dividing, so
    ``IoU_c = sum_i inter_i,c / sum_i union_i,c`` for c in {background, foreground},
    ``miou = mean_c IoU_c`` and ``pixel_accuracy = total correct / total pixels``; large objects
    therefore weigh more than small ones. ``map`` (mAP) is the mean over images of the
    per-image average precision (see :func:`average_precision`).

    Args:
        maps: Relevancy maps of shape ``(N, H, W)``, at mask resolution.
        masks: Ground-truth foreground masks of shape ``(N, H, W)``, dtype bool.
        threshold: ``"mean"`` or ``"otsu"``.
        ap_over_both_classes: If False (default), AP of the normalised map as score against the
            mask as label. If True, the authors' exact variant: one AP per image over the pixels
            of both channels, scores ``[1 - map, map]`` against labels ``[~mask, mask]``.

    Returns:
        ``{"pixel_accuracy": ..., "miou": ..., "map": ...}`` as fractions in [0, 1].

    Raises:
        ValueError: On mismatched shapes, non-bool masks, an empty batch, NaN in the maps or an
            unknown threshold.
    """
    return segmentation_from_counts(segmentation_counts(maps, masks, threshold, ap_over_both_classes))


SEGMENTATION_COUNTS: tuple[str, ...] = (
    "inter_fg",
    "union_fg",
    "inter_bg",
    "union_bg",
    "correct",
    "labeled",
    "ap_sum",
    "images",
)
"""What :func:`segmentation_counts` returns, in order: sums that add up over batches and processes."""


def segmentation_counts(
    maps: Tensor, masks: Tensor, threshold: str = "mean", ap_over_both_classes: bool = False
) -> Tensor:
    """The sums behind :func:`segmentation_scores`, which add up over batches, shards and processes.

    Args:
        maps: ``(N, H, W)`` relevancy maps at mask resolution.
        masks: ``(N, H, W)`` bool ground truth.
        threshold: ``"mean"`` or ``"otsu"`` (see :func:`segmentation_scores`).
        ap_over_both_classes: the authors' two-channel AP (see :func:`segmentation_scores`).

    Returns:
        ``(8,)`` float64 tensor ordered as :data:`SEGMENTATION_COUNTS`; turn it into scores with
        :func:`segmentation_from_counts`.
    """
    maps = _check_maps_masks(maps, masks)
    maps = normalize_maps(maps)  # (N, H, W)
    if threshold == "mean":
        cut = maps.mean(dim=(1, 2))  # (N,)
    elif threshold == "otsu":
        cut = otsu_threshold(maps)  # (N,)
    else:
        raise ValueError(f"threshold must be 'mean' or 'otsu', got {threshold!r}.")
    foreground = maps > cut[:, None, None]  # (N, H, W)

    scores = maps.flatten(1)  # (N, H*W)
    labels = masks.flatten(1)  # (N, H*W)
    if ap_over_both_classes:
        scores = torch.cat([1 - scores, scores], dim=1)  # (N, 2*H*W)
        labels = torch.cat([~labels, labels], dim=1)  # (N, 2*H*W)
    counts = [
        (foreground & masks).sum(),
        (foreground | masks).sum(),
        (~foreground & ~masks).sum(),
        (~foreground | ~masks).sum(),
        (foreground == masks).sum(),
        masks.numel(),
        average_precision(scores, labels).sum(),
        masks.shape[0],
    ]
    return torch.tensor([float(c) for c in counts], dtype=torch.float64)  # (8,)


def segmentation_from_counts(counts: Tensor) -> dict[str, float]:
    """Pixel accuracy, mIoU over {background, foreground} and mAP from summed :func:`segmentation_counts`.

    ``IoU_c = inter_c / (union_c + eps)`` with the authors' ``eps = np.spacing(1)``, ``miou`` their
    mean, ``pixel_accuracy = correct / labeled``, ``map = ap_sum / images``.
    """
    c = dict(zip(SEGMENTATION_COUNTS, counts.double().tolist()))
    eps = float(np.spacing(1.0))  # the authors' guard against 0 / 0
    miou = (c["inter_fg"] / (c["union_fg"] + eps) + c["inter_bg"] / (c["union_bg"] + eps)) / 2
    return {"pixel_accuracy": c["correct"] / c["labeled"], "miou": miou, "map": c["ap_sum"] / c["images"]}


# --------------------------------------------------------------------------------------------
# Perturbation test
# --------------------------------------------------------------------------------------------


def _check_steps(steps: Sequence[float] | Tensor) -> list[float]:
    values = [float(x) for x in (steps.tolist() if isinstance(steps, Tensor) else steps)]
    if len(values) == 0:
        raise ValueError("steps is empty; pass fractions such as PERTURBATION_STEPS.")
    bad = [x for x in values if not 0.0 <= x < 1.0]
    if bad:
        raise ValueError(
            f"steps must be fractions in [0, 1), got {bad}; e.g. use 0.9 rather than 90 "
            f"(removing every pixel, x = 1, is not part of the protocol)."
        )
    return values


def _pixels_removed(fraction: float, num_pixels: int) -> int:
    """``int(num_pixels * fraction)`` as in the authors' code, robust to float error (0.3*10)."""
    return math.floor(round(fraction * num_pixels, 6))


def perturbation_curve(
    predict: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    positive: bool = True,
    steps: Sequence[float] = PERTURBATION_STEPS,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Accuracy of a classifier as pixels are removed in relevance order (CVPR 2021 Sec. 4).

    For every step ``x``, the ``int(x * H * W)`` pixels with the highest (``positive=True``) or
    lowest (``positive=False``) relevance are set to 0 in all channels (in [0, 1] image space,
    i.e. before the classifier's input normalisation, which ``predict`` applies), and
    ``predict`` says whether each image is still classified as its target. ``x = 0`` scores the
    unperturbed images. Whether ``targets`` are the predicted or the ground-truth classes is the
    caller's choice (the published ViT table uses the predicted class); report which.

    Ranking ties are broken stably: among pixels of equal relevance the one with the lower
    row-major index is removed first, in both the positive and the negative order.

    For speed, all steps of a chunk of ``batch_size`` images are stacked into a single call:
    ``predict`` receives ``len(steps) * n`` images ordered step-major (all images of step 0, then
    all of step 1, ...) together with the matching targets. Lower ``batch_size`` to save memory.

    Args:
        predict: ``predict(images, targets) -> (n,) bool``: whether each image is still
            classified correctly, e.g. ``lambda x, t: model(normalize(x)).argmax(-1) == t``.
        images: Images of shape ``(N, C, H, W)`` with values in [0, 1].
        maps: Pixel-resolution relevance of shape ``(N, H, W)`` (see :func:`upsample_maps`).
        targets: Target classes of shape ``(N,)``, dtype long.
        positive: Remove the most relevant pixels first (True) or the least relevant (False).
        steps: Fractions of pixels to remove, each in [0, 1).
        batch_size: Number of images per chunk.
        progress: Show a tqdm progress bar over chunks.

    Returns:
        Float tensor of shape ``(len(steps),)`` with the accuracy at every step, on the CPU.

    Raises:
        ValueError: On mismatched shapes, an empty batch, NaN in the maps, steps outside
            [0, 1), a non-positive batch size or a ``predict`` output of the wrong shape.
    """
    step_values = _check_steps(steps)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}.")
    num_images, _, height, width = images.shape
    if num_images == 0:
        raise ValueError("empty batch: images has N = 0 items; pass at least one image.")
    if maps.shape != (num_images, height, width):
        raise ValueError(
            f"maps must have shape (N, H, W) = {(num_images, height, width)} to match images "
            f"{tuple(images.shape)}, got {tuple(maps.shape)}; upsample patch maps to the image "
            f"size with upsample_maps(maps, (H, W))."
        )
    if targets.shape != (num_images,):
        raise ValueError(f"targets must have shape (N,) = ({num_images},), got {tuple(targets.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}.")
    _check_no_nan(maps)

    device = images.device
    num_steps = len(step_values)
    num_pixels = height * width
    removed = torch.tensor([_pixels_removed(x, num_pixels) for x in step_values], device=device)  # (S,)
    correct = torch.zeros(num_steps, dtype=torch.float64)

    chunks = range(0, num_images, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="perturbation", unit="chunk")

    with torch.no_grad():
        for start in chunks:
            chunk = images[start : start + batch_size]  # (n, C, H, W)
            n = chunk.shape[0]
            relevance = maps[start : start + batch_size].to(device).flatten(1)  # (n, H*W)
            chunk_targets = targets[start : start + batch_size].to(device)  # (n,)
            # Rank of every pixel in removal order (0 = removed first), one sort per image.
            order = torch.argsort(relevance, dim=1, descending=positive, stable=True)  # (n, H*W)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(num_pixels, device=device).expand(n, -1))
            drop = rank[None] < removed[:, None, None]  # (S, n, H*W)
            drop = drop.view(num_steps, n, 1, height, width)  # (S, n, 1, H, W)
            perturbed = torch.where(drop, chunk.new_zeros(()), chunk[None])  # (S, n, C, H, W)
            perturbed = perturbed.reshape(num_steps * n, *chunk.shape[1:])  # (S*n, C, H, W)
            outcome = predict(perturbed, chunk_targets.repeat(num_steps))
            if not isinstance(outcome, Tensor) or outcome.shape != (num_steps * n,):
                got = tuple(outcome.shape) if isinstance(outcome, Tensor) else type(outcome)
                raise ValueError(
                    f"predict must return a (n,) bool tensor with one entry per input image; "
                    f"called on {num_steps * n} images, it returned {got}."
                )
            correct += outcome.reshape(num_steps, n).double().sum(dim=1).cpu()  # (S,)
    return (correct / num_images).float()


def perturbation_auc(accuracies: Sequence[float] | Tensor, steps: Sequence[float] = PERTURBATION_STEPS) -> float:
    """Area under the perturbation curve, ``np.trapz(accuracies, steps) * 100`` as the authors.

    With the default steps 0, 0.1, ..., 0.9 a curve that stays at 1.0 gives 90.0.

    Args:
        accuracies: Accuracy at every step, shape ``(len(steps),)``.
        steps: The fractions of removed pixels the accuracies were measured at.

    Returns:
        The trapezoid area times 100.
    """
    if isinstance(accuracies, Tensor):
        y = accuracies.detach().double().cpu().numpy()
    else:
        y = np.asarray(accuracies, dtype=np.float64)
    x = np.asarray(steps.tolist() if isinstance(steps, Tensor) else steps, dtype=np.float64)
    if y.ndim != 1 or y.shape != x.shape:
        raise ValueError(
            f"accuracies and steps must be 1-D of the same length, got accuracies {y.shape} and steps {x.shape}."
        )
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(y, x) * 100)


# --------------------------------------------------------------------------------------------
# Object detection (DETR): mean average precision at an IoU threshold
# --------------------------------------------------------------------------------------------


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes ``(x0, y0, x1, y1)``.

    Args:
        boxes_a: ``(N, 4)``.
        boxes_b: ``(M, 4)``.

    Returns:
        ``(N, M)`` IoU; pairs whose union is empty score 0.
    """
    if boxes_a.ndim != 2 or boxes_a.shape[-1] != 4 or boxes_b.ndim != 2 or boxes_b.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4) and (M, 4), got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}.")
    a, b = boxes_a.double(), boxes_b.double()
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)  # (N,)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)  # (M,)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = (high - low).clamp_min(0).prod(dim=-1)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def detection_map(
    predictions: Sequence[tuple[Tensor, Tensor, Tensor]],
    ground_truth: Sequence[tuple[Tensor, Tensor]],
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Mean average precision of a detector at one IoU threshold (PASCAL VOC 2010+ protocol).

    For every class, the detections of all images are ranked by score; a detection is a true
    positive when its IoU with a not yet matched ground-truth box of its class in its image is at
    least ``iou_threshold`` (greedy, in score order, each box matched at most once), otherwise a
    false positive. AP is the area under the precision-recall curve made monotone
    (``P(r) = max_{r' >= r} P(r')``), summed over the recall steps. ``map`` is the mean AP over
    the classes that have at least one ground-truth box (classes without boxes are skipped).

    Args:
        predictions: per image ``(boxes (D, 4) xyxy, scores (D,), labels (D,))``.
        ground_truth: per image ``(boxes (G, 4) xyxy, labels (G,))``.
        iou_threshold: minimum IoU of a true positive.

    Returns:
        ``{"map": ..., "num_classes": ..., "per_class": {label: AP}}``.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} images of predictions but {len(ground_truth)} of ground truth.")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    # (score, is_true_positive) of every detection, per class; number of ground-truth boxes per class.
    ranked: dict[int, list[tuple[float, bool]]] = {}
    num_truth: dict[int, int] = {}
    for (p_boxes, p_scores, p_labels), (g_boxes, g_labels) in zip(predictions, ground_truth):
        if p_boxes.shape[0] != p_scores.shape[0] or p_boxes.shape[0] != p_labels.shape[0]:
            raise ValueError("each prediction needs as many scores and labels as boxes.")
        for label in g_labels.tolist():
            num_truth[label] = num_truth.get(label, 0) + 1
        iou = box_iou(p_boxes.reshape(-1, 4), g_boxes.reshape(-1, 4))  # (D, G)
        matched = torch.zeros(g_boxes.shape[0], dtype=torch.bool)
        for d in p_scores.double().argsort(descending=True, stable=True).tolist():
            label = int(p_labels[d])
            candidates = (g_labels == label) & ~matched  # (G,)
            hit = False
            if candidates.any():
                overlap = torch.where(candidates, iou[d], torch.full_like(iou[d], -1.0))
                best = int(overlap.argmax())
                if overlap[best] >= iou_threshold:
                    matched[best] = True
                    hit = True
            ranked.setdefault(label, []).append((float(p_scores[d]), hit))
    per_class = {}
    for label, total in sorted(num_truth.items()):
        entries = sorted(ranked.get(label, []), key=lambda e: -e[0])
        hits = torch.tensor([h for _, h in entries], dtype=torch.float64)
        true_pos = hits.cumsum(0)
        precision = true_pos / torch.arange(1, len(entries) + 1, dtype=torch.float64)
        recall = true_pos / total
        if len(entries) == 0:
            per_class[label] = 0.0
            continue
        envelope = precision.flip(0).cummax(0).values.flip(0)  # P(r) = max over r' >= r
        steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))  # recall gained at each rank
        per_class[label] = float((steps * envelope).sum())
    mean = sum(per_class.values()) / len(per_class) if per_class else 0.0
    return {"map": mean, "num_classes": len(per_class), "per_class": per_class}


# --------------------------------------------------------------------------------------------
# Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE", BMVC 2018, Sec. 4.1)
# --------------------------------------------------------------------------------------------


def replacement_curve(
    score: Callable[[Tensor, Tensor], Tensor],
    start: Tensor,
    end: Tensor,
    maps: Tensor,
    targets: Tensor,
    steps: Sequence[float],
) -> Tensor:
    """Scores as pixels go from ``start`` to ``end`` in decreasing relevance (RISE deletion/insertion).

    At fraction ``x`` the ``int(x * H * W)`` most relevant pixels hold ``end``'s values, the others
    ``start``'s. Deletion: ``start`` = the image, ``end`` = a blank (RISE: zeros after the model's
    normalisation, i.e. the mean colour); insertion: ``start`` = a blurred copy, ``end`` = the image.
    The area under the curve over ``x`` in [0, 1] is the score (deletion: lower is better;
    insertion: higher). Ties in relevance are broken stably (lower row-major index first).

    Args:
        score: ``score(images, targets) -> (n,)`` the class score of each image (RISE: its softmax
            probability); receives ``len(steps) * N`` images ordered step-major.
        start: ``(N, C, H, W)`` images at ``x = 0``.
        end: ``(N, C, H, W)`` images at ``x = 1``.
        maps: ``(N, H, W)`` pixel relevance.
        targets: ``(N,)`` the explained classes.
        steps: fractions in [0, 1], e.g. ``[i / 16 for i in range(17)]``.

    Returns:
        ``(N, len(steps))`` float64 scores on the CPU.
    """
    if start.shape != end.shape or start.dim() != 4:
        raise ValueError(f"start and end must both be (N, C, H, W), got {tuple(start.shape)} and {tuple(end.shape)}.")
    num_images, _, height, width = start.shape
    if maps.shape != (num_images, height, width):
        raise ValueError(f"maps must be (N, H, W) = {(num_images, height, width)}, got {tuple(maps.shape)}.")
    if any(not 0.0 <= float(x) <= 1.0 for x in steps):
        raise ValueError(f"steps must be fractions in [0, 1], got {list(steps)}.")
    _check_no_nan(maps)
    num_pixels = height * width
    device = start.device
    moved = torch.tensor([_pixels_removed(float(x), num_pixels) for x in steps], device=device)  # (S,)
    order = torch.argsort(maps.to(device).flatten(1), dim=1, descending=True, stable=True)  # (N, H*W)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(num_pixels, device=device).expand(num_images, -1))
    replaced = (rank[None] < moved[:, None, None]).view(len(moved), num_images, 1, height, width)  # (S, N, 1, H, W)
    mixed = torch.where(replaced, end[None], start[None]).flatten(0, 1)  # (S*N, C, H, W)
    with torch.no_grad():
        out = score(mixed, targets.to(device).repeat(len(moved)))  # (S*N,)
    return out.double().reshape(len(moved), num_images).T.cpu()  # (N, S)
