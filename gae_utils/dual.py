"""Dual encoders (CLIP-style): each tower explained on its own, the target being a pair's similarity.

method.md, "Reading the answer": a dual encoder's image and text towers never attend to each
other, so each is explained with the self-attention rule (Eq. 5-6) and read at the token it pools
(CLIP: the image tower's CLS row, the text tower's EOT row), the target being the similarity of the
chosen (image, text) pair.

One forward pass embeds every image and every text; :func:`explain_dual` then explains every
(image, text) pair of the batch:

- image ``i`` for text ``j``: the gradient of ``sum_i s[i, j]`` restricted to the image tower is
  exactly ``d s[i, j] / d A_i`` (image ``i`` appears only in row ``i``): one backward pass *through
  the image tower only* per text;
- text ``j`` for image ``i``: likewise ``sum_j s[i, j]``, one backward pass through the text tower
  only per image.

So one image against 64 captions costs one text-tower backward (batch 64) and 64 image-tower
backwards of a single image, never a backward through both towers per pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .engine import compute_maps
from .explanation import Explanation
from .layout import TokenLayout
from .recorder import AttentionRecorder, LayerRecord

__all__ = ["DualExplanation", "explain_dual"]


@dataclass
class DualExplanation:
    """Every (image, text) pair of a batch, explained on both towers.

    With ``pairs="diagonal"`` the pair dimension is absent: ``(B, N)`` relevance, ``(B,)`` logits.

    Attributes:
        logits: ``(B_i, B_t)`` the model's similarity logits.
        image: ``relevance["image"]`` is ``(B_i, B_t, N_patches)``: image ``i``'s patches for text ``j``.
        text: ``relevance["text"]`` is ``(B_t, B_i, L)``: text ``j``'s tokens for image ``i``.
    """

    logits: Tensor
    image: Explanation
    text: Explanation


def _tower(
    model: nn.Module,
    layers: list[LayerRecord],
    columns: slice,
    layout: TokenLayout,
    modality: str,
    method: str,
    start_layer: int,
    scores: Tensor,
    diagonal: bool,
) -> Explanation:
    """One tower's explanation from its own layers, target columns ``columns`` of their Eq. 5 maps."""
    own = [
        replace(layer, cam=layer.cam[:, columns], grad=layer.grad[:, columns] if layer.grad is not None else None)
        for layer in layers
        if layer.query == modality
    ]
    if not 0 <= start_layer < len(own):
        raise ValueError(f"start_layer={start_layer} is out of range for the {modality} tower's {len(own)} layers")
    sub = layout.only(modality)
    maps = compute_maps(method, own, sub, start_layer if method in ("gae", "rollout") else 0)  # (B, K, N, N)
    relevance = sub.read(maps)  # (B, K, n)
    squeeze = (lambda t: t[:, 0]) if diagonal else (lambda t: t)  # diagonal pairs: one target per example
    return Explanation(
        relevance={k: squeeze(v).detach() for k, v in relevance.items()},
        maps={k: squeeze(v).detach() for k, v in maps.items()},
        target=None,
        scores=scores,
        method=method,
        layout=sub,
        start_layer=start_layer,
        model_name=type(model).__name__,
        multi_target=not diagonal,
    )


def explain_dual(
    model: nn.Module,
    images: Tensor,
    texts: Mapping,
    method: str = "gae",
    image_start_layer: int = 0,
    text_start_layer: int = 0,
    pairs: str = "all",
    adapter: Adapter | None = None,
) -> DualExplanation:
    """Explain the similarity of every (image, text) pair of a batch with a dual encoder.

    Args:
        model: a dual encoder served by an adapter with ``towers=True`` (Hugging Face ``CLIPModel``).
        images: ``(B_i, 3, H, W)`` pixel values as the model expects them.
        texts: tokenizer output (``input_ids``, ``attention_mask``) of ``B_t`` texts.
        method: ``gae`` or a baseline of :data:`gae_utils.engine.METHODS`.
        image_start_layer: first aggregated image-tower layer (the authors use it for CLIP ViT-B/16).
        text_start_layer: first aggregated text-tower layer.
        pairs: ``"all"`` (every image with every text) or ``"diagonal"`` (image ``i`` with text
            ``i`` only, ``B_i == B_t``): then one backward pass of ``sum_i s[i, i]`` serves both
            towers and every pair exactly, and relevance has no pair dimension.
        adapter: overrides the adapter lookup.

    Returns:
        A :class:`DualExplanation`.
    """
    if pairs not in ("all", "diagonal"):
        raise ValueError(f"pairs must be 'all' or 'diagonal', got {pairs!r}")
    adapter = adapter or find_adapter(model)
    if not adapter.towers:
        raise ValueError(f"{type(model).__name__} is not a dual encoder; use gae_utils.explain")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf values; clean or re-normalise them before explaining.")
    inputs = {"pixel_values": images, **dict(texts)}
    adapter.check(model, inputs)
    layout = adapter.layout(model, inputs)
    with AttentionRecorder(model, adapter) as rec, torch.enable_grad():
        output = adapter.call(model, inputs)
        logits = adapter.logits(output)  # (B_i, B_t)
        n_images, n_texts = logits.shape
        if pairs == "diagonal":
            if n_images != n_texts:
                raise ValueError(f"pairs='diagonal' needs as many images as texts, got {n_images} and {n_texts}")
            layers = rec.backward_objectives([logits.diagonal().sum()])
            image_cols = text_cols = slice(0, 1)
        else:
            # image i for text j: column j of the logits, every image at once; the B_t passes through
            # the image tower run as one vectorised backward
            columns = torch.eye(n_texts, dtype=logits.dtype, device=logits.device)  # (B_t, B_t)
            rec.batched_backward(logits, columns[:, None, :].expand(-1, n_images, -1), "image")  # (B_t, B_i, B_t)
            # text j for image i: row i of the logits, one pass through the text tower per image
            layers = rec.backward_objectives([logits[i, :].sum() for i in range(n_images)], [{"text"}] * n_images)
            image_cols, text_cols = slice(0, n_texts), slice(0, n_images)
    scores = logits.detach()  # (B_i, B_t)
    diagonal = pairs == "diagonal"
    image_scores, text_scores = (scores.diagonal(), scores.diagonal()) if diagonal else (scores, scores.T)
    return DualExplanation(
        logits=image_scores,
        image=_tower(model, layers, image_cols, layout, "image", method, image_start_layer, image_scores, diagonal),
        text=_tower(model, layers, text_cols, layout, "text", method, text_start_layer, text_scores, diagonal),
    )
