"""Hugging Face BERT-style text encoders read at the mean over their non-padding tokens
(sentence-transformers models such as all-MiniLM-L6-v2), captured through the attention interface.

What this adapter adds to the generic capture is the readout: these models' own pooler reads CLS,
but sentence embeddings are the mean over the real tokens, a convention of their use that cannot be
read from the model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, check_text
from .hf_interface import interface_eager, interface_sites

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
    model_classes=("BertModel", "RobertaModel", "XLMRobertaModel", "ElectraModel", "DistilBertModel"),
    sites=lambda model: interface_sites(model, "text", "text"),
    eager=interface_eager,
    call=lambda model, inputs: model(**inputs),
    logits=None,
    check=check_text,
    layout=_text_mean_layout,
    family="Hugging Face BertModel / RobertaModel / XLMRobertaModel / ElectraModel / DistilBertModel text encoders "
    "(e.g. sentence-transformers MiniLM), mean-pooled",
)
