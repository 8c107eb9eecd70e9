"""Capturing attention through Hugging Face's attention interface, for any model that routes its
attention calls through it (``ALL_ATTENTION_FUNCTIONS``; transformers 5.x).

A capturing attention function is registered under :data:`KEY` beside eager's mask function (without
the mask function, causal and padding masks would be silently dropped). For one call the model is
switched to it with ``set_attn_implementation`` (which reaches the sub-models of composite models)
and restored afterwards from a snapshot of every config's implementation (the setter is not an exact
inverse). The function runs the family's own ``eager_attention_forward`` (grouped-query heads, sliding
windows, soft-capping and sinks as the family computes them) and hands the probabilities to the
recorder through the attention module's forward hook. A model that does not route its attention
ignores the switch: nothing is captured and the recorder raises, never returning a map.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .base import AttentionCaptureError, AttentionSite

__all__ = ["KEY", "interface_eager", "interface_sites", "routes_attention"]

KEY = "gae_capture"  # not prefixed flash/sdpa/flex: some models choose code paths by that prefix
_CAPTURED: dict[int, list[Tensor]] = {}  # id(attention module) -> probabilities of its calls in this forward


def _family_eager(module: nn.Module) -> Callable[..., tuple[Tensor, Tensor]]:
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise AttentionCaptureError(
            f"{type(module).__name__} routes attention through the interface but its module has no "
            "eager_attention_forward to reproduce it; register an adapter for this family."
        )
    return eager


def _capture_attention(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Eager attention of the module's family; the probabilities ``(B, H, Nq, Nk)`` are kept for the recorder."""
    output, probs = _family_eager(module)(module, *args, **kwargs)
    _CAPTURED.setdefault(id(module), []).append(probs)
    return output, probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(KEY, _capture_attention)
    AttentionMaskInterface.register(KEY, eager_mask)


def _configs(model: nn.Module) -> list[Any]:
    """Every config of the model: the config tree and each submodule's own ``.config``."""
    found: dict[int, Any] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if config is None or id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        stack.extend(getattr(config, name, None) for name in getattr(config, "sub_configs", {}) or {})
    return list(found.values())


@contextmanager
def interface_eager(model: nn.Module) -> Iterator[None]:
    """Route the model's attention through the capturing function for the block, then restore every
    config's implementation exactly (also after an exception)."""
    _register()
    snapshot = [(config, config._attn_implementation_internal) for config in _configs(model)]
    try:
        model.set_attn_implementation(KEY)  # type: ignore[operator]  # PreTrainedModel's setter
        yield
    finally:
        for config, value in snapshot:
            config._attn_implementation_internal = value
        _CAPTURED.clear()


def _captured_probs(module: nn.Module, output: Any) -> Tensor | None:
    """The probabilities the capturing function kept for this module's call (None: it was not called)."""
    calls = _CAPTURED.pop(id(module), [])
    if len(calls) > 1:
        raise AttentionCaptureError(
            f"{type(module).__name__} called attention {len(calls)} times in one forward (per image or window); "
            "this layout is not supported by the generic adapter yet."
        )
    return calls[0] if calls else None


_ROUTED: dict[type, bool] = {}  # attention class -> whether its forward calls the interface


def _is_routed(cls: type) -> bool:
    """Whether the class's forward calls the attention interface (read once from its source)."""
    if cls not in _ROUTED:
        try:
            _ROUTED[cls] = "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)  # type: ignore[attr-defined]
        except (OSError, TypeError, AttributeError):
            _ROUTED[cls] = False
    return _ROUTED[cls]


def routes_attention(model: nn.Module) -> bool:
    """The model declares the attention backend and has at least one routed attention module."""
    return bool(getattr(model, "_supports_attention_backend", False)) and any(
        _is_routed(type(m)) for m in model.modules()
    )


def interface_sites(model: nn.Module, query: str = "text", key: str = "text") -> tuple[AttentionSite, ...]:
    """One self-attention site per routed attention class of ``model``, read from the capture."""
    classes = dict.fromkeys(type(m).__name__ for m in model.modules() if _is_routed(type(m)))
    return tuple(AttentionSite(name, probs=_captured_probs, query=query, key=key) for name in classes)
