"""Adapters: the per-architecture facts the engine needs, stored as data, one file per family
(:class:`~gae_utils.adapters.base.Adapter`). Adding a model family is one file here and one line in
:data:`ADAPTERS` (or :func:`register_adapter` from user code), never an edit of the engine.
"""

from __future__ import annotations

import re

from torch import nn

from . import (
    hf_causal_lm,
    hf_clip,
    hf_detr,
    hf_lxmert,
    hf_text,
    hf_video,
    hf_vilt,
    hf_vision,
    hf_visualbert,
    hf_vlm,
    openclip,
    seq2seq,
    swin,
    timesformer,
    timm_vit,
)
from .base import Adapter, AttentionCaptureError, AttentionSite, UnsupportedModelError
from .images import convolutional_reason, hierarchical_reason, windowed_reason

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AttentionCaptureError",
    "AttentionSite",
    "UnsupportedModelError",
    "check_transformers_version",
    "find_adapter",
    "register_adapter",
]

ADAPTERS: list[Adapter] = [
    timm_vit.ADAPTER,
    swin.TIMM_SWIN,
    swin.HF_SWIN,
    hf_text.BERT_ENCODER,
    hf_clip.CLIP,
    openclip.OPEN_CLIP,
    hf_vilt.VILT,
    hf_visualbert.VISUALBERT_QA,
    hf_visualbert.VISUALBERT_VR,
    hf_lxmert.LXMERT,
    seq2seq.MARIAN,
    seq2seq.BART,
    seq2seq.T5,
    seq2seq.TORCH_TRANSFORMER,
    hf_detr.DETR,
    timesformer.TIMESFORMER,
    hf_video.HF_VIDEO,  # before the image models: a video classifier takes pixel_values too
    hf_vision.HF_VISION,  # the generic adapters last: a family's own adapter comes first
    hf_vlm.HF_VLM,
    hf_causal_lm.CAUSAL_LM,
]
"""Searched in order; the first adapter that matches a model serves it."""


def register_adapter(adapter: Adapter) -> None:
    """Add an adapter to the front of the table, so that it overrides the built-in entries."""
    ADAPTERS.insert(0, adapter)


MIN_TRANSFORMERS = (5, 15)
"""The oldest Transformers release the Hugging Face adapters are tested on (5.15.1 to 5.24.0); older
ones return the probabilities elsewhere (T5) or only when asked (ViT, DETR), and name DETR's
attention classes differently."""


def _installed_transformers() -> str:
    import transformers

    return transformers.__version__


def check_transformers_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` naming the fix when Transformers is older than
    :data:`MIN_TRANSFORMERS`."""
    version = version or _installed_transformers()
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise UnsupportedModelError(
            f"transformers {version} is installed, but the Hugging Face adapters need "
            f"transformers>={need}: "
            f"older releases return the attention probabilities elsewhere or not at all. "
            f"Upgrade with: pip install -U 'transformers>={need}'"
        )


def find_adapter(model: nn.Module) -> Adapter:
    """The first adapter of :data:`ADAPTERS` that serves ``model``, else an
    :class:`UnsupportedModelError` saying why (a convolutional or windowed-attention network) or
    where the supported families are listed and how to register an adapter."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    failed = []  # predicates that raised: not accepting, named in the error if nothing serves
    for adapter in ADAPTERS:
        try:
            matched = adapter.matches(model)
        except UnsupportedModelError:
            raise  # a refusal naming its reason (a hybrid model's token mixers)
        except Exception as error:
            failed.append(
                f"  - adapter {adapter.name!r}: accepts() raised {type(error).__name__}: {error}"
            )
            continue
        if matched:
            if type(model).__module__.startswith("transformers."):
                check_transformers_version()
            return adapter
    reason = hierarchical_reason(model) or windowed_reason(model) or hf_video.video_reason(model)
    reason = reason or convolutional_reason(model)
    if reason is not None:
        raise UnsupportedModelError(reason)
    raised = "".join(
        f"Adapters whose predicate failed (treated as not serving it):\n{line}\n"
        for line in failed[:1]
    )
    raised += "".join(f"{line}\n" for line in failed[1:])
    raise UnsupportedModelError(
        f"no adapter captures the attention of {type(model).__name__}. Supported families: "
        "docs/models.md (gae_utils.adapters.ADAPTERS).\n"
        f"{raised}"
        "To add one, describe where its attention probabilities live in a gae_utils.Adapter and "
        "call gae_utils.register_adapter(adapter) (docs/models.md, 'Adding a model')."
    )
