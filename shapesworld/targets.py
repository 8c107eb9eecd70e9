"""Training targets of ShapesWorld scenes: region classes (the auxiliary losses of shapes-vqa and
shapes-detr) and DETR's box targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import REGION_GRID
from .scenes import Scene

__all__ = ["region_labels", "scene_targets", "cxcywh_to_xyxy"]


def region_labels(masks: torch.Tensor, min_cover: float = 0.15, grid: int = REGION_GRID) -> torch.Tensor:
    """The class that covers most of each cell of a ``grid x grid`` grid (16 = background when objects
    cover less than ``min_cover`` of it): ``(B, G*G)`` row-major targets of the auxiliary region
    losses of shapes-vqa (its regions) and shapes-detr (its encoder tokens).

    Args:
        masks: ``(B, 16, H, W)`` class masks of a :class:`~shapesworld.scenes.ShapesBatch`.
    """
    cover = F.avg_pool2d(masks.float(), masks.shape[-1] // grid)  # (B, 16, G, G) share of each cell
    background = (cover.sum(1, keepdim=True) < min_cover).float() * 2  # beats any share <= 1
    return torch.cat([cover, background], dim=1).argmax(1).flatten(1)  # (B, G*G)


def scene_targets(scenes: list[Scene], flip: Tensor | None = None) -> list[dict[str, Tensor]]:
    """DETR's training targets: per scene ``{"class_labels": (G,), "boxes": (G, 4) cx, cy, w, h in [0, 1]}``.

    Args:
        scenes: the scenes.
        flip: ``(B,)`` bool, scenes whose image is flipped horizontally (their boxes are mirrored).
    """
    targets = []
    for b, scene in enumerate(scenes):
        height, width = scene.image.shape[:2]
        boxes = torch.tensor([obj.box for obj in scene.objects], dtype=torch.float32).reshape(-1, 4)  # (G, 4)
        boxes = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)  # x1, y1 exclusive
        if flip is not None and bool(flip[b]):
            boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)  # (G, 4)
        labels = torch.tensor([obj.label for obj in scene.objects], dtype=torch.long)  # (G,)
        targets.append({"class_labels": labels, "boxes": cxcywh})
    return targets


def cxcywh_to_xyxy(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """DETR boxes ``(..., 4)`` (cx, cy, w, h in [0, 1]) to pixels ``(x0, y0, x1, y1)`` for an image of ``(H, W)``."""
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)  # (..., 4)
    return xyxy * torch.tensor([size[1], size[0], size[1], size[0]], dtype=boxes.dtype, device=boxes.device)
