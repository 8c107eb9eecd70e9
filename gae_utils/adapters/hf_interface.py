"""Models that route their attention calls through Hugging Face's attention interface
(``ALL_ATTENTION_FUNCTIONS``; transformers 5.x): which of their modules do, and whether anything
else mixes their tokens.

Their sites read the probabilities from the interface (:class:`~gae_utils.capture.FromInterface`):
for one call the recorder routes the model through a capturing function of its own
(:func:`~gae_utils.capture.interface_capture`). A module that does not call the interface captures
nothing and the recorder raises, never returning a map. A model some of whose layers mix tokens
outside softmax attention (Mamba, gated delta-net, lightning attention, short convolutions,
RG-LRU: the hybrid models) is refused before running (:func:`check_token_mixing`).
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from ..capture import AttentionSite, FromInterface, UnsupportedModelError

__all__ = ["TokenMixingError", "check_token_mixing", "interface_sites", "routes_attention"]

_ROUTED: dict[type, bool] = {}  # attention class -> whether its forward calls the interface


def _is_routed(cls: type) -> bool:
    """Whether the class's forward looks up the attention interface when it runs: the global names
    its compiled code reads (not its source text) include ``ALL_ATTENTION_FUNCTIONS``."""
    if cls not in _ROUTED:
        forward = inspect.unwrap(getattr(cls, "forward", None) or (lambda: None))
        code = getattr(forward, "__code__", None)
        _ROUTED[cls] = code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names
    return _ROUTED[cls]


class TokenMixingError(UnsupportedModelError):
    """Some layers of the model mix tokens outside softmax attention, which GAE cannot propagate
    through."""


def _mixers(layer: nn.Module) -> list[str]:
    """What mixes tokens in ``layer`` besides routed softmax attention: the owners of convolutions
    over the tokens anywhere in it (kernel > 1: Mamba, gated delta-net, short convolutions, RG-LRU,
    ZAYA's attention projections), or the layer itself if it runs no routed attention (lightning
    attention; an attention-free MLP layer too)."""
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

    GAE propagates relevance only through the captured maps (Eq. 6: ``R = prod_l (I + Abar_l)``): a
    state-space, linear-attention, recurrent or convolutional mixer moves information between tokens
    that ``R`` never sees. Read from the model: each layer of the outermost module lists holding
    routed attention (the decoder's or encoder's layers of ``layers_of``, default ``model``) must
    run routed attention and no convolution over tokens.

    Raises:
        TokenMixingError: naming the layers and their mixers.
    """
    found: dict[str, list[str]] = {}
    lists: list[str] = []
    for name, layers in (model if layers_of is None else layers_of).named_modules():
        if not isinstance(layers, nn.ModuleList) or any(
            name.startswith(f"{outer}.") for outer in lists
        ):
            continue
        if any(_is_routed(type(m)) for m in layers.modules()):
            lists.append(name)
            for i, layer in enumerate(layers):
                for mixer in _mixers(layer):
                    found.setdefault(f"{mixer} in {name}", []).append(str(i))
    if found:
        where = "; ".join(f"{mixer} {', '.join(layers)}" for mixer, layers in found.items())
        raise TokenMixingError(
            f"{type(model).__name__} mixes tokens outside softmax attention ({where}). GAE "
            "propagates relevance only "
            "through the captured attention maps (R = prod_l (I + Abar_l)), so it would miss this "
            "mixing and return a "
            "wrong map: hybrid state-space, linear-attention, recurrent and convolutional models "
            "are not supported."
        )


def routes_attention(model: nn.Module, layers_of: nn.Module | None = None) -> bool:
    """The model has a routed attention module and its layers (those of ``layers_of``) mix tokens
    only through routed attention, else :func:`check_token_mixing` raises. Whether every hooked
    module really called the interface is checked on the run itself (the recorder's capture count),
    not read from a class flag."""
    check_token_mixing(model, layers_of)
    return any(_is_routed(type(m)) for m in model.modules())


def interface_sites(
    model: nn.Module, query: str = "text", key: str = "text"
) -> tuple[AttentionSite, ...]:
    """One self-attention site per routed attention class of ``model``, read from the capture."""
    classes = dict.fromkeys(type(m).__name__ for m in model.modules() if _is_routed(type(m)))
    return tuple(AttentionSite(name, FromInterface(), query=query, key=key) for name in classes)
