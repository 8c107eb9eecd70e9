"""Where attention probabilities live (:class:`AttentionSite`) and the errors of capturing them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = [
    "AttentionCaptureError",
    "AttentionSite",
    "ChildOutput",
    "FromInterface",
    "OutputItem",
    "ReadWith",
    "UnsupportedModelError",
    "attention_modules",
]


class UnsupportedModelError(TypeError):
    """Raised for a model whose attention probabilities no adapter knows how to capture."""


class AttentionCaptureError(RuntimeError):
    """The model ran but its attention probabilities could not be captured."""


@dataclass(frozen=True)
class ChildOutput:
    """The probabilities are the output of the child module ``name`` (timm's ``"attn_drop"``)."""

    name: str


@dataclass(frozen=True)
class OutputItem:
    """The probabilities are item ``index`` of the attention module's output tuple."""

    index: int


@dataclass(frozen=True)
class ReadWith:
    """The probabilities are ``fn(module, output)`` (None: the module returned none)."""

    fn: Callable[[nn.Module, Any], Tensor | None]


@dataclass(frozen=True)
class FromInterface:
    """The module calls Hugging Face's attention interface; the recorder routes that call through
    its own capturing function for the recording and reads the probabilities it computed."""


ProbsReader = ChildOutput | OutputItem | ReadWith | FromInterface


@dataclass(frozen=True)
class AttentionSite:
    """Where the attention probabilities of one kind of layer live.

    Attributes:
        module_class: class name of the attention module (matched on the class and its bases).
        probs: how to read the probabilities ``(B, H, Nq, Nk)``: :class:`ChildOutput`,
            :class:`OutputItem`, :class:`ReadWith` or :class:`FromInterface`.
        kind: ``"self"`` or ``"cross"``.
        query: modality of the queries (the rows).
        key: modality of the keys (the columns).
        group: layers sharing a group id inside one block are applied simultaneously
            (co-attention).
        within: only modules whose qualified name has this component (e.g. ``"vision_model"``).
        calls: the ``(query, key)`` of successive calls of a module run several times per forward
            pass (LXMERT's text->image, then image->text).
        graph_base: the returned probabilities are a view made after the module used them
            (``torch.nn.MultiheadAttention``); gradients are taken at the view's base.
        group_per_cycle: each cycle of ``calls`` is one co-attention group of its own (``group``
            must then be None).
        windowed: the module attends within windows folded into the batch (``B*nW`` maps; Swin).
        per_image: the module runs once per image, the batch's images folded into its batch (a
            VLM's vision tower: ``N_img`` maps, placed per example by the adapter's ``images``).
    """

    module_class: str
    probs: ProbsReader
    kind: str = "self"
    query: str = "image"
    key: str = "image"
    group: str | None = None
    within: str | None = None
    calls: tuple[tuple[str, str], ...] | None = None
    graph_base: bool = False
    group_per_cycle: bool = False
    windowed: bool = False
    per_image: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.probs, ProbsReader):
            raise TypeError(
                f"AttentionSite({self.module_class!r}) got probs={self.probs!r}; pass a reader: "
                "ChildOutput('attn_drop'), OutputItem(1), ReadWith(fn) or FromInterface()."
            )
        if self.group_per_cycle and (self.calls is None or self.group is not None):
            raise ValueError(
                f"AttentionSite({self.module_class!r}) has group_per_cycle=True, which groups the "
                "cycles of `calls`; give it calls=((query, key), ...) and no group."
            )


def attention_modules(
    model: nn.Module, sites: Sequence[AttentionSite]
) -> list[tuple[str, nn.Module, AttentionSite]]:
    """All modules of ``model`` matching one of ``sites``, in registration order."""
    found = []
    for name, module in model.named_modules():
        classes = {cls.__name__ for cls in type(module).__mro__}
        for site in sites:
            if site.module_class in classes and (
                site.within is None or site.within in name.split(".")
            ):
                found.append((name, module, site))
                break
    return found
