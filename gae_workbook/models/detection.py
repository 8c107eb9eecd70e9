"""DETR on ShapesWorld: box targets, confident detections, held-out mAP and per-object maps.

DETR (Carion et al., ECCV 2020) predicts a fixed set of object queries, each a class distribution
(the last class is "no object") and a box. Chefer et al. (ICCV 2021, Sec. 4 and 5) explain one
detected object through the class logit of its query: the explanation is row ``k`` of
``R[query, image]`` reshaped to the backbone's feature grid. This module holds the DETR-specific
pieces around that: ground-truth boxes of ShapesWorld scenes in DETR's format, the confident
detections of a batch (probability > 0.5, "no object" excluded), the held-out mAP@0.5 of a
detector, and each detected object's upsampled relevance map.

Boxes are ``(x0, y0, x1, y1)`` in pixels unless said otherwise; DETR's own boxes are
``(cx, cy, w, h)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gae_utils.adapters.hf_detr import detr_class_probabilities
from gae_utils.capture import evaluating
from gae_utils.heatmaps import grid_heatmap
from shapesworld.inputs import detr_pixels
from shapesworld.scenes import Scene, ShapesWorld
from shapesworld.targets import cxcywh_to_xyxy

from ..evaluation.metrics import box_iou, detection_map, otsu_threshold

__all__ = [
    "Detections",
    "detections",
    "detect",
    "evaluate_detection",
    "object_heatmaps",
    "match_to_objects",
    "box_matched_queries",
    "otsu_foreground",
    "CONFIDENCE",
]

CONFIDENCE = 0.5
"""A query is a detection when its most probable real class has probability above this (the paper's 0.5)."""


@dataclass
class Detections:
    """The confident detections of one image.

    Attributes:
        queries: ``(D,)`` indices of the detecting object queries.
        labels: ``(D,)`` predicted classes (no-object excluded).
        scores: ``(D,)`` their probabilities.
        boxes: ``(D, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels.
    """

    queries: Tensor
    labels: Tensor
    scores: Tensor
    boxes: Tensor

    def __len__(self) -> int:
        return int(self.queries.numel())


def detections(logits: Tensor, pred_boxes: Tensor, size: tuple[int, int], threshold: float = CONFIDENCE) -> list:
    """The confident detections of every image of a batch (any number per image, possibly none).

    Args:
        logits: ``(B, Q, C + 1)`` class logits, the last class being "no object".
        pred_boxes: ``(B, Q, 4)`` boxes (cx, cy, w, h in [0, 1]).
        size: image ``(H, W)`` in pixels.
        threshold: a query is kept when its best real-class probability exceeds it.

    Returns:
        One :class:`Detections` per image.
    """
    if logits.ndim != 3 or pred_boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, Q, C+1) and boxes (B, Q, 4), got {tuple(logits.shape)}, {tuple(pred_boxes.shape)}"
        )
    scores, labels = detr_class_probabilities(logits.detach()).max(-1)  # (B, Q) each
    boxes = cxcywh_to_xyxy(pred_boxes.detach(), size)  # (B, Q, 4)
    out = []
    for b in range(logits.shape[0]):
        keep = (scores[b] > threshold).nonzero().flatten()  # (D,)
        out.append(Detections(keep, labels[b, keep], scores[b, keep], boxes[b, keep]))
    return out


@torch.no_grad()
def detect(model: nn.Module, pixel_values: Tensor, threshold: float = CONFIDENCE) -> list[Detections]:
    """Run a ``DetrForObjectDetection`` (in eval mode, restored after) and return its confident detections."""
    with evaluating(model):
        out = model(pixel_values=pixel_values)
    return detections(out.logits, out.pred_boxes, tuple(pixel_values.shape[-2:]), threshold)


