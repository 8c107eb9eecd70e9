"""Hugging Face BERT-style text encoders read at the mean over their non-padding tokens
(sentence-transformers models such as all-MiniLM-L6-v2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_text, hf_eager

__all__ = ["BERT_ENCODER", "text_mean_weights"]


def text_mean_weights(inputs: dict) -> Tensor:
    """Row weights of mean pooling over the non-padding tokens: ``(B, L)``, rows summing to 1."""
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    mask = mask.float()
    return mask / mask.sum(dim=1, keepdim=True)


def _text_mean_layout(model: nn.Module, inputs: dict) -> TokenLayout:
    seg = Segment("text", inputs["input_ids"].shape[1], prefix=0)
    return TokenLayout((seg,), (Readout("text", "text", "text", "weights"),), {"text": text_mean_weights(inputs)})


BERT_ENCODER = Adapter(
    name="hf-bert-encoder",
    model_classes=("BertModel",),
    sites=(AttentionSite("BertSelfAttention", probs=1, query="text", key="text"),),
    eager=hf_eager,
    call=lambda model, inputs: model(**inputs),
    logits=None,
    check=check_text,
    layout=_text_mean_layout,
    family="Hugging Face BertModel text encoders (e.g. sentence-transformers MiniLM), mean-pooled",
)
