"""Decoder-only language models of Hugging Face transformers, captured through the attention
interface.

Any causal LM whose attention is routed through ``ALL_ATTENTION_FUNCTIONS`` (GPT-2, Llama, Mistral,
Qwen2/3, Gemma 1-3, Phi, OLMo, ...) is served with no per-architecture code: the capture of
:mod:`~gae_utils.adapters.hf_interface` finds its attention classes on the model. The explained
token is the next token after each row's last real (non-padding) position ``p``; the readout is
row ``p`` of ``R[text, text] - I`` (docs/rules.md, "Reading the explanation": the identity only
restates that ``p`` is relevant to itself), 0 at padding. Position ids are counted from each row's
first real token when the caller passes none (as generation does), so left and right padding give
the unpadded example's numbers.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
from ..targets import NextTokenTarget, Target
from .base import Adapter, check_text, no_switch
from .hf_interface import interface_sites, routes_attention

__all__ = ["CAUSAL_LM", "causal_lm_target", "infer_attention_mask", "last_real_position"]


def _mask(inputs: Mapping) -> Tensor:
    mask = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"]) if mask is None else mask


def last_real_position(inputs: Mapping) -> Tensor:
    """``(B,)`` index of each row's last real token (right or left padding)."""
    mask = _mask(inputs).long()  # (B, L)
    return mask.shape[1] - 1 - mask.flip(-1).argmax(dim=-1)


def _pad_id(model: nn.Module) -> int | None:
    """``pad_token_id`` of the model's config, else of its generation config."""
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        pad = getattr(config, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return None


def infer_attention_mask(model: nn.Module, inputs: Any) -> Any:
    """``inputs`` without ``attention_mask`` whose rows start or end with the config's
    ``pad_token_id`` get the mask of those runs (a pad id between real tokens stays real), and a
    warning; other inputs are returned as they are."""
    pad = _pad_id(model)
    if not isinstance(inputs, Mapping) or "attention_mask" in inputs or pad is None:
        return inputs
    ids = inputs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2 or not (ids == pad).any():
        return inputs
    real = ids != pad  # (B, L)
    after_first = real.long().cumsum(dim=1) > 0  # (B, L): from the first real token on
    before_last = real.flip(1).long().cumsum(dim=1).flip(1) > 0  # (B, L): up to the last one
    mask = (after_first & before_last).long()
    if bool((mask == 1).all()):
        return inputs
    warnings.warn(
        f"inputs have no 'attention_mask'; inferred it from pad_token_id={pad} (padding at the "
        "ends of the rows). Pass the tokenizer's attention_mask to silence this.",
        stacklevel=4,
    )
    return {**inputs, "attention_mask": mask}


def _is_causal_lm(model: nn.Module) -> bool:
    if not type(model).__module__.startswith("transformers."):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not any(cls.__name__ in causal for cls in type(model).__mro__):
        return False
    if "pixel_values" in inspect.signature(model.forward).parameters:
        return False  # image tokens in the sequence (GIT): not a text-only LM
    return routes_attention(model)


def _call(model: nn.Module, inputs: Mapping) -> Any:
    kwargs = dict(inputs)
    if "position_ids" not in kwargs:
        kwargs["position_ids"] = (_mask(inputs).long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, L)
    return model(**kwargs, use_cache=False)


def _layout(model: nn.Module, inputs: Mapping) -> TokenLayout:
    length = inputs["input_ids"].shape[1]
    rows = F.one_hot(last_real_position(inputs), length).float()  # (B, L)
    readout = Readout("text", "text", "text", per_example_rows=True, subtract_identity=True)
    return TokenLayout((Segment("text", length, prefix=0),), (readout,), {"text": rows})


def causal_lm_target(model: nn.Module, target: Any) -> Target:
    """The next token after each row's last real position
    (:class:`~gae_utils.targets.NextTokenTarget`)."""
    return NextTokenTarget(target, last_real_position)


CAUSAL_LM = Adapter(
    name="hf-causal-lm",
    model_classes=(),
    accepts=_is_causal_lm,
    sites=interface_sites,
    eager=no_switch,
    call=_call,
    logits=lambda out: out.logits,
    check=check_text,
    layout=_layout,
    family="Hugging Face causal LMs routed through the attention interface (GPT-2, Llama, Qwen2, "
    "Gemma, ...)",
    target=causal_lm_target,
    task="causal_lm",
    prepare=infer_attention_mask,
)
