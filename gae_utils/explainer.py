"""``explain`` and ``record``: the public entry points.

``record`` runs an unmodified model once under an :class:`~gae_utils.capture.AttentionRecorder`
and differentiates each target, returning a :class:`Recording` from which every method of the
comparison set is computed (:meth:`Recording.explanation`); ``explain`` does both steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .capture import AttentionCaptureError, AttentionRecorder, evaluating
from .explanation import Explanation
from .layers import LayerRecord
from .layout import TokenLayout
from .methods import METHODS, check_method, compute_maps
from .plotting import class_names, pixel_normalization
from .propagation import attn_bar_of, check_start_layer, propagate, propagate_rows
from .rules import carry_through_tower
from .targets import Target, TargetLike

__all__ = ["explain", "record", "Recording", "with_input_tokens"]


@dataclass
class Recording:
    """Attention maps and their gradients from one forward/backward, ready for any method.

    Attributes:
        layers: recorded layers in forward order.
        layout: token layout of the inputs.
        logits: the adapter's reading of the output, detached (``(B, C)`` class logits,
            ``(B, T, V)`` next-token logits, ``(B_i, B_t)`` pair similarities, ...); None for
            encoders without a head.
        output: the model's raw output (tensors detached).
        target: ``(B, K)`` explained indices (classes, tokens), or None (callable and similarity
            targets).
        scores: ``(B, K)`` the explained scalars.
        multi_target: True when the caller asked for K targets per example.
        model_name: class name of the model.
    """

    layers: list[LayerRecord]
    layout: TokenLayout
    logits: Tensor | None
    output: Any
    target: Tensor | None
    scores: Tensor
    multi_target: bool
    model_name: str
    # JSON-ready facts of the target (DETR: the explained queries)
    extra: dict = field(default_factory=dict)
    labels: dict[int, str] | None = field(default=None, repr=False)  # class names (plots)
    normalization: dict[str, list[float]] | None = None  # the inputs' mean and std (plots)

    def maps(self, method: str = "gae", start_layer: int = 0) -> dict[tuple[str, str], Tensor]:
        """Relevancy maps ``{(a, b): (B, K, Na, Nb)}`` of ``method``."""
        return compute_maps(method, self.layers, self.layout, start_layer)

    def explanation(
        self, method: str = "gae", start_layer: int = 0, maps: bool = True
    ) -> Explanation:
        """The :class:`Explanation` of ``method`` (a name of :data:`~gae_utils.methods.METHODS`);
        ``maps=False`` (GAE, each modality's self-attention stack) computes only the explained rows
        of ``R``, no maps."""
        norm = METHODS[method].tower_norm if method in METHODS else True  # Eq. 8-9 on R_v
        carry = partial(carry_through_tower, normalize=norm)
        if maps:
            full = self.maps(method, start_layer)
            relevance = self.layout.read(full, carry)
        elif method == "gae":
            check_start_layer(start_layer, len(self.layers))
            windowed = self.layers[-1].windows is not None  # Swin: last stage -> first stage

            def rows_of(modality: str, rows: Tensor) -> Tensor:  # one modality's layers: v^T R
                if windowed:  # every stage's merges; Eq. 6 from start_layer
                    return propagate_rows(self.layers, rows, start_layer)
                own = [r for r in self.layers[start_layer:] if r.query == modality]
                return propagate_rows(own, rows) if own else rows

            relevance = self.layout.read_rows(
                rows_of, attn_bar_of(self.layers[-1]), carry, across=windowed
            )
            full = {}
        else:
            raise ValueError(
                f"maps=False computes GAE's rows only; method {method!r} needs maps=True"
            )
        squeeze = (lambda t: t) if self.multi_target else (lambda t: t.squeeze(1))
        return Explanation(
            relevance={k: squeeze(v) for k, v in relevance.items()},
            maps={key: squeeze(v) for key, v in full.items()},
            target=None if self.target is None else squeeze(self.target),
            scores=squeeze(self.scores),
            method=method,
            layout=self.layout,
            start_layer=start_layer,
            model_name=self.model_name,
            multi_target=self.multi_target,
            extra=dict(self.extra),
            labels=self.labels,
            normalization=self.normalization,
        )

    def scaled(self, factor: float) -> Recording:
        """The recording that explaining ``factor * score`` would give, without running the model
        again.

        Exact, as Eq. 5 is positively homogeneous in ``dA``; GAE's sums ``I + Abar @ R`` (Eq. 6-11)
        are not (small gradients: ``R ~ I + sum_l Abar_l``; large ones: products of layers' maps),
        hence this diagnostic.
        """
        if not factor > 0:
            raise ValueError(
                f"factor must be positive (Eq. 5 keeps the positive part), got {factor}"
            )

        def scale(t: Tensor | None) -> Tensor | None:
            return None if t is None else t * factor

        layers = [
            replace(layer, attn_bar=scale(layer.attn_bar), grad=scale(layer.grad))
            for layer in self.layers
        ]
        return replace(self, layers=layers, scores=self.scores * factor)

    def history(self, start_layer: int = 0) -> list[dict[tuple[str, str], Tensor]]:
        """GAE relevancy maps after each layer: ``history[l][(a, b)]`` is ``(B, K, Na, Nb)``."""
        steps: list[dict[tuple[str, str], Tensor]] = []
        propagate(self.layers, start_layer=start_layer, history=steps)
        return steps


def _check_finite(inputs: Any) -> None:
    tensors = (
        inputs.values()
        if isinstance(inputs, Mapping)
        else (inputs if isinstance(inputs, (tuple, list)) else [inputs])
    )
    for t in tensors:
        if isinstance(t, Tensor) and t.ndim and t.shape[0] == 0:
            raise ValueError(
                f"the batch is empty (inputs of shape {tuple(t.shape)}): pass at least one example"
            )
        if isinstance(t, Tensor) and torch.is_floating_point(t) and not torch.isfinite(t).all():
            bad = []  # the examples holding a non-finite value (none named for a 1-D input)
            if t.ndim > 1:
                bad = (~torch.isfinite(t)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"inputs contain NaN or Inf values (examples {bad}); clean or re-normalise them "
                "before explaining."
            )


def _detached(output: Any) -> Any:
    """The output with its tensors detached, so that a kept recording holds no autograd graph."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, Mapping):  # Hugging Face ModelOutput
        try:
            return type(output)(**{k: _detached(v) for k, v in output.items()})
        except TypeError:
            return {k: _detached(v) for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(v) for v in output)
    return output


def _check_token_counts(layers: list[LayerRecord], layout: TokenLayout) -> None:
    """Every recorded layer's size must match the layout's segment of its modality."""
    sizes = {s.modality: s.n_tokens for s in layout.segments if s.stream is None}
    for layer in layers:
        for modality, n in zip((layer.query, layer.key), layer.attn_mean.shape[-2:]):  # Nq, Nk
            if modality in sizes and sizes[modality] != n:
                raise AttentionCaptureError(
                    f"the adapter's layout expects {sizes[modality]} {modality} tokens but "
                    f"attention layer {layer.name!r} has {n}"
                )


def record(
    model: nn.Module,
    inputs: Any,
    target: TargetLike | Target = None,
    *,
    adapter: Adapter | None = None,
    keep_heads: bool = False,
    eval_mode: bool = True,
) -> Recording:
    """Run ``model`` once, capture every attention map and its gradient for each target.

    The one recording skeleton: every entry point runs through it with its own
    :class:`~gae_utils.targets.Target`.

    Args:
        model: an unmodified model served by an adapter (see ``gae_utils.adapters.ADAPTERS``).
        inputs: what the adapter passes to the model (images ``(B, C, H, W)`` for ViTs).
        target: ``None`` (each example's predicted class), an ``int``, a ``(B,)`` tensor, a
            ``(B, K)`` tensor (K targets per example), a callable ``logits -> (B,)`` or ``(B, K)``
            (any score of the logits of what is explained, in every family: see
            :class:`~gae_utils.targets.ScoreTarget`), or a :class:`~gae_utils.targets.Target`;
            the adapter says how its family reads it (DETR: queries).
        adapter: overrides the adapter lookup.
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (the explorer's head slider).
        eval_mode: explain the model in eval mode (restored afterwards).
    """
    adapter = adapter or find_adapter(model)
    target = adapter.target_of(model, target)
    inputs = adapter.inputs_of(model, inputs)
    _check_finite(inputs)
    adapter.check(model, inputs)
    layout = adapter.layout(model, inputs)
    with AttentionRecorder(model, adapter, keep_heads=keep_heads, eval_mode=eval_mode) as rec:
        with torch.enable_grad():
            output = adapter.call(model, inputs)
            logits = adapter.logits(output) if adapter.logits is not None else None
            if logits is not None and not torch.isfinite(logits).all():
                raise ValueError(
                    "the model produced NaN or Inf logits for these inputs; check the inputs and "
                    "weights."
                )
            selection = target.select(model, inputs, output, logits, layout)
            rec.differentiate(selection.parts())
        layers = rec.complete_records()
    if adapter.windows is not None:  # windows folded into the batch: per-window maps per example
        stages = adapter.windows(model, inputs)  # one (grid, (nW, Nw) index) per layer
        batch = selection.scores.shape[0]
        for layer, (_, idx) in zip(layers, stages):
            if layer.attn_mean.shape != (batch * idx.shape[0], idx.shape[1], idx.shape[1]):
                raise AttentionCaptureError(
                    f"layer {layer.name!r} has maps {tuple(layer.attn_mean.shape)} but the "
                    f"adapter's windows give {batch} x {idx.shape[0]} windows of {idx.shape[1]} "
                    "tokens: its window layout does not describe this model; fix its windows()"
                )
        layers = [layer.with_windows(idx, grid) for layer, (grid, idx) in zip(layers, stages)]
    if adapter.images is not None:  # images folded into the batch: block-diagonal per example
        images = adapter.images(model, inputs)  # {modality: (B, n)}
        layers = [r.per_example(images[r.query]) if r.query in images else r for r in layers]
    _check_token_counts(layers, selection.layout)
    return Recording(
        layers=layers,
        layout=selection.layout,
        logits=None if logits is None else logits.detach(),
        output=_detached(output),
        target=selection.index,
        scores=selection.scores.detach(),
        multi_target=selection.multi_target,
        model_name=type(model).__name__,
        extra=selection.extra,
        labels=class_names(model),
        normalization=pixel_normalization(model),
    )


def explain(
    model: nn.Module,
    inputs: Any,
    target: TargetLike | Target = None,
    method: str = "gae",
    start_layer: int = 0,
    *,
    adapter: Adapter | None = None,
    verify: bool = False,
    eval_mode: bool = True,
    maps: bool = True,
    tokenizer: Any = None,
) -> Explanation:
    """Explain a transformer's decision with Generic Attention-model Explainability.

    One forward pass and one backward pass per target column for the whole batch; no parameter
    ``.grad`` is created and the model is left exactly as it was, also when the forward pass raises.

    Args:
        model: an unmodified model (see :func:`record`).
        inputs: its inputs, e.g. float images ``(B, C, H, W)`` or a processor's ``BatchFeature``.
        target: see :func:`record`.
        method: ``"gae"`` (Chefer et al. ICCV 2021) or another name of
            :data:`~gae_utils.methods.METHODS`.
        start_layer: first layer aggregated by ``gae`` and ``rollout``.
        adapter: overrides the adapter lookup.
        verify: also run the stock model (its own attention path, no hooks, no grad) and check that
            the explained scores match the captured run's; raises ``AttentionCaptureError``
            otherwise.
        eval_mode: explain in eval mode (dropout off); the original modes are restored.
        maps: keep the full relevancy maps; ``False`` computes only the explained rows (GAE on a
            single-modality self-attention stack; long prompts), see :meth:`Recording.explanation`.
        tokenizer: text given as a dict with ``input_ids`` (causal LMs, text encoders) keeps the
            id of each token in ``exp.token_ids["text"]`` (``token_mask``: the attention mask);
            a tokenizer (Hugging Face, a list of token strings, or a callable ids -> strings)
            also fills ``exp.tokens["text"]``, per example without padding, for ``exp.plot()``.
            Tokens can be attached later with :meth:`Explanation.with_tokens`.

    Returns:
        An :class:`Explanation`; ``relevance["image"]`` is ``(B, num_patches)`` raw relevance for a
        ViT (``(B, K, num_patches)`` for K targets).
    """
    check_method(method)
    adapter = adapter or find_adapter(model)
    target = adapter.target_of(model, target)
    inputs = adapter.inputs_of(model, inputs)
    rec = record(model, inputs, target, adapter=adapter, eval_mode=eval_mode)
    if verify:
        _verify(model, inputs, adapter, target, rec.scores, eval_mode)
    exp = rec.explanation(method, start_layer, maps=maps)
    if adapter.task == "causal_lm":
        exp.extra["target_is_token"] = True  # the next token's id
    return with_input_tokens(exp, inputs, tokenizer)


def with_input_tokens(exp: Explanation, inputs: Any, tokenizer: Any = None) -> Explanation:
    """``exp`` holding the inputs' ``input_ids`` as the tokens of ``relevance["text"]`` (with
    their strings when a tokenizer is given), when that relevance has one column per id."""
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else None
    text = exp.relevance.get("text")
    if isinstance(ids, Tensor) and text is not None and text.shape[-1] == ids.shape[-1]:
        return exp.with_token_ids(ids, inputs.get("attention_mask"), tokenizer)
    if tokenizer is not None:
        raise ValueError(
            f"tokenizer= names the tokens of relevance['text'], one per input id, but this "
            f"{exp.model_name} explanation has relevance {sorted(exp.relevance)} for inputs "
            "without matching 'input_ids'; leave tokenizer out"
        )
    return exp


def _verify(
    model: nn.Module, inputs: Any, adapter: Adapter, target: Target, hooked: Tensor, eval_mode: bool
) -> None:
    """The explained scores (not all logits: fully masked padding rows differ between eager and
    fused attention) of the stock model, with its own attention path, must equal the captured
    run's."""
    with evaluating(model, eval_mode), torch.no_grad():
        output = adapter.call(model, inputs)
        logits = adapter.logits(output) if adapter.logits is not None else None
        stock = target.select(model, inputs, output, logits, adapter.layout(model, inputs)).scores
    tol = 1e-4 if stock.dtype in (torch.float32, torch.float64) else 1e-2
    if stock.shape != hooked.shape or not torch.allclose(
        stock, hooked.to(stock.dtype), atol=tol, rtol=tol
    ):
        diff = (stock - hooked).abs().max().item() if stock.shape == hooked.shape else float("nan")
        raise AttentionCaptureError(
            f"the explained scores differ from the stock model's by {diff:.3g}: the eager path of "
            f"{type(model).__name__} does not reproduce its own attention path; the explanation "
            "would describe another computation."
        )
