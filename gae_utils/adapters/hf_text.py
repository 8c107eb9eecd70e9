"""Hugging Face BERT-style text encoders read at the mean over their non-padding tokens (the
sentence embedding of sentence-transformers models such as all-MiniLM-L6-v2, a convention the model
cannot tell), captured through the attention interface."""

from __future__ import annotations

import torch
from torch import nn

from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, check_text, no_switch
from .hf_interface import interface_sites

__all__ = ["BERT_ENCODER"]


def _text_mean_layout(model: nn.Module, inputs: dict) -> TokenLayout:
    """Read at the mean over the non-padding tokens: row weights ``(B, L)`` summing to 1."""
    mask = inputs.get("attention_mask")
    mask = (torch.ones_like(inputs["input_ids"]) if mask is None else mask).float()  # (B, L)
    readout = Readout("text", "text", "text", per_example_rows=True)
    return TokenLayout(
        (Segment("text", mask.shape[1]),),
        (readout,),
        {"text": mask / mask.sum(dim=1, keepdim=True)},
    )


BERT_ENCODER = Adapter(
    name="hf-bert-encoder",
    model_classes=(
        "BertModel",
        "RobertaModel",
        "XLMRobertaModel",
        "ElectraModel",
        "DistilBertModel",
    ),
    sites=lambda model: interface_sites(model, "text", "text"),
    eager=no_switch,
    call=lambda model, inputs: model(**inputs),
    logits=None,
    check=check_text,
    layout=_text_mean_layout,
    family="Hugging Face BertModel / RobertaModel / XLMRobertaModel / ElectraModel / "
    "DistilBertModel text encoders "
    "(e.g. sentence-transformers MiniLM), mean-pooled",
)
