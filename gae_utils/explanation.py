"""The result of one explanation: relevance, full relevancy maps, target and token layout.

:class:`Explanation` is what :func:`gae_utils.explain` returns. ``relevance[name]`` is the raw,
unnormalised relevance of the explained row over the content tokens of a modality (for a ViT:
the CLS row of ``R[image, image]`` over the patches, ``(B, num_patches)``), ``maps[(a, b)]`` the
full relevancy matrices. Normalisation and upsampling are display steps (:meth:`heatmap`).
Saved as one safetensors file (tensors) and one JSON file (metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from safetensors.torch import load_file, save_file
from torch import Tensor

from .layout import TokenLayout
from .maps import grid_heatmap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Relevancy of one batch of inputs for one or several targets per example.

    Attributes:
        relevance: ``{name: (B, N)}`` raw relevance of the explained row over content tokens, or
            ``(B, K, N)`` when K targets per example were asked for.
        maps: ``{(a, b): (B, Na, Nb)}`` (or ``(B, K, Na, Nb)``) full relevancy matrices.
        target: ``(B,)`` or ``(B, K)`` the explained class indices; ``None`` for a callable target.
        scores: ``(B,)`` or ``(B, K)`` the value of each explained scalar (logit or custom score).
        method: the method name (``"gae"``, ``"rollout"``, ...).
        layout: the token layout the maps were read with.
        start_layer: first aggregated layer.
        model_name: class name of the explained model.
        multi_target: True when ``target`` had a K dimension.
    """

    relevance: dict[str, Tensor]
    maps: dict[tuple[str, str], Tensor]
    target: Tensor | None
    scores: Tensor
    method: str
    layout: TokenLayout
    start_layer: int = 0
    model_name: str = ""
    multi_target: bool = False
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ display helpers
    def grid_relevance(self, name: str = "image") -> Tensor:
        """Relevance reshaped to the patch grid: ``(B, h, w)`` or ``(B, K, h, w)``."""
        grid = self.layout.segment(name).grid
        if grid is None:
            raise ValueError(f"modality {name!r} has no spatial grid")
        rel = self.relevance[name]
        return rel.reshape(*rel.shape[:-1], *grid)  # (..., h, w)

    def heatmap(self, size: int | tuple[int, int] | None = None, name: str = "image") -> Tensor:
        """Relevance upsampled (bilinear) to ``size`` and min-max normalised per map.

        Args:
            size: output ``(H, W)``; an int means square; ``None`` keeps the patch grid.
            name: which relevance to show.

        Returns:
            ``(B, H, W)`` (or ``(B, K, H, W)``) maps in [0, 1], on the CPU as float32.
        """
        rel = self.relevance[name].detach().float().cpu()  # (..., h*w)
        grid = self.layout.segment(name).grid
        if grid is None:
            raise ValueError(f"modality {name!r} has no spatial grid")
        return grid_heatmap(rel, grid, size)  # (..., H, W)

    def plot(self, images: Tensor | None = None, index: int | None = None, **kwargs: Any) -> Figure:
        """Heatmaps (over the images when given) in one figure; see :func:`gae_utils.plotting.plot_explanation`."""
        from .plotting import plot_explanation

        return plot_explanation(self, images=images, index=index, **kwargs)

    show = plot

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (metadata)."""
        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"relevance/{k}": v.detach().cpu().contiguous() for k, v in self.relevance.items()}
        tensors.update({f"maps/{a}|{b}": v.detach().cpu().contiguous() for (a, b), v in self.maps.items()})
        # readouts may share one weight tensor (DETR, VisualBERT); safetensors stores each name separately
        tensors.update({f"layout_weights/{k}": v.detach().cpu().clone() for k, v in self.layout.weights.items()})
        tensors["scores"] = self.scores.detach().cpu().contiguous()
        if self.target is not None:
            tensors["target"] = self.target.detach().cpu().contiguous()
        save_file(tensors, str(path) + ".safetensors")
        meta = {
            "method": self.method,
            "layout": self.layout.to_dict(),
            "start_layer": self.start_layer,
            "model_name": self.model_name,
            "multi_target": self.multi_target,
            "extra": self.extra,
        }
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        """Read an explanation written by :meth:`save`."""
        path = Path(path).with_suffix("")
        tensors = load_file(str(path) + ".safetensors")
        meta = json.loads(Path(str(path) + ".json").read_text())
        relevance = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("relevance/")}
        maps = {
            cast("tuple[str, str]", tuple(k.split("/", 1)[1].split("|"))): v
            for k, v in tensors.items()
            if k.startswith("maps/")
        }
        return cls(
            relevance=relevance,
            maps=maps,
            target=tensors.get("target"),
            scores=tensors["scores"],
            method=meta["method"],
            layout=TokenLayout.from_dict(
                meta["layout"], {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("layout_weights/")}
            ),
            start_layer=meta["start_layer"],
            model_name=meta["model_name"],
            multi_target=meta["multi_target"],
            extra=meta.get("extra", {}),
        )
