"""Dual encoders (CLIP-style): each tower explained on its own (Eq. 5-6) at the token it pools, the
target being a pair's similarity (:class:`~gae_utils.targets.PairSimilarity`, one forward pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .explainer import Recording, record
from .explanation import Explanation
from .propagation import check_start_layer
from .targets import PairSimilarity

__all__ = ["DualExplanation", "explain_dual"]


@dataclass
class DualExplanation:
    """Every (image, text) pair of a batch, explained on both towers.

    With ``pairs="diagonal"`` the pair dimension is absent: ``(B, N)`` relevance, ``(B,)`` logits.

    Attributes:
        logits: ``(B_i, B_t)`` the model's similarity logits.
        image: ``relevance["image"]`` is ``(B_i, B_t, N_patches)``: image ``i``'s patches for text
            ``j``.
        text: ``relevance["text"]`` is ``(B_t, B_i, L)``: text ``j``'s tokens for image ``i``.
    """

    logits: Tensor
    image: Explanation
    text: Explanation


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
