"""Dual encoders (CLIP-style): each tower explained on its own (Eq. 5-6) at the token it pools, the
target being a pair's similarity (:class:`~gae_utils.targets.PairSimilarity`, one forward pass).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .explainer import Recording, record
from .explanation import Explanation, same
from .propagation import check_start_layer
from .targets import PairSimilarity

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DualExplanation", "explain_dual"]


@dataclass
class DualExplanation:
    """Every (image, text) pair of a batch, explained on both towers.

    With ``pairs="diagonal"`` the pair dimension is absent: ``(B, N)`` relevance, ``(B,)`` logits.

    The text row is the pooled (EOT) token's row of ``R``, identity included, as the authors
    compute it: the identity adds 1 to the EOT entry only (its own column), which their display
    leaves out with the start token (tokens ``1 .. EOT - 1``); :meth:`plot` shows the tokens up to
    the EOT. Causal LMs read ``R - I`` instead, since their explained position is a prompt token
    shown among the others (docs/models.md, "Dual encoders").

    Attributes:
        logits: ``(B_i, B_t)`` the model's similarity logits.
        image: ``relevance["image"]`` is ``(B_i, B_t, N_patches)``: image ``i``'s patches for text
            ``j``.
        text: ``relevance["text"]`` is ``(B_t, B_i, L)``: text ``j``'s tokens for image ``i``.
    """

    logits: Tensor
    image: Explanation
    text: Explanation

    def __eq__(self, other: object) -> bool:
        return same(self, other) if isinstance(other, DualExplanation) else NotImplemented

    def __repr__(self) -> str:
        return f"DualExplanation(logits={tuple(self.logits.shape)}, image={self.image}, text=...)"

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (the logits) and ``<path>.json``, and each tower as
        :meth:`Explanation.save` does, to ``<path>-image.*`` and ``<path>-text.*``."""
        from safetensors.torch import save_file

        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"logits": self.logits.detach().cpu().contiguous()}, f"{path}.safetensors")
        towers = {name: f"{path.name}-{name}" for name in ("image", "text")}
        Path(f"{path}.json").write_text(json.dumps({"towers": towers}, indent=2))
        self.image.save(path.parent / towers["image"])
        self.text.save(path.parent / towers["text"])

    @classmethod
    def load(cls, path: str | Path) -> DualExplanation:
        """Read a dual explanation written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path).with_suffix("")
        towers = json.loads(Path(f"{path}.json").read_text())["towers"]
        return cls(
            logits=load_file(f"{path}.safetensors")["logits"],
            image=Explanation.load(path.parent / towers["image"]),
            text=Explanation.load(path.parent / towers["text"]),
        )

    def plot(
        self,
        images: Tensor | None = None,
        tokens: Sequence[Sequence[str]] | None = None,
        pairs: Sequence[tuple[int, int]] | None = None,
    ) -> Figure:
        """One row per (image ``i``, text ``j``) pair: image ``i``'s heatmap for text ``j``
        (min-max per map, over the image when given) and text ``j``'s raw token relevance for image
        ``i``, up to its EOT token, each with a colour bar.

        Args:
            images: ``(B_i, C, H, W)`` the images (each min-max rescaled for display, so normalised
                pixel values show too).
            tokens: each text's token strings (``tokenizer.convert_ids_to_tokens(ids)``); default:
                positions.
            pairs: the ``(i, j)`` pairs to draw; default: ``(i, i)`` for every image when there
                are as many texts, else every pair.
        """
        import matplotlib.pyplot as plt

        from .plotting import HEATMAP_CMAP, PANEL, overlay

        all_pairs = self.logits.ndim == 2  # else pairs="diagonal": (B,) logits, no pair dimension
        n_images = self.image.relevance["image"].shape[0]
        n_texts = self.text.relevance["text"].shape[0]
        if pairs is None:  # the diagonal when square, else every pair
            square = not all_pairs or n_images == n_texts
            pairs = [
                (i, j) for i in range(n_images) for j in range(n_texts) if i == j or not square
            ]
        size = None if images is None else (images.shape[-2], images.shape[-1])
        heat = self.image.heatmap(size)  # (B_i, B_t, H, W), or (B, H, W) for diagonal pairs
        text = self.text.relevance["text"].detach().float().cpu()  # (B_t, B_i, L) or (B, L)
        eot = self.text.layout.weights.get("text")  # (B_t, L) one-hot at each text's EOT
        fig, axes = plt.subplots(
            len(pairs),
            2,
            figsize=(PANEL * 3.5, PANEL * len(pairs)),
            squeeze=False,
            width_ratios=(1, 2.5),
            layout="constrained",
        )
        for r, (i, j) in enumerate(pairs):
            image = None
            if images is not None:
                image = images[i].detach().float().cpu()
                image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
            logit = self.logits[i, j] if all_pairs else self.logits[i]
            title = f"image {i}, text {j}\nlogit {float(logit):.2f}"
            artist = overlay(axes[r, 0], image, heat[i, j] if all_pairs else heat[i], title)
            fig.colorbar(artist, ax=axes[r, 0], shrink=0.8, label="min-max per map")
            n = int(eot[j].argmax()) + 1 if eot is not None else text.shape[-1]
            row = (text[j, i] if all_pairs else text[j])[:n]  # (n,) up to the EOT token
            strip = axes[r, 1].imshow(row[None].numpy(), cmap=HEATMAP_CMAP, vmin=0, aspect="auto")
            labels = list(tokens[j])[:n] if tokens is not None else [str(t) for t in range(n)]
            axes[r, 1].set_xticks(range(len(labels)), labels, rotation=90)
            axes[r, 1].set_yticks([])
            axes[r, 1].set_title(f"text {j} for image {i}")
            fig.colorbar(strip, ax=axes[r, 1], shrink=0.8, label="relevance (raw)")
        fig.suptitle(f"{self.image.method}: image and text towers")
        return fig


def _tower(
    rec: Recording, modality: str, scores: Tensor, method: str, start_layer: int
) -> Explanation:
    """One tower's explanation from its own layers (their target columns are the other tower's
    examples)."""
    own = [layer for layer in rec.layers if layer.query == modality]
    check_start_layer(start_layer, len(own), f"the {modality} tower")
    tower = replace(rec, layers=own, layout=rec.layout.only(modality), scores=scores)
    return tower.explanation(method, start_layer)


def explain_dual(
    model: nn.Module,
    images: Tensor,
    texts: Mapping,
    method: str = "gae",
    image_start_layer: int = 0,
    text_start_layer: int = 0,
    pairs: str = "all",
    adapter: Adapter | None = None,
    eval_mode: bool = True,
) -> DualExplanation:
    """Explain the similarity of every (image, text) pair of a batch with a dual encoder.

    Args:
        model: a dual encoder (Hugging Face ``CLIPModel``).
        images: ``(B_i, 3, H, W)`` pixel values as the model expects them.
        texts: tokenizer output (``input_ids``, ``attention_mask``) of ``B_t`` texts.
        method: ``gae`` or a baseline of :data:`gae_utils.methods.METHODS`.
        image_start_layer: first aggregated image-tower layer (the authors use it for CLIP
            ViT-B/16).
        text_start_layer: first aggregated text-tower layer.
        pairs: ``"all"`` (every image with every text) or ``"diagonal"`` (image ``i`` with text
            ``i`` only, ``B_i == B_t``: one backward pass, relevance without a pair dimension).
        adapter: overrides the adapter lookup.
        eval_mode: explain in eval mode (restored afterwards).
    """
    if not isinstance(texts, Mapping):
        strings = isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts)
        raise TypeError(
            "texts must be the tokenizer's output (a dict with 'input_ids'), got "
            f"{f'a list of {len(texts)} strings' if strings else type(texts).__name__}: tokenize "
            "them first, Hugging Face CLIP with its CLIPProcessor or CLIPTokenizer "
            "(processor(text=texts, padding=True, return_tensors='pt')), OpenCLIP with "
            "{'input_ids': open_clip.get_tokenizer(name)(texts)}"
        )
    target = PairSimilarity(pairs)
    adapter = adapter or find_adapter(model)
    if adapter.task != "dual":
        raise ValueError(
            f"{type(model).__name__} is not a dual encoder (adapter {adapter.name!r}, task "
            f"{adapter.task!r}); use gae_utils.explain"
        )
    rec = record(
        model, {"pixel_values": images, **dict(texts)}, target, adapter=adapter, eval_mode=eval_mode
    )
    scores = rec.scores  # (B_i, B_t), or (B, 1) for diagonal pairs
    return DualExplanation(
        logits=scores if rec.multi_target else scores[:, 0],
        image=_tower(rec, "image", scores, method, image_start_layer),
        text=_tower(
            rec, "text", scores.T if rec.multi_target else scores, method, text_start_layer
        ),
    )
