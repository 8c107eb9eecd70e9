"""Hugging Face VisualBERT: one stream over text tokens and region features the user supplies."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import ChildOutput
from ..layout import Segment, TokenLayout
from .base import Adapter, AttentionSite, check_joint, joint_layout, no_switch

__all__ = ["VISUALBERT_QA", "VISUALBERT_VR", "visualbert_answer_index"]


def _visualbert_check(model: Any, inputs: Any) -> None:
    check_joint(model, inputs, ("visual_embeds",))
    feats = inputs["visual_embeds"]
    if feats.ndim != 3 or feats.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"visual_embeds must be (B, R, F) for the batch of {inputs['input_ids'].shape[0]} "
            "questions, "
            f"got {tuple(feats.shape)}"
        )
    if feats.shape[-1] != model.config.visual_embedding_dim:
        raise ValueError(
            f"visual_embeds have {feats.shape[-1]} features but config.visual_embedding_dim is "
            f"{model.config.visual_embedding_dim}"
        )


def visualbert_answer_index(inputs: Mapping) -> Tensor:
    """Token ``VisualBertForQuestionAnswering`` classifies: the last text token before [SEP],
    ``(B,)``."""
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    return mask.sum(dim=1) - 2


def _visualbert_layout(model: nn.Module, inputs: Any, answer_row: bool) -> TokenLayout:
    """Text then region tokens in one stream; read at the answer token (question answering) or
    [CLS]."""
    n_text = inputs["input_ids"].shape[1]
    regions = Segment("image", inputs["visual_embeds"].shape[1], 0)
    if answer_row:
        rows = F.one_hot(visualbert_answer_index(inputs), n_text).float()  # (B, L)
        weights = {"text": rows, "image": rows}
        return joint_layout(n_text, regions, None, per_example_rows=True, weights=weights)
    return joint_layout(n_text, regions, (0,))


def _visualbert(name: str, model_class: str, answer_row: bool) -> Adapter:
    return Adapter(
        name=name,
        model_classes=(model_class,),
        sites=(
            AttentionSite(
                "VisualBertSelfAttention", ChildOutput("dropout"), query="joint", key="joint"
            ),
        ),
        eager=no_switch,
        call=lambda model, inputs: model(**inputs),
        logits=lambda out: out.logits,
        check=_visualbert_check,
        layout=partial(_visualbert_layout, answer_row=answer_row),
        family=f"Hugging Face {model_class} (one stream over text + region features you supply)",
    )


VISUALBERT_QA = _visualbert("hf-visualbert", "VisualBertForQuestionAnswering", answer_row=True)
VISUALBERT_VR = _visualbert("hf-visualbert-vr", "VisualBertForVisualReasoning", answer_row=False)
