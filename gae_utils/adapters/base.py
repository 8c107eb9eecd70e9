"""Types and shared pieces of the adapters: where attention lives, how to switch fused attention
off for one call, and the input checks several families share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..layout import TokenLayout
from ..targets import Target, class_target

__all__ = [
    "Adapter",
    "AttentionSite",
    "AttentionCaptureError",
    "UnsupportedModelError",
    "eager_flags",
    "hf_eager",
    "no_switch",
    "check_image_batch",
    "check_text",
    "check_joint",
]


class UnsupportedModelError(TypeError):
    """Raised for a model whose attention probabilities no adapter knows how to capture."""


class AttentionCaptureError(RuntimeError):
    """The model ran but its attention probabilities could not be captured."""


@dataclass(frozen=True)
class AttentionSite:
    """Where the attention probabilities of one kind of layer live.

    Attributes:
        module_class: class name of the attention module (matched on the class and its bases).
        probs: how to read the probabilities ``(B, H, Nq, Nk)``: the name of a child module whose
            output is them (timm's ``"attn_drop"``), an index into the attention module's output
            tuple (Hugging Face eager attention returns ``(output, weights)``), or a function
            ``(module, output) -> Tensor | None`` (the attention-interface capture).
        kind: ``"self"`` or ``"cross"``.
        query: modality of the queries (the rows).
        key: modality of the keys (the columns).
        group: layers sharing a group id inside one block are applied simultaneously
            (two-direction co-attention, docs/rules.md); ``None`` for ordinary layers.
        within: only modules whose qualified name has this component (e.g. ``"vision_model"``),
            for models whose towers share an attention class.
        calls: for a module run several times per forward pass in different directions (LXMERT's
            cross-modality attention serves text->image, then image->text), the ``(query, key)``
            modalities of successive calls; ``group="module"`` then groups each cycle of calls
            into one simultaneous co-attention update.
        graph_base: the returned probabilities are a view made *after* the module used them
            (``torch.nn.MultiheadAttention`` returns ``weights.view(B, H, Nq, Nk)`` of the
            ``(B*H, Nq, Nk)`` tensor its ``bmm`` read); gradients are then taken at the view's base.
    """

    module_class: str
    probs: str | int | Callable[[nn.Module, Any], Tensor | None]
    kind: str = "self"
    query: str = "image"
    key: str = "image"
    group: str | None = None
    within: str | None = None
    calls: tuple[tuple[str, str], ...] | None = None
    graph_base: bool = False


@contextmanager
def eager_flags(model: nn.Module, flags: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set ``attr = value`` on each module (or config) for the duration of the block, then restore."""
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
    try:
        if setter is not None:
            setter("eager")
        else:
            config._attn_implementation = "eager"
        if config._attn_implementation != "eager":
            raise UnsupportedModelError(
                f"{type(model).__name__} uses attn_implementation={original!r} and cannot switch to "
                "'eager' at run time; load it with attn_implementation='eager'."
            )
        yield
    finally:
        if setter is not None:
            setter(original)
        else:
            config._attn_implementation = original


@contextmanager
def no_switch(model: nn.Module) -> Iterator[None]:
    yield


def check_image_batch(images: Tensor, proj: nn.Module | None, channels: int | None = None) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"expected an image tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {tuple(images.shape)}; "
            "add a batch dimension with images[None] for a single image."
        )
    if channels is None and proj is not None:
        channels = getattr(proj, "in_channels", None)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {images.shape[1]} (images of shape {tuple(images.shape)})")


def check_text(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError(
            "a text encoder takes the tokenizer's output as a dict with 'input_ids' and 'attention_mask' "
            "(tokenizer(texts, padding=True, return_tensors='pt'))"
        )
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, L) with L > 0, got {tuple(ids.shape)}; is the text empty?")
    mask = inputs.get("attention_mask")
    if mask is not None and (mask.sum(dim=1) == 0).any():
        empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"examples {empty} have no tokens (empty text); remove them before explaining")


def check_joint(model: nn.Module, inputs: Any, image_keys: tuple[str, ...]) -> None:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs or not any(k in inputs for k in image_keys):
        raise TypeError(
            f"{type(model).__name__} takes a dict with 'input_ids', 'attention_mask' and {' or '.join(image_keys)} "
            "(the model's processor output)"
        )
    check_text(model, {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs})


@dataclass(frozen=True)
class Adapter:
    """Everything the engine needs to know about one model family.

    Attributes:
        name: short name shown in errors and results.
        model_classes: class names this adapter serves (matched on the model's class and bases).
        sites: the attention layers, as :class:`AttentionSite` entries, or a function of the model
            giving them (families whose attention classes are found on the model).
        eager: context manager switching fused attention off for one call.
        call: ``call(model, inputs) -> output``.
        logits: ``logits(output) -> Tensor | None``: the output's scores, ``(B, C)`` class logits,
            ``(B, T, V)`` next-token logits of an encoder-decoder, ``(B, Q, C + 1)`` per object query,
            ``(B_images, B_texts)`` pair similarities; None (or returning None) for encoders
            without a head, whose targets must then be callables.
        check: ``check(model, inputs)`` raising ``ValueError``/``TypeError`` with the fix.
        layout: ``layout(model, inputs) -> TokenLayout``.
        family: one-line description for error messages.
        contains: also serve any model that *contains* a module of one of these classes (a user
            model built around ``torch.nn.Transformer``); such an adapter documents the call
            convention the model must follow.
        accepts: also serve any model for which ``accepts(model)`` is True (a family recognised by
            a property rather than a class name, e.g. every causal LM routed through the
            attention interface).
        target: ``target(model, target) -> Target``: how this family reads the ``target=``
            argument (:func:`~gae_utils.targets.class_target` for classifiers: class indices or a
            callable); a :class:`~gae_utils.targets.Target` object passed by the caller is used as is.
    """

    name: str
    model_classes: tuple[str, ...]
    sites: tuple[AttentionSite, ...] | Callable[[nn.Module], tuple[AttentionSite, ...]]
    eager: Callable[[nn.Module], Any]
    call: Callable[[nn.Module, Any], Any]
    logits: Callable[[Any], Tensor | None] | None
    check: Callable[[nn.Module, Any], None]
    layout: Callable[[nn.Module, Any], TokenLayout]
    family: str = ""
    contains: tuple[str, ...] = ()
    target: Callable[[nn.Module, Any], Target] = class_target
    accepts: Callable[[nn.Module], bool] | None = None

    def matches(self, model: nn.Module) -> bool:
        names = {cls.__name__ for cls in type(model).__mro__}
        if any(name in names for name in self.model_classes):
            return True
        if self.contains and any(type(m).__name__ in self.contains for m in model.modules()):
            return True
        return self.accepts is not None and self.accepts(model)

    def sites_of(self, model: nn.Module) -> tuple[AttentionSite, ...]:
        """The attention sites of ``model``."""
        return self.sites(model) if callable(self.sites) else self.sites
