"""The result of one explanation (what :func:`gae_utils.explain` returns): raw relevance, full
relevancy maps, target and token layout. Normalisation and upsampling are display steps
(:meth:`Explanation.heatmap`); saved as one safetensors file and one JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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
        labels: ``{class index: name}`` from the model (``id2label``; timm's ImageNet names), or
            None; :meth:`plot`'s titles.
        normalization: ``{"mean": [...], "std": [...]}`` of the model's inputs (timm's
            ``pretrained_cfg``), or None; :meth:`plot` undoes it to draw the images.
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
    labels: dict[int, str] | None = field(default=None, repr=False)
    normalization: dict[str, list[float]] | None = None

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
        *,
        ncols: int | None = None,
        ax: Any = None,
        cmap: str | None = None,
        alpha: float = 0.6,
        titles: Sequence[str] | Callable[[int, int | None], str] | None = None,
        labels: Sequence[str] | Mapping[int, str] | None = None,
        normalization: Any = None,
        colorbar: bool = True,
    ) -> Figure:
        """Heatmaps (over the images when given), one panel per example and target, titled with
        the class names, the method's label on top; save with ``fig.savefig("fig.pdf")``.

        Args:
            images: ``(B, C, H, W)`` the inputs under the heatmaps: raw (uint8, 0..255 or
                [0, 1]) or normalised (undone with ``normalization``; see
                :func:`~gae_utils.plotting.display_images`).
            index: plot only this example.
            size: heatmap size (default: the images' size, else the patch grid).
            name: which relevance to plot.
            ncols: panels per row (default: a wide grid; one row per example for K targets).
            ax: an axes or array of axes to draw into instead of a new figure.
            cmap: the heatmaps' colour map (default ``inferno``, greyscale-safe).
            alpha: the heatmaps' opacity over the image.
            titles: one title per panel, or ``titles(example, target_class) -> str``.
            labels: class names (a list or ``{index: name}``); default :attr:`labels`.
            normalization: ``(mean, std)``, ``{"mean", "std"}`` or an image processor with
                ``image_mean``/``image_std``; default :attr:`normalization`.
            colorbar: draw the shared colour bar.

        Returns:
            The figure.
        """
        from .methods import method_label
        from .plotting import HEATMAP_CMAP, display_images, heatmap_panels

        norm = normalization if normalization is not None else self.normalization
        shown = None if images is None else display_images(images, norm)  # (B, C, H, W)
        if size is None and shown is not None:
            size = (shown.shape[-2], shown.shape[-1])
        heat = self.heatmap(size, name=name)  # (B, H, W) or (B, K, H, W)
        heat = heat[:, None] if heat.ndim == 3 else heat  # (B, K, H, W)
        target = None if self.target is None else self.target.reshape(heat.shape[0], -1)  # (B, K)
        names = labels if labels is not None else (self.labels or {})
        names = names if isinstance(names, Mapping) else dict(enumerate(names))  # {class: name}
        panels = [(b, k) for b in ([index] if index is not None else range(heat.shape[0]))
                  for k in range(heat.shape[1])]  # fmt: skip
        text = []
        for i, (b, k) in enumerate(panels):
            t = None if target is None else int(target[b, k])
            default = f"#{b}" if t is None else str(names.get(t, f"class {t}"))
            text.append(
                titles(b, t) if callable(titles) else default if titles is None else titles[i]
            )
        return heatmap_panels(
            heat[[b for b, _ in panels], [k for _, k in panels]],  # (P, H, W)
            None if shown is None else shown[[b for b, _ in panels]],  # (P, C, H, W)
            text,
            ncols=ncols if ncols is not None else (heat.shape[1] if heat.shape[1] > 1 else None),
            ax=ax,
            cmap=cmap or HEATMAP_CMAP,
            alpha=alpha,
            title=f"{method_label(self.method)} relevance",
            colorbar=colorbar,
        )

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
            + ("labels", "normalization")
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
        if meta.get("labels"):  # JSON keys are strings
            meta["labels"] = {int(k): v for k, v in meta["labels"].items()}
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
            **meta,  # method, start_layer, model_name, multi_target, extra, labels, normalization
        )
