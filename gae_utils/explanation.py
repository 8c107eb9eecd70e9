"""The result of one explanation (what :func:`gae_utils.explain` returns): raw relevance, full
relevancy maps, target and token layout. Normalisation and upsampling are display steps
(:meth:`Explanation.heatmap`); saved as one safetensors file and one JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import Tensor

from .heatmaps import grid_heatmap
from .layout import TokenLayout

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

    def _grid(self, name: str) -> tuple[int, int]:
        grid = self.layout.segment(name).grid
        if grid is None:
            raise ValueError(f"modality {name!r} has no spatial grid")
        return grid

    def grid_relevance(self, name: str = "image") -> Tensor:
        """Relevance reshaped to the patch grid: ``(B, h, w)`` or ``(B, K, h, w)``."""
        rel = self.relevance[name]
        return rel.reshape(*rel.shape[:-1], *self._grid(name))  # (..., h, w)

    def heatmap(self, size: int | tuple[int, int] | None = None, name: str = "image") -> Tensor:
        """Relevance of ``name`` upsampled (bilinear) to ``size`` (an int: square; None: the patch
        grid) and min-max normalised per map: ``(B, H, W)`` or ``(B, K, H, W)`` in [0, 1], on the
        CPU as float32."""
        rel = self.relevance[name].detach().float().cpu()  # (..., h*w)
        return grid_heatmap(rel, self._grid(name), size)  # (..., H, W)

    def plot(
        self,
        images: Tensor | None = None,
        index: int | None = None,
        size: int | tuple[int, int] | None = None,
        name: str = "image",
    ) -> Figure:
        """Heatmaps (over the images when given) in one figure: one panel per example (and per
        target).

        Args:
            images: ``(B, 3, H, W)`` inputs to draw under the heatmaps.
            index: plot only this example.
            size: heatmap size (default: the images' size, else the patch grid).
            name: which relevance to plot.
        """
        import matplotlib.pyplot as plt

        from .plotting import PANEL, overlay

        if size is None and images is not None:
            size = (images.shape[-2], images.shape[-1])
        heat = self.heatmap(size, name=name)  # (B, H, W) or (B, K, H, W)
        heat = heat[:, None] if heat.ndim == 3 else heat  # (B, K, H, W)
        target = (
            self.target[:, None]
            if self.target is not None and self.target.ndim == 1
            else self.target
        )  # (B, K)
        examples = [index] if index is not None else list(range(heat.shape[0]))
        k = heat.shape[1]
        fig, axes = plt.subplots(
            len(examples),
            k,
            figsize=(PANEL * k, PANEL * len(examples)),
            squeeze=False,
            layout="constrained",
        )
        for r, b in enumerate(examples):
            for j in range(k):
                title = f"#{b}" + (f" class {int(target[b, j])}" if target is not None else "")
                artist = overlay(
                    axes[r, j], images[b] if images is not None else None, heat[b, j], title
                )
        fig.colorbar(artist, ax=axes, shrink=0.8, label="relevance (min-max per map)")
        fig.suptitle(f"{self.method} relevance")
        return fig

    show = plot
    """Alias of :meth:`plot` (the ``.show()`` name of other attribution libraries' results)."""

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (metadata)."""
        from safetensors.torch import save_file

        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"relevance/{k}": v.detach().cpu().contiguous() for k, v in self.relevance.items()
        }
        tensors.update(
            {f"maps/{a}|{b}": v.detach().cpu().contiguous() for (a, b), v in self.maps.items()}
        )
        # readouts may share one weight tensor (DETR, VisualBERT); safetensors stores each name
        # separately
        tensors.update(
            {
                f"layout_weights/{k}": v.detach().cpu().clone()
                for k, v in self.layout.weights.items()
            }
        )
        tensors["scores"] = self.scores.detach().cpu().contiguous()
        if self.target is not None:
            tensors["target"] = self.target.detach().cpu().contiguous()
        save_file(tensors, str(path) + ".safetensors")
        meta = {
            key: getattr(self, key)
            for key in ("method", "start_layer", "model_name", "multi_target", "extra")
        }
        meta["layout"] = self.layout.to_dict()
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        """Read an explanation written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path).with_suffix("")
        tensors = load_file(str(path) + ".safetensors")
        meta = json.loads(Path(str(path) + ".json").read_text())
        groups = {
            group: {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{group}/")}
            for group in ("relevance", "maps", "layout_weights")
        }
        return cls(
            relevance=groups["relevance"],
            maps={
                cast("tuple[str, str]", tuple(k.split("|"))): v for k, v in groups["maps"].items()
            },
            target=tensors.get("target"),
            scores=tensors["scores"],
            layout=TokenLayout.from_dict(meta.pop("layout"), groups["layout_weights"]),
            **meta,  # method, start_layer, model_name, multi_target, extra
        )
