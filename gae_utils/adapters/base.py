"""Types and shared pieces of the adapters: where attention lives, fused-attention switches, input
checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from ..capture import (
    AttentionCaptureError,
    AttentionSite,
    UnsupportedModelError,
    eager_flags,
    hf_eager,
    no_switch,
)
from ..layout import Readout, Segment, TokenLayout
from ..targets import Target, class_target
from .images import check_image_batch, check_image_size

__all__ = [
    "TASKS",
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


def check_text(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError(
            "a text encoder takes the tokenizer's output as a dict with 'input_ids' and "
            "'attention_mask' (tokenizer(texts, padding=True, return_tensors='pt'))"
        )
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"input_ids must be (B, L) with L > 0, got {tuple(ids.shape)}; is the text empty?"
        )
    mask = inputs.get("attention_mask")
    if mask is not None and (mask.sum(dim=1) == 0).any():
        empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"examples {empty} have no tokens (empty text); remove them before explaining"
        )


def check_joint(model: nn.Module, inputs: Any, image_keys: tuple[str, ...]) -> None:
    if (
        not isinstance(inputs, Mapping)
        or "input_ids" not in inputs
        or not any(k in inputs for k in image_keys)
    ):
        raise TypeError(
            f"{type(model).__name__} takes a dict with 'input_ids', 'attention_mask' and "
            f"{' or '.join(image_keys)} (the model's processor output)"
        )
    check_text(model, inputs)


def joint_layout(
    n_text: int,
    image: Segment,
    rows: tuple[int, ...] | None,
    per_example_rows: bool = False,
    **layout: Any,
) -> TokenLayout:
    """One stream ``"joint"`` of text then ``image`` tokens, read at the text ``rows`` (or the
    per-example row weights) of its ``R[t, t]`` block (the row's own column zeroed) and ``R[t, i]``
    block; ``layout``: its ``weights`` and ``positions``."""
    text = Segment("text", n_text, 0, stream="joint")
    image = replace(image, stream="joint", offset=n_text)
    readouts = (
        Readout("text", "text", "text", rows, per_example_rows, drop_self=True),
        Readout("image", "text", "image", rows, per_example_rows),
    )
    return TokenLayout((Segment("joint", n_text + image.n_tokens), text, image), readouts, **layout)


TASKS: dict[str, str] = {  # what a family serves -> the entry point that explains it
    "classify": "gae_utils.explain(model, inputs, target)",  # one (B, K) score per example
    "dual": "gae_utils.explain_dual(model, images, texts)",  # two towers, a pair's similarity
    "generate": "gae_utils.explain_generation(model, source_inputs, generated)",  # enc-dec
    "causal_lm": "gae_utils.explain_generation(model, prompt_inputs, generated)",  # + explain
}


@dataclass(frozen=True)
class Adapter:
    """Everything the engine needs to know about one model family.

    Attributes:
        name: short name shown in errors and results.
        model_classes: class names this adapter serves (matched on the model's class and bases).
        sites: the attention layers as :class:`AttentionSite` entries, or a function of the model
            giving them.
        eager: context manager switching fused attention off for one call.
        call: ``call(model, inputs) -> output``.
        logits: ``logits(output) -> Tensor | None``: the output's scores (``(B, C)`` class logits,
            ``(B, T, V)``, ``(B, Q, C + 1)``, ``(B_i, B_t)``, ...); None for encoders without a
            head.
        check: ``check(model, inputs)`` raising ``ValueError``/``TypeError`` with the fix.
        layout: ``layout(model, inputs) -> TokenLayout``.
        family: one-line description for error messages.
        contains: also serve any model that *contains* a module of one of these classes (a user
            model built around ``torch.nn.Transformer``, called by the convention ``family``
            states).
        target: ``target(model, target) -> Target``: how this family reads ``target=`` (a
            :class:`~gae_utils.targets.Target` passed by the caller is used as is); ``None``: the
            family is explained only through its task's entry point (dual encoders).
        accepts: also serve any model for which ``accepts(model)`` is True (e.g. every causal LM
            routed through the attention interface).
        task: what the family serves, a key of :data:`TASKS`; the entry points dispatch on it.
        prepare: ``prepare(model, inputs) -> inputs`` before the check (a processor's dict read as
            its ``pixel_values``, a causal LM's attention mask inferred); applied twice, it
            changes nothing the second time.
        windows: ``windows(model, inputs) -> [(grid, index)]``, one per attention layer, for
            attention within windows folded into the batch (Swin): the stage's token grid and the
            ``(nW, Nw)`` raster index of each window position (:meth:`LayerRecord.with_windows`).
        images: ``images(model, inputs) -> {modality: (B, n)}``, the layers of ``modality`` run
            once per image (sites with ``per_image``): the index of each example's images in
            their batch, ``-1`` for none (:meth:`LayerRecord.per_example`).
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
    target: Callable[[nn.Module, Any], Target] | None = class_target
    accepts: Callable[[nn.Module], bool] | None = None
    task: str = "classify"
    prepare: Callable[[nn.Module, Any], Any] | None = None
    windows: Callable[[nn.Module, Any], list[tuple[tuple[int, int], Tensor]]] | None = None
    images: Callable[[nn.Module, Any], dict[str, Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"adapter {self.name!r}: unknown task {self.task!r}; one of {list(TASKS)}"
            )

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter serves ``model`` (an ``accepts`` may raise; see
        ``find_adapter``)."""
        names = {cls.__name__ for cls in type(model).__mro__}
        if any(name in names for name in self.model_classes):
            return True
        if self.contains and any(type(m).__name__ in self.contains for m in model.modules()):
            return True
        return self.accepts is not None and bool(self.accepts(model))

    def sites_of(self, model: nn.Module) -> tuple[AttentionSite, ...]:
        """The attention sites of ``model``."""
        return self.sites(model) if callable(self.sites) else self.sites

    def inputs_of(self, model: nn.Module, inputs: Any) -> Any:
        """``inputs`` as this family's ``call`` takes them (see :attr:`prepare`)."""
        return inputs if self.prepare is None else self.prepare(model, inputs)

    def target_of(self, model: nn.Module, target: Any) -> Target:
        """The :class:`~gae_utils.targets.Target` that ``target=`` means for this family."""
        if isinstance(target, Target):
            return target
        if self.target is None:
            raise ValueError(
                f"{type(model).__name__} is served by adapter {self.name!r} (task {self.task!r}); "
                f"explain it with {TASKS[self.task]}."
            )
        return self.target(model, target)
