"""Hugging Face LXMERT: two streams (text, image regions) joined by co-attention layers."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import nn

from ..capture import ChildOutput
from ..layout import Readout, Segment, TokenLayout
from .base import Adapter, AttentionSite, check_text, no_switch

__all__ = ["LXMERT"]


def _lxmert_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or not {"input_ids", "visual_feats", "visual_pos"} <= set(
        inputs
    ):
        raise TypeError(
            "LXMERT takes a dict with 'input_ids', 'attention_mask', "
            "'visual_feats' (B, R, F) and 'visual_pos' (B, R, 4)"
        )
    check_text(model, inputs)
    feats, pos = inputs["visual_feats"], inputs["visual_pos"]
    if (
        feats.ndim != 3
        or pos.shape[:2] != feats.shape[:2]
        or feats.shape[0] != inputs["input_ids"].shape[0]
    ):
        raise ValueError(
            f"visual_feats {tuple(feats.shape)} and visual_pos {tuple(pos.shape)} must be (B, R, "
            "F) and (B, R, 4) "
            f"for the batch of {inputs['input_ids'].shape[0]} questions"
        )


def _lxmert_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    segments = (
        Segment("text", inputs["input_ids"].shape[1], 0),
        Segment("image", inputs["visual_feats"].shape[1], 0),
    )
    readouts = (
        Readout(
            "text", "text", "text", (0,), drop_self=True
        ),  # the [CLS] row of R[t, t], R[t, t][0, 0] zeroed
        Readout("image", "text", "image", (0,)),  # the [CLS] row of R[t, i]
    )
    return TokenLayout(segments, readouts)


_site = partial(
    AttentionSite, "LxmertAttention", ChildOutput("dropout")
)  # every layer's probabilities: its dropout's output

LXMERT = Adapter(
    name="hf-lxmert",
    model_classes=("LxmertForQuestionAnswering",),
    sites=(
        _site(query="text", key="text", within="layer"),
        _site(query="image", key="image", within="r_layers"),
        # one module serves both directions of a cross-modality layer: text->image, then image->text
        _site(
            kind="cross",
            within="visual_attention",
            calls=(("text", "image"), ("image", "text")),
            group_per_cycle=True,
        ),
        _site(query="text", key="text", within="lang_self_att"),
        _site(query="image", key="image", within="visn_self_att"),
    ),
    eager=no_switch,
    call=lambda model, inputs: model(**inputs),
    logits=lambda out: out.question_answering_score,
    check=_lxmert_check,
    layout=_lxmert_layout,
    family="Hugging Face LxmertForQuestionAnswering (two streams, co-attention; region features "
    "supplied by you)",
)
