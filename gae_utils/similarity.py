"""Which words carry the similarity of two sentences: GAE (Eq. 5-6) on a mean-pooled sentence
encoder, the target being each pair's cosine similarity; one forward and one backward pass for the
batch (:class:`~gae_utils.targets.SplitPairSimilarity`).
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
        tokens_first: token strings of the first sentences (padding removed), when a tokenizer was
            given.
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
        first: tokenizer output of the first sentences (``input_ids``, ``attention_mask``), B of
            them.
        second: tokenizer output of the second sentences, B of them.
        method: ``gae`` or a baseline of :data:`gae_utils.methods.METHODS`.
        start_layer: first aggregated layer (gae, rollout).
        tokenizer: if given, token strings are returned for plotting.
        adapter: overrides the adapter lookup.
        eval_mode: explain in eval mode (restored afterwards).
    """
    adapter = adapter or find_adapter(model)
    for inputs in (first, second):
        adapter.check(model, inputs)
    batch = first["input_ids"].shape[0]
    if second["input_ids"].shape[0] != batch:
        raise ValueError(
            f"{batch} first sentences but {second['input_ids'].shape[0]} second sentences; pass "
            "pairs"
        )
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", 0) or 0
    ids, masks = [], []
    for x in (first, second):  # right-padded to the longer batch
        extra = length - x["input_ids"].shape[1]
        ids.append(F.pad(x["input_ids"], (0, extra), value=pad_id))
        masks.append(
            F.pad(x.get("attention_mask", torch.ones_like(x["input_ids"])), (0, extra), value=0)
        )
    device = next(model.parameters()).device
    inputs = {
        "input_ids": torch.cat(ids).to(device),
        "attention_mask": torch.cat(masks).to(device),
    }  # (2B, L) each
    target = SplitPairSimilarity(
        lambda output, x: mean_pool(output.last_hidden_state, x["attention_mask"])
    )
    rec = record(model, inputs, target, adapter=adapter, eval_mode=eval_mode)
    # relevance["text"] (2B, L), maps (2B, L, L), scores (B,)
    both = rec.explanation(method, start_layer)

    def half(rows: slice) -> Explanation:
        return replace(
            both,
            relevance={k: v[rows] for k, v in both.relevance.items()},
            maps={k: v[rows] for k, v in both.maps.items()},
            layout=replace(
                both.layout, weights={k: v[rows] for k, v in both.layout.weights.items()}
            ),
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
