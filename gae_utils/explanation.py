"""The result of one explanation (what :func:`gae_utils.explain` returns): raw relevance, full
relevancy maps, target and token layout. Normalisation and upsampling are display steps
(:meth:`Explanation.heatmap`); saved as one safetensors file and one JSON file. Text explanations
keep the token id of each relevance column, and the token strings when given a tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .heatmaps import grid_heatmap
from .layout import TokenLayout

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .plotting import TokenHTML

__all__ = ["Explanation", "same", "token_strings"]

# the fields :meth:`Explanation.save` writes to safetensors (the layout: its weights); the others
# go to JSON
_TENSOR_FIELDS = ("relevance", "maps", "target", "scores", "layout", "token_ids", "token_mask")


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """One string per token id: ``tokenizer`` is a Hugging Face tokenizer
    (``convert_ids_to_tokens``), a sequence of strings (the token of id ``i`` at index ``i``) or a
    callable ``list[int] -> list[str]``."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        strings = tokenizer.convert_ids_to_tokens(ids)
    elif isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        strings = [tokenizer[i] for i in ids]
    elif callable(tokenizer):
        strings = tokenizer(ids)
    else:
        raise TypeError(
            f"tokenizer is a {type(tokenizer).__name__}; pass a Hugging Face tokenizer, a list of "
            "token strings indexed by id, or a callable ids -> strings"
        )
    if len(strings) != len(ids):
        raise ValueError(
            f"the tokenizer gave {len(strings)} strings for {len(ids)} token ids; pass one that "
            "maps each id to one token (convert_ids_to_tokens, not decode)"
        )
    return [str(s) for s in strings]


