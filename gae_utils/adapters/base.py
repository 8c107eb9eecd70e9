"""Types and shared pieces of the adapters: where attention lives, fused-attention switches, input checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from torch import Tensor, nn

from ..layout import Readout, Segment, TokenLayout
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
    "check_image_size",
    "check_text",
    "check_joint",
    "joint_layout",
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
        probs: how to read the probabilities ``(B, H, Nq, Nk)``: the name of a child module whose output
            is them (timm's ``"attn_drop"``), an index into the module's output tuple, or a function
            ``(module, output) -> Tensor | None``.
        kind: ``"self"`` or ``"cross"``.
        query: modality of the queries (the rows).
        key: modality of the keys (the columns).
        group: layers sharing a group id inside one block are applied simultaneously (co-attention).
        within: only modules whose qualified name has this component (e.g. ``"vision_model"``).
        calls: the ``(query, key)`` of successive calls of a module run several times per forward pass (LXMERT's
            text->image, then image->text); ``group="module"`` makes each cycle one co-attention update.
        graph_base: the returned probabilities are a view made after the module used them
            (``torch.nn.MultiheadAttention``); gradients are taken at the view's ``(B*H, Nq, Nk)`` base.
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
def eager_flags(flags: list[tuple[Any, str, Any]]) -> Iterator[None]:
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
    switch = getattr(model, "set_attn_implementation", None) or partial(setattr, config, "_attn_implementation")
    try:
        switch("eager")
        if config._attn_implementation != "eager":
            raise UnsupportedModelError(
                f"{type(model).__name__} uses attn_implementation={original!r} and cannot switch to "
                "'eager' at run time; load it with attn_implementation='eager'."
            )
        yield
    finally:
        switch(original)


no_switch = nullcontext  # families whose attention modules always return their probabilities


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


def check_image_size(images: Tensor, size: tuple[int, int], source: str = "", fix: str = "") -> None:
    """Images ``(B, C, H, W)`` of another size than the model's ``size`` get an error naming the resize."""
    if tuple(images.shape[-2:]) != tuple(size):
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's {source}{tuple(size)}; "
            f"resize the images to {tuple(size)}{fix}."
        )


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
    check_text(model, inputs)


def joint_layout(n_text: int, image: Segment, rows: tuple[int, ...] | str, **layout: dict[str, Tensor]) -> TokenLayout:
    """One stream ``"joint"`` of text then ``image`` tokens, read at the text ``rows`` of its ``R[t, t]`` block (the
    row's own column zeroed) and ``R[t, i]`` block; ``layout``: its ``weights`` and ``positions``."""
    text = Segment("text", n_text, 0, stream="joint")
    image = replace(image, stream="joint", offset=n_text)
    readouts = (Readout("text", "text", "text", rows, drop_self=True), Readout("image", "text", "image", rows))
    return TokenLayout((Segment("joint", n_text + image.n_tokens), text, image), readouts, **layout)


@dataclass(frozen=True)
class Adapter:
    """Everything the engine needs to know about one model family.

    Attributes:
        name: short name shown in errors and results.
        model_classes: class names this adapter serves (matched on the model's class and bases).
        sites: the attention layers as :class:`AttentionSite` entries, or a function of the model giving them.
        eager: context manager switching fused attention off for one call.
        call: ``call(model, inputs) -> output``.
        logits: ``logits(output) -> Tensor | None``: the output's scores (``(B, C)`` class logits,
            ``(B, T, V)``, ``(B, Q, C + 1)``, ``(B_i, B_t)``, ...); None for encoders without a head.
        check: ``check(model, inputs)`` raising ``ValueError``/``TypeError`` with the fix.
        layout: ``layout(model, inputs) -> TokenLayout``.
        family: one-line description for error messages.
        contains: also serve any model that *contains* a module of one of these classes (a user
            model built around ``torch.nn.Transformer``, called by the convention ``family`` states).
        accepts: also serve any model for which ``accepts(model)`` is True (e.g. every causal LM
            routed through the attention interface).
        target: ``target(model, target) -> Target``: how this family reads ``target=`` (a
            :class:`~gae_utils.targets.Target` passed by the caller is used as is).
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
