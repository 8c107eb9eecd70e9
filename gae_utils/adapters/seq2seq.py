"""Encoder-decoders (seq2seq text): Hugging Face Marian, BART, T5, and models built on
``torch.nn.Transformer``.

Modalities ``"source"`` and ``"target"`` (causal), and the cross-attention target -> source (Eq.
6-11).
Inputs: ``input_ids`` (B, S), ``attention_mask`` (B, S), ``decoder_input_ids`` (B, T) and optionally
``decoder_attention_mask`` (B, T); explained token by token with
:func:`gae_utils.explain_generation`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import OutputItem
from ..layout import Readout, Segment, TokenLayout
from ..targets import generation_target
from .base import Adapter, AttentionSite, UnsupportedModelError, check_text, hf_eager

__all__ = ["MARIAN", "BART", "T5", "TORCH_TRANSFORMER", "mha_eager"]


def _seq2seq_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or not {"input_ids", "decoder_input_ids"} <= set(inputs):
        raise TypeError(
            "an encoder-decoder takes a dict with 'input_ids' (B, S), 'attention_mask' (B, S) and "
            "'decoder_input_ids' "
            "(B, T); to explain a generation use gae_utils.explain_generation(model, "
            "source_inputs, generated_ids)"
        )
    check_text(model, inputs)
    ids, dec = inputs["input_ids"], inputs["decoder_input_ids"]
    if dec.ndim != 2 or dec.shape[1] == 0:
        raise ValueError(
            f"decoder_input_ids must be (B, T) with T > 0, got {tuple(dec.shape)}; the generation "
            "is empty"
        )
    if dec.shape[0] != ids.shape[0]:
        raise ValueError(
            f"decoder_input_ids has {dec.shape[0]} rows but input_ids has {ids.shape[0]}; pass one "
            "target per source"
        )
    limit = getattr(getattr(model, "config", None), "vocab_size", None)
    for key in ("input_ids", "decoder_input_ids"):
        if limit is not None and (inputs[key].min() < 0 or inputs[key].max() >= limit):
            raise ValueError(
                f"{key} holds ids outside the vocabulary (0..{limit - 1}); encode with the model's "
                "tokenizer"
            )


def _seq2seq_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    """Source and target tokens (no prefix), read by default at each example's last real decoder row
    (next token)."""
    dec, mask = inputs["decoder_input_ids"], inputs.get("decoder_attention_mask")
    last = (torch.ones_like(dec) if mask is None else mask).long().sum(dim=1) - 1  # (B,)
    rows = F.one_hot(last.clamp(min=0), dec.shape[1]).float()  # (B, T)
    segments = (
        Segment("source", inputs["input_ids"].shape[1], 0),
        Segment("target", dec.shape[1], 0),
    )
    readouts = (
        Readout("source", "target", "source", per_example_rows=True),
        Readout("target", "target", "target", per_example_rows=True),
    )
    return TokenLayout(segments, readouts, {"source": rows, "target": rows})


@contextmanager
def mha_eager(model: nn.Module) -> Iterator[None]:
    """Make every ``nn.MultiheadAttention`` of ``model`` return per-head probabilities for the
    block.

    ``nn.TransformerEncoderLayer``/``DecoderLayer`` call their attention with ``need_weights=False``
    and may take a fused fast path: the fast path is switched off and a forward pre-hook asks each
    call for ``need_weights=True, average_attn_weights=False``."""

    def per_head(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    with ExitStack() as undo:
        undo.callback(
            torch.backends.mha.set_fastpath_enabled, torch.backends.mha.get_fastpath_enabled()
        )
        torch.backends.mha.set_fastpath_enabled(False)
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention):
                undo.callback(module.register_forward_pre_hook(per_head, with_kwargs=True).remove)
        yield


def _torch_seq2seq_check(model: nn.Module, inputs: Any) -> None:
    params = list(inspect.signature(model.forward).parameters)
    if params[:2] != ["input_ids", "decoder_input_ids"] or "attention_mask" not in params:
        raise UnsupportedModelError(
            f"{type(model).__name__} contains a torch.nn.Transformer but its "
            f"forward{tuple(params)} does not follow "
            "the call convention model(input_ids, decoder_input_ids, attention_mask=None) -> "
            "logits (B, T, V) "
            "(attention_mask: (B, S), 1 at real source tokens; the model applies the causal mask "
            "itself). "
            "Wrap it in a module with that forward, or register an adapter with your own call."
        )
    _seq2seq_check(model, inputs)


def _seq2seq_sites(
    cls: str, item: int, cross: str, graph_base: bool = False
) -> tuple[AttentionSite, ...]:
    """Cross-attention (module names with the part ``cross``; first, as Marian/BART's
    ``encoder_attn`` also contains ``encoder``), source and causal target sites of an
    encoder-decoder whose attention is ``cls``, returning its probabilities as output ``item``."""
    probs = OutputItem(item)
    return (
        AttentionSite(
            cls,
            probs,
            kind="cross",
            query="target",
            key="source",
            within=cross,
            graph_base=graph_base,
        ),
        AttentionSite(
            cls, probs, query="source", key="source", within="encoder", graph_base=graph_base
        ),
        AttentionSite(
            cls, probs, query="target", key="target", within="decoder", graph_base=graph_base
        ),
    )


def _hf_seq2seq_adapter(
    name: str, model_class: str, attention: str, item: int, cross: str, family: str
) -> Adapter:
    """A Hugging Face encoder-decoder LM: the families differ only in these facts."""
    return Adapter(
        name=name,
        model_classes=(model_class,),
        sites=_seq2seq_sites(attention, item, cross),
        eager=hf_eager,
        call=lambda model, inputs: model(**inputs, use_cache=False),
        logits=lambda out: out.logits,
        check=_seq2seq_check,
        layout=_seq2seq_layout,
        family=f"Hugging Face {model_class}{family}, via gae_utils.explain_generation",
        target=generation_target,
        task="generate",
    )


# Marian/BART attention returns (output, weights) in eager mode
MARIAN = _hf_seq2seq_adapter(
    "hf-marian",
    "MarianMTModel",
    "MarianAttention",
    1,
    "encoder_attn",
    " (source, causal target, cross-attention)",
)
BART = _hf_seq2seq_adapter(
    "hf-bart", "BartForConditionalGeneration", "BartAttention", 1, "encoder_attn", ""
)
# T5 returns (output, position_bias, weights); its position bias is added before the softmax,
# independent of A
T5 = _hf_seq2seq_adapter(
    "hf-t5",
    "T5ForConditionalGeneration",
    "T5Attention",
    2,
    "EncDecAttention",
    " (relative position bias)",
)
TORCH_TRANSFORMER = Adapter(
    name="torch-transformer",
    model_classes=(),
    contains=(
        "Transformer",
    ),  # any model holding a torch.nn.Transformer, called by the convention below
    sites=_seq2seq_sites("MultiheadAttention", 1, "multihead_attn", graph_base=True),
    eager=mha_eager,
    call=lambda model, x: model(
        x["input_ids"], x["decoder_input_ids"], attention_mask=x.get("attention_mask")
    ),
    logits=lambda out: out,
    check=_torch_seq2seq_check,
    layout=_seq2seq_layout,
    family="models containing torch.nn.Transformer with forward(input_ids, decoder_input_ids, "
    "attention_mask=None) "
    "-> logits (B, T, V), via gae_utils.explain_generation",
    target=generation_target,
    task="generate",
)