def same(a: Any, b: Any) -> bool:
    """``a == b`` with tensors compared by value (``torch.equal``: same shape, dtype, values),
    inside dicts, lists, tuples and dataclasses."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.dtype == b.dtype
            and torch.equal(a.detach().cpu(), b.detach().cpu())
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if is_dataclass(a) and not isinstance(a, type) and type(a) is type(b):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return bool(a == b)


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
        token_ids: ``{name: (B, N)}`` the token id of each column of ``relevance[name]`` (text
            explained from ``input_ids``: causal LMs, text encoders, generations), padding included.
        token_mask: ``{name: (B, N)}`` bool, True at the real (non-padding) columns.
        tokens: ``{name: [[str] * n_b for each example]}`` the strings of the real tokens (padding
            removed), when a tokenizer was given (``explain(..., tokenizer=tok)``,
            :meth:`with_tokens`).
        target_tokens: ``[[str] * K for each example]`` the strings of the explained tokens when
            the targets are token ids (next tokens, generated tokens) and a tokenizer was given.
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
    token_ids: dict[str, Tensor] = field(default_factory=dict)
    token_mask: dict[str, Tensor] = field(default_factory=dict)
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)
    target_tokens: list[list[str]] = field(default_factory=list)
    labels: dict[int, str] | None = field(default=None, repr=False)
    normalization: dict[str, list[float]] | None = None

    def __eq__(self, other: object) -> bool:
        """Every field equal, tensors by value (:func:`same`); never raises."""
        return same(self, other) if isinstance(other, Explanation) else NotImplemented

    def __repr__(self) -> str:
        """Shapes, not tensors: ``Explanation(method='gae', model='ViT', relevance={'image':
        (2, 16)}, ...)``."""
        shape = {k: tuple(v.shape) for k, v in self.relevance.items()}
        target = None if self.target is None else tuple(self.target.shape)
        return (
            f"Explanation(method={self.method!r}, model={self.model_name!r}, relevance={shape}, "
            f"target={target}, maps={len(self.maps)}, start_layer={self.start_layer})"
        )

    def _grid(self, name: str) -> tuple[int, ...]:
        grid = self.layout.segment(name).grid
        if grid is None:
            raise ValueError(
                f"modality {name!r} has no spatial grid, so no heatmap: its relevance is one value "
                f"per token. exp.plot(name={name!r}) draws a token strip when the explanation "
                "holds the token ids (text given as a dict with 'input_ids'; tokenizer= adds the "
                "strings); else pass the tokens to gae_utils.plotting.token_html(tokens, "
                f"exp.relevance[{name!r}][b])"
            )
        return grid

    def with_token_ids(
        self, ids: Tensor, mask: Tensor | None = None, tokenizer: Any = None, name: str = "text"
    ) -> Explanation:
        """A copy holding ``ids`` ``(B, N)`` as the tokens of the columns of ``relevance[name]``
        (``mask`` ``(B, N)``: 1 at real tokens, default all), and their strings when a
        ``tokenizer`` is given (see :meth:`with_tokens`)."""
        if ids.shape[-1] != self.relevance[name].shape[-1]:
            raise ValueError(
                f"{ids.shape[-1]} token ids for the {self.relevance[name].shape[-1]} columns of "
                f"relevance[{name!r}]; pass the input_ids the explanation was computed from"
            )
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()  # (B, N)
        exp = replace(
            self,
            token_ids={**self.token_ids, name: ids.detach().cpu()},
            token_mask={**self.token_mask, name: real.detach().cpu()},
        )
        return exp if tokenizer is None else exp.with_tokens(tokenizer)

    def with_tokens(self, tokenizer: Any) -> Explanation:
        """A copy whose ``tokens`` are the strings of ``token_ids`` with padding removed (and whose
        ``target_tokens`` are those of the explained token ids).

        Args:
            tokenizer: a Hugging Face tokenizer (``convert_ids_to_tokens``), a list of token
                strings indexed by id, or a callable ``list[int] -> list[str]``.
        """
        if not self.token_ids:
            raise ValueError(
                "this explanation holds no token ids: they are kept for text given as a dict with "
                "'input_ids'; pass the tokens to gae_utils.plotting.token_html yourself"
            )
        tokens = {
            name: [token_strings(tokenizer, row[real].tolist()) for row, real in zip(ids, mask)]
            for name, ids, mask in ((n, v, self.token_mask[n]) for n, v in self.token_ids.items())
        }
        named = []  # the explained tokens' strings, when the targets are token ids
        if self.target is not None and self.extra.get("target_is_token"):
            named = [token_strings(tokenizer, t.reshape(-1).tolist()) for t in self.target]
        return replace(self, tokens=tokens, target_tokens=named)

    def _relevance(self, name: str) -> Tensor:
        if name not in self.relevance:  # the layout may say why the model cannot give it
            why = self.layout.absent.get(name, f"pass one of {sorted(self.relevance)}")
            raise KeyError(f"this {self.model_name} explanation has no relevance {name!r}: {why}")
        return self.relevance[name]

    def grid_relevance(self, name: str = "image") -> Tensor:
        """Relevance reshaped to the patch grid: ``(B, h, w)`` or ``(B, K, h, w)`` (video:
        ``(B, [K,] T', h, w)``)."""
        rel = self._relevance(name)
        return rel.reshape(*rel.shape[:-1], *self._grid(name))  # (..., h, w)

    def heatmap(
        self, size: int | tuple[int, int] | None = None, name: str = "image", frames: int = 0
    ) -> Tensor:
        """Relevance of ``name`` upsampled (bilinear) to ``size`` (an int: square; None: the patch
        grid) and min-max normalised per map: ``(B, H, W)`` or ``(B, K, H, W)`` in [0, 1], on the
        CPU as float32. Video (``name="video"``): ``(B, [K,] T, H, W)``, each tubelet's map
        repeated over its ``frames / T'`` frames (``frames``: the clip's ``T``; 0: one map per
        tubelet), normalised per clip (:func:`~gae_utils.heatmaps.grid_heatmap`)."""
        rel = self._relevance(name).detach().float().cpu()  # (..., h*w) or (..., T'*h*w)
        return grid_heatmap(rel, self._grid(name), size, frames)  # (..., [T,] H, W)

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
        tokenizer: Any = None,
    ) -> Figure:
        """Heatmaps (over the images when given), one panel per example and target, titled with
        the class names, the method's label on top; save with ``fig.savefig("fig.pdf")``. Text
        (a modality without a grid, the default without an image) is drawn as token strips, one
        row per example and target, or for a generation as a steps x tokens matrix
        (:func:`~gae_utils.plotting.plot_token_strips`, :func:`~.plotting.plot_token_matrix`).

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
            tokenizer: token strings for text explanations that hold only ids (else ids label
                the tokens).

        Returns:
            The figure.
        """
        from .methods import method_label
        from .plotting import (
            HEATMAP_CMAP,
            display_images,
            heatmap_panels,
            plot_token_matrix,
            plot_token_strips,
        )

        cmap = cmap or HEATMAP_CMAP
        if name in self.layout.absent:
            self._relevance(name)  # raises: says why the model has none
        if name not in self.relevance:  # a text explanation: its tokens
            name = next(iter(self.token_ids or self.relevance))
        if self.layout.segment(name).grid is None:
            if name not in self.token_ids:
                self._grid(name)  # raises: says how to draw the tokens
            exp = self if tokenizer is None else self.with_tokens(tokenizer)
            examples, tokens, values, rows, last = exp._token_rows(name, index)
            title = f"{method_label(self.method)} relevance over the {name} tokens"
            if "steps" in self.extra:  # a generation: steps x tokens
                return plot_token_matrix(tokens, values, rows, last, examples, title, cmap)
            return plot_token_strips(tokens, values, rows, examples, title, cmap)

        if len(self._grid(name)) == 3:
            raise ValueError(
                f"relevance {name!r} is over a clip's (T', h, w) tubelets; draw frame t of example "
                f"b with exp.heatmap(size, name={name!r}, frames=T)[b, ..., t] over clips[b, t]"
            )
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
            default = f"#{b} {default}" if heat.shape[1] > 1 and t is not None else default
            text.append(
                titles(b, t) if callable(titles) else default if titles is None else titles[i]
            )
        return heatmap_panels(
            heat[[b for b, _ in panels], [k for _, k in panels]],  # (P, H, W)
            None if shown is None else shown[[b for b, _ in panels]],  # (P, C, H, W)
            text,
            ncols=ncols if ncols is not None else (heat.shape[1] if heat.shape[1] > 1 else None),
            ax=ax,
            cmap=cmap,
            alpha=alpha,
            title=f"{method_label(self.method)} relevance",
            colorbar=colorbar,
        )

    show = plot
    """Alias of :meth:`plot` (the ``.show()`` name of other attribution libraries' results)."""

    def _token_rows(
        self, name: str, index: int | None = None
    ) -> tuple[list[int], list[list[str]], list[Tensor], list[list[str]], list[list[int]]]:
        """Per example (padding removed): its index, its ``n`` tokens, its relevance ``(K, n)``,
        its K targets' labels and the last token each target sees (a generation's step ``t``,
        read at position ``P - 1 + t``, sees the prompt and the tokens before token ``t``; steps
        after an EOS are dropped)."""
        rel = self.relevance[name] if self.multi_target else self.relevance[name][:, None]
        generation, K = "steps" in self.extra, rel.shape[1]  # (B, K, N): K targets or steps
        steps = self.extra.get("steps", list(range(K)))
        targets = None if self.target is None else self.target.reshape(rel.shape[0], -1)  # (B, K)
        examples = [index] if index is not None else list(range(rel.shape[0]))
        tokens, values, labels, last = [], [], [], []
        for b in examples:
            real = self.token_mask[name][b]  # (N,) bool
            ids = self.token_ids[name][b][real].tolist()
            tokens.append(self.tokens[name][b] if name in self.tokens else [str(i) for i in ids])
            n_steps = self.extra["real_steps"][b] if generation else len(steps)
            keep = [k for k, s in enumerate(steps) if s < n_steps]
            values.append(rel[b, keep][:, real.to(rel.device)].detach().float().cpu())  # (K, n)
            kind = "token" if self.extra.get("target_is_token") else "class"
            named = [f"{kind} {int(t)}" for t in targets[b]] if targets is not None else [""] * K
            named = [repr(t) for t in self.target_tokens[b]] if self.target_tokens else named
            labels.append([named[k] for k in keep])
            seen = [
                max(self.extra.get("prompt_length", 0) - 1, 0) + steps[k]
                if generation and name != "source"
                else real.numel() - 1
                for k in keep
            ]  # position of the last token each target sees
            last.append([int(real[: p + 1].sum()) - 1 for p in seen])  # among the real tokens
        return examples, tokens, values, labels, last

    def token_html(self, index: int = 0, k: int = 0, name: str = "text") -> TokenHTML:
        """Example ``index``'s tokens (padding removed) shaded by their relevance for target ``k``
        (a generation: the k-th explained step, over the tokens it sees), as notebook HTML."""
        from .plotting import token_html

        _, tokens, values, _, last = self._token_rows(name, index)
        return token_html(tokens[0][: last[0][k] + 1], values[0][k, : last[0][k] + 1])

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (metadata)."""
        from safetensors.torch import save_file

        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = {
            "relevance": self.relevance,
            "maps": {f"{a}|{b}": v for (a, b), v in self.maps.items()},
            "layout_weights": self.layout.weights,
            "layout_positions": self.layout.positions,
            "layout_token_maps": self.layout.token_maps,
            "token_ids": self.token_ids,
            "token_mask": self.token_mask,
        }
        # cloned: readouts may share one weight tensor (DETR, VisualBERT), which safetensors refuses
        tensors = {
            f"{group}/{k}": v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for group, named in groups.items()
            for k, v in named.items()
        }
        tensors["scores"] = self.scores.detach().cpu().contiguous()
        if self.target is not None:
            tensors["target"] = self.target.detach().cpu().contiguous()
        save_file(tensors, str(path) + ".safetensors")
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSOR_FIELDS}
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
            for group in ("relevance", "maps", "layout_weights", "layout_positions", "token_ids")
            + ("token_mask", "layout_token_maps")
        }
        return cls(
            relevance=groups["relevance"],
            maps={
                cast("tuple[str, str]", tuple(k.split("|"))): v for k, v in groups["maps"].items()
            },
            target=tensors.get("target"),
            scores=tensors["scores"],
            layout=TokenLayout.from_dict(
                meta.pop("layout"),
                *(groups[f"layout_{k}"] for k in ("weights", "positions", "token_maps")),
            ),
            token_ids=groups["token_ids"],
            token_mask=groups["token_mask"],
            **meta,  # the fields not in _TENSOR_FIELDS
        )
