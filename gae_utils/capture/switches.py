"""Switches that make a model hand out its attention probabilities for one call, each a context
manager that restores what it changed, also after an exception: train/eval mode, fused-attention
flags, the Hugging Face attention implementation, and the route through the attention interface.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

from torch import Tensor, nn

from .sites import AttentionCaptureError, UnsupportedModelError

__all__ = ["eager_flags", "evaluating", "hf_eager", "interface_capture", "no_switch"]


@contextmanager
def evaluating(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """The block runs ``model`` in eval mode; every module's own train/eval flag is restored after,
    also when the block raises. ``enabled=False`` leaves the modes alone."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if enabled:
            model.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def eager_flags(flags: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set ``attr = value`` on each module (or config) for the duration of the block, then
    restore."""
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in flags]
    try:
        for module, attr, value in flags:
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


@contextmanager
def hf_eager(model: nn.Module) -> Iterator[None]:
    """Switch a Hugging Face model to the eager attention implementation for the block."""
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    if original in (None, "eager"):
        yield
        return
    assert config is not None  # original was read from it
    setter = getattr(model, "set_attn_implementation", None)
    switch = setter or partial(setattr, config, "_attn_implementation")
    try:
        switch("eager")
        if config._attn_implementation != "eager":
            raise UnsupportedModelError(
                f"{type(model).__name__} uses attn_implementation={original!r} and cannot switch "
                "to 'eager' at run time; load it with attn_implementation='eager'."
            )
        yield
    finally:
        switch(original)


no_switch = nullcontext  # families whose attention modules always return their probabilities

AttentionFunction = Callable[..., tuple[Tensor, Tensor]]
_KEYS = itertools.count()


def _family_eager(module: nn.Module) -> AttentionFunction:
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise AttentionCaptureError(
            f"{type(module).__name__} routes attention through the interface but its module has "
            "no eager_attention_forward to reproduce it; register an adapter for this family."
        )
    return eager


def _configs(model: nn.Module) -> list[Any]:
    """Every config of the model: the config tree and each submodule's own ``.config``."""
    found: dict[int, Any] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        attr = "_attn_implementation_internal"
        if config is None or id(config) in found or not hasattr(config, attr):
            continue
        found[id(config)] = config
        stack.extend(
            getattr(config, name, None) for name in getattr(config, "sub_configs", {}) or {}
        )
    return list(found.values())


@contextmanager
def interface_capture(
    model: nn.Module, keep: Callable[[nn.Module, Tensor], None]
) -> Iterator[None]:
    """Route the model's attention through a capturing function for the block.

    The function runs the family's own ``eager_attention_forward`` (grouped-query heads, sliding
    windows, soft-capping, sinks as the family computes them) and hands each call's probabilities
    ``(B, H, Nq, Nk)`` to ``keep(module, probs)``. It is registered in transformers' global
    ``AttentionInterface`` under a key of its own beside eager's mask function (without it causal
    and padding masks would be dropped) and removed again on exit, with every config's
    implementation restored from a snapshot (``set_attn_implementation`` is not an exact inverse),
    also after an exception. A model that does not call the interface ignores the switch: nothing
    is captured and the recorder raises.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    key = f"gae_capture_{next(_KEYS)}"  # not prefixed flash/sdpa/flex: models branch on prefixes

    def capture(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        output, probs = _family_eager(module)(module, *args, **kwargs)
        keep(module, probs)
        return output, probs

    registries = (AttentionInterface, AttentionMaskInterface)
    snapshot = [(config, config._attn_implementation_internal) for config in _configs(model)]
    try:
        AttentionInterface.register(key, capture)
        AttentionMaskInterface.register(key, eager_mask)
        model.set_attn_implementation(key)  # type: ignore[operator]  # PreTrainedModel's setter
        yield
    finally:
        for config, value in snapshot:
            config._attn_implementation_internal = value
        for registry in registries:
            registry._global_mapping.pop(key, None)