@torch.no_grad()
def evaluate_detection(
    model: nn.Module, world: ShapesWorld, n: int = 1000, batch_size: int = 250, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Held-out mAP@``iou_threshold`` of a ShapesWorld DETR over scenes ``0..n-1`` of ``world``.

    Every query is a scored detection (its best real class and that class's probability), as
    DETR is evaluated on COCO; also reports precision/recall of the confident detections (> 0.5).

    Returns:
        ``{"map50": ..., "confident_precision": ..., "confident_recall": ..., "n": n}``.
    """
    device = next(model.parameters()).device
    predictions, truth = [], []
    hits = kept = objects = 0
    with evaluating(model):
        for start in range(0, n, batch_size):
            batch = world.batch(min(batch_size, n - start), start=start)
            out = model(pixel_values=detr_pixels(batch.images).to(device))
            size = tuple(batch.images.shape[-2:])
            scores, labels = detr_class_probabilities(out.logits).max(-1)  # (B, Q)
            boxes = cxcywh_to_xyxy(out.pred_boxes, size)  # (B, Q, 4)
            for b, scene in enumerate(batch.scenes):
                g_boxes = torch.tensor([o.box for o in scene.objects], dtype=torch.float32).reshape(-1, 4)
                g_labels = torch.tensor([o.label for o in scene.objects], dtype=torch.long)
                predictions.append((boxes[b].cpu(), scores[b].cpu(), labels[b].cpu()))
                truth.append((g_boxes, g_labels))
                confident = scores[b].cpu() > CONFIDENCE
                kept += int(confident.sum())
                objects += len(scene.objects)
                hits += _confident_hits(
                    boxes[b].cpu()[confident], labels[b].cpu()[confident], g_boxes, g_labels, iou_threshold
                )
    result = detection_map(predictions, truth, iou_threshold)
    return {
        "map50" if iou_threshold == 0.5 else f"map{int(iou_threshold * 100)}": round(result["map"], 4),
        "confident_precision": round(hits / max(1, kept), 4),
        "confident_recall": round(hits / max(1, objects), 4),
        "n": n,
    }


def _confident_hits(boxes: Tensor, labels: Tensor, g_boxes: Tensor, g_labels: Tensor, iou_threshold: float) -> int:
    """Ground-truth objects found by a confident detection of their class with IoU >= threshold."""
    if len(boxes) == 0 or len(g_boxes) == 0:
        return 0
    iou = box_iou(boxes, g_boxes)  # (D, G)
    same = labels[:, None] == g_labels[None, :]  # (D, G)
    return int(((iou >= iou_threshold) & same).any(dim=0).sum())


def object_heatmaps(relevance: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Per-object maps for display and segmentation: reshape to the feature grid, upsample, min-max normalise.

    Args:
        relevance: ``(..., h * w)`` raw relevance of explained queries over the image tokens.
        grid: ``(h, w)`` backbone feature grid.
        size: ``(H, W)`` image size.

    Returns:
        ``(..., H, W)`` maps in [0, 1] (a constant map gives zeros).
    """
    return grid_heatmap(relevance.detach().float(), grid, size)  # (..., H, W)


def match_to_objects(found: Detections, scene: Scene, iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """Pair detections with the ground-truth objects they found.

    A detection finds the object of its predicted class with the highest box IoU, if that IoU is at
    least ``iou_threshold`` (ShapesWorld has at most one object per class, so there is one candidate).

    Returns:
        ``[(detection index, object index)]`` for the detections that found an object, in order.
    """
    g_boxes = torch.tensor([o.box for o in scene.objects], dtype=torch.float32).reshape(-1, 4)  # (G, 4)
    iou = box_iou(found.boxes.cpu().float(), g_boxes)  # (D, G)
    pairs = []
    for d in range(len(found)):
        same = torch.tensor([o.label == int(found.labels[d]) for o in scene.objects])  # (G,)
        best = torch.where(same, iou[d], torch.full_like(iou[d], -1.0)).max(0)
        if float(best.values) >= iou_threshold:
            pairs.append((d, int(best.indices)))
    return pairs


def otsu_foreground(maps: Tensor) -> Tensor:
    """``(..., H, W)`` maps -> bool foreground ``map > otsu_threshold(map)`` (the DETR segmentation protocol)."""
    return maps > otsu_threshold(maps)[..., None, None]


def box_matched_queries(
    pred_boxes: Tensor, scenes: list[Scene], iou_threshold: float = 0.5
) -> list[list[tuple[int, int]]]:
    """For every ground-truth object, the object query whose box overlaps it most (IoU >= threshold).

    This picks the query that found each object regardless of its class probability (the
    evaluation's ``--queries matched``, and a way to pair queries with ground-truth masks); explained,
    its score is still that query's predicted-class logit.

    Args:
        pred_boxes: ``(B, Q, 4)`` DETR boxes (cx, cy, w, h in [0, 1]).
        scenes: the B scenes.

    Returns:
        Per image, ``[(query, object index)]``; each query is used at most once (greedy by IoU).
    """
    out = []
    for b, scene in enumerate(scenes):
        size = scene.image.shape[:2]
        boxes = cxcywh_to_xyxy(pred_boxes[b].detach().cpu().float(), size)  # (Q, 4)
        g_boxes = torch.tensor([o.box for o in scene.objects], dtype=torch.float32).reshape(-1, 4)  # (G, 4)
        iou = box_iou(boxes, g_boxes)  # (Q, G)
        pairs, used = [], set()
        for flat in iou.flatten().argsort(descending=True).tolist():
            q, g = divmod(flat, iou.shape[1])
            if iou[q, g] < iou_threshold:
                break
            if q in used or g in {o for _, o in pairs}:
                continue
            used.add(q)
            pairs.append((q, g))
        out.append(sorted(pairs, key=lambda p: p[1]))
    return out
