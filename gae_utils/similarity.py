"""Which words carry the similarity of two sentences: GAE on a mean-pooled sentence encoder.

Each sentence is explained with the self-attention rule (Eq. 5-6), the target being the cosine
similarity of its pair, read at the pooled rows (the mean over its non-padding tokens). Every pair
of a batch goes through one forward pass and one backward pass
(:class:`~gae_utils.targets.SplitPairSimilarity`, run by :func:`gae_utils.record`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .explainer import record
from .explanation import Explanation
from .targets import SplitPairSimilarity

__all__ = ["PairExplanation", "explain_similarity", "mean_pool"]


@dataclass
class PairExplanation:
    """Relevance of each sentence's tokens for the similarity of its pair.

    Attributes:
        similarity: ``(B,)`` cosine similarity of each pair.
        first: explanation of the first sentences; ``relevance["text"]`` is ``(B, L)``.
        second: explanation of the second sentences.
        tokens_first: token strings of the first sentences (padding removed), when a tokenizer was given.
        tokens_second: the same for the second sentences.
    """

    similarity: Tensor
    first: Explanation
    second: Explanation
    tokens_first: list[list[str]] | None = None
    tokens_second: list[list[str]] | None = None


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states over the non-padding tokens: ``(B, L, D), (B, L) -> (B, D)``."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def _pad_to(ids: Tensor, mask: Tensor, length: int, pad_id: int) -> tuple[Tensor, Tensor]:
    extra = length - ids.shape[1]
    return F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)


def explain_similarity(
    model: nn.Module,
    first: dict,
    second: dict,
    method: str = "gae",
    start_layer: int = 0,
    tokenizer: Any = None,
    adapter: Adapter | None = None,
    eval_mode: bool = True,
) -> PairExplanation:
    """Explain the cosine similarity of sentence pairs with a mean-pooled text encoder.

    Args:
        model: a text encoder served by an adapter (Hugging Face ``BertModel``, e.g. MiniLM).
        first: tokenizer output of the first sentences (``input_ids``, ``attention_mask``), B of them.
        second: tokenizer output of the second sentences, B of them.
        method: ``gae`` or a baseline of :data:`gae_utils.methods.METHODS`.
        start_layer: first aggregated layer (gae, rollout).
        tokenizer: if given, token strings are returned for plotting.
        adapter: overrides the adapter lookup.
        eval_mode: explain in eval mode (restored afterwards).

    Returns:
        A :class:`PairExplanation`.
    """
    adapter = adapter or find_adapter(model)
    for inputs in (first, second):
        adapter.check(model, inputs)
    batch = first["input_ids"].shape[0]
    if second["input_ids"].shape[0] != batch:
        raise ValueError(f"{batch} first sentences but {second['input_ids'].shape[0]} second sentences; pass pairs")
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", 0) or 0
    masks = [x.get("attention_mask", torch.ones_like(x["input_ids"])) for x in (first, second)]
    padded = [_pad_to(x["input_ids"], m, length, pad_id) for x, m in zip((first, second), masks)]
    device = next(model.parameters()).device
    inputs = {
        "input_ids": torch.cat([p[0] for p in padded]).to(device),  # (2B, L)
        "attention_mask": torch.cat([p[1] for p in padded]).to(device),  # (2B, L)
    }
    target = SplitPairSimilarity(lambda output, x: mean_pool(output.last_hidden_state, x["attention_mask"]))
    rec = record(model, inputs, target, adapter=adapter, eval_mode=eval_mode)
    both = rec.explanation(method, start_layer)  # relevance["text"] (2B, L), maps (2B, L, L), scores (B,)

    def half(rows: slice) -> Explanation:
        layout = both.layout
        weights = {k: v[rows] for k, v in layout.weights.items()}
        return replace(
            both,
            relevance={k: v[rows] for k, v in both.relevance.items()},
            maps={k: v[rows] for k, v in both.maps.items()},
            layout=type(layout)(layout.segments, layout.readouts, weights),
        )

    tokens = None
    if tokenizer is not None:
        tokens = [
            tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
            for ids, mask in zip(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu())
        ]
    return PairExplanation(
        similarity=both.scores,
        first=half(slice(0, batch)),
        second=half(slice(batch, 2 * batch)),
        tokens_first=tokens[:batch] if tokens else None,
        tokens_second=tokens[batch:] if tokens else None,
    )
