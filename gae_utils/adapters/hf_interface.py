"""Capturing attention through Hugging Face's attention interface, for any model that routes its
attention calls through it (``ALL_ATTENTION_FUNCTIONS``; transformers 5.x).

A capturing attention function is registered under :data:`KEY` beside eager's mask function (without
the mask function, causal and padding masks would be silently dropped). For one call the model is
switched to it with ``set_attn_implementation`` (which reaches the sub-models of composite models)
and restored afterwards from a snapshot of every config's implementation (the setter is not an exact
inverse). The function runs the family's own ``eager_attention_forward`` (grouped-query heads, sliding
windows, soft-capping and sinks as the family computes them) and hands the probabilities to the
recorder through the attention module's forward hook. A model that does not route its attention
ignores the switch: nothing is captured and the recorder raises, never returning a map. A model some of
whose layers mix tokens outside softmax attention (Mamba, gated delta-net, lightning attention, short
convolutions, RG-LRU: the hybrid models) is refused before running (:func:`check_token_mixing`).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .base import AttentionCaptureError, AttentionSite, UnsupportedModelError

__all__ = ["KEY", "TokenMixingError", "check_token_mixing", "interface_eager", "interface_sites", "routes_attention"]

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


class TokenMixingError(UnsupportedModelError):
    """Some layers of the model mix tokens outside softmax attention, which GAE cannot propagate through."""


def _mixers(layer: nn.Module) -> list[str]:
    """What mixes tokens in ``layer`` besides routed softmax attention: the owners of convolutions over the tokens
    anywhere in it (kernel > 1: Mamba, gated delta-net, short convolutions, RG-LRU, ZAYA's attention projections),
    or the layer itself if it runs no routed attention (lightning attention; an attention-free MLP layer too)."""
    convs = [
        type(owner).__name__
        for owner in layer.modules()
        for conv in owner.children()
        if isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and math.prod(conv.kernel_size) > 1
    ]
    if convs or any(_is_routed(type(m)) for m in layer.modules()):
        return list(dict.fromkeys(convs))
    return [f"{type(layer).__name__} (no softmax attention)"]


def check_token_mixing(model: nn.Module, layers_of: nn.Module | None = None) -> None:
    """Refuse a model some of whose layers mix tokens outside the captured softmax attention.

    GAE propagates relevance only through the captured maps (Eq. 6: ``R = prod_l (I + Abar_l)``): a state-space,
    linear-attention, recurrent or convolutional mixer moves information between tokens that ``R`` never sees.
    Read from the model: each layer of the outermost module lists holding routed attention (the decoder's or
    encoder's layers of ``layers_of``, default ``model``) must run routed attention and no convolution over tokens.

    Raises:
        TokenMixingError: naming the layers and their mixers.
    """
    found: dict[str, list[str]] = {}
    lists: list[str] = []
    for name, layers in (model if layers_of is None else layers_of).named_modules():
        if not isinstance(layers, nn.ModuleList) or any(name.startswith(f"{outer}.") for outer in lists):
            continue
        if any(_is_routed(type(m)) for m in layers.modules()):
            lists.append(name)
            for i, layer in enumerate(layers):
                for mixer in _mixers(layer):
                    found.setdefault(f"{mixer} in {name}", []).append(str(i))
    if found:
        where = "; ".join(f"{mixer} {', '.join(layers)}" for mixer, layers in found.items())
        raise TokenMixingError(
            f"{type(model).__name__} mixes tokens outside softmax attention ({where}). GAE propagates relevance only "
            "through the captured attention maps (R = prod_l (I + Abar_l)), so it would miss this mixing and return a "
            "wrong map: hybrid state-space, linear-attention, recurrent and convolutional models are not supported."
        )


def routes_attention(model: nn.Module, layers_of: nn.Module | None = None) -> bool:
    """The model declares the attention backend and has a routed attention module; its layers (those of
    ``layers_of``) mix tokens only through routed attention, else :func:`check_token_mixing` raises."""
    check_token_mixing(model, layers_of)
    return bool(getattr(model, "_supports_attention_backend", False)) and any(
        _is_routed(type(m)) for m in model.modules()
    )


def interface_sites(model: nn.Module, query: str = "text", key: str = "text") -> tuple[AttentionSite, ...]:
    """One self-attention site per routed attention class of ``model``, read from the capture."""
    classes = dict.fromkeys(type(m).__name__ for m in model.modules() if _is_routed(type(m)))
    return tuple(AttentionSite(name, probs=_captured_probs, query=query, key=key) for name in classes)
