"""``explain`` and ``record``: the public entry points.

``record`` runs one forward pass of an unmodified model under an
:class:`~gae_utils.recorder.AttentionRecorder` and one backward pass per target column (the whole
batch at once), returning a :class:`Recording`. Every method of the paper's comparison set is then
computed from that one recording (:meth:`Recording.explanation`); ``explain`` does both steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .engine import compute_maps, method_names, propagate
from .explanation import Explanation
from .layout import TokenLayout
from .recorder import AttentionCaptureError, AttentionRecorder, LayerRecord, evaluating

__all__ = ["explain", "record", "Recording", "Target"]

Target = int | Sequence[int] | Tensor | Callable[[Any], Tensor] | None


@dataclass
class Recording:
    """Attention maps and their gradients from one forward/backward, ready for any method.

    Attributes:
        layers: recorded layers in forward order.
        layout: token layout of the inputs.
        logits: ``(B, C)`` model logits (detached); None for encoders without class logits.
        output: the model's raw output (detached where it is a tensor).
        target: ``(B, K)`` explained class indices, or None for a callable target.
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
    extra: dict = field(default_factory=dict)  # adapter-specific JSON-ready facts (DETR: the explained queries)

    def maps(self, method: str = "gae", start_layer: int = 0) -> dict[tuple[str, str], Tensor]:
        """Relevancy maps ``{(a, b): (B, K, Na, Nb)}`` of ``method``."""
        return compute_maps(method, self.layers, self.layout, start_layer)

    def explanation(self, method: str = "gae", start_layer: int = 0) -> Explanation:
        """The :class:`Explanation` of ``method`` (``gae``, ``gae_last_layer``, ``raw_attention``,
        ``rollout``, ``attn_gradcam``) from this recording."""
        if not 0 <= start_layer < len(self.layers):
            raise ValueError(
                f"start_layer={start_layer} is out of range: the model has {len(self.layers)} attention layers "
                f"(use 0..{len(self.layers) - 1})."
            )
        maps = self.maps(method, start_layer)
        relevance = self.layout.read(maps)  # {name: (B, K, N)}
        squeeze = (lambda t: t) if self.multi_target else (lambda t: t.squeeze(1))
        return Explanation(
            relevance={k: squeeze(v) for k, v in relevance.items()},
            maps={k: squeeze(v) for k, v in maps.items()},
            target=None if self.target is None else squeeze(self.target),
            scores=squeeze(self.scores),
            method=method,
            layout=self.layout,
            start_layer=start_layer,
            model_name=self.model_name,
            multi_target=self.multi_target,
            extra=dict(self.extra),
        )

    def scaled(self, factor: float) -> Recording:
        """The recording that explaining ``factor * score`` would give, without running the model again.

        Exact: the gradients scale by ``factor`` and Eq. 5, ``mean_h (dA * A)^+``, is positively
        homogeneous in ``dA``. GAE's sums ``I + Abar @ R`` (Eq. 6-11) are *not*: with small
        gradients the identity dominates and ``R`` is close to ``I + sum_l Abar_l`` (first order),
        with large ones the products of several layers' maps, the paths through intermediate
        tokens, carry the relevance. This is the diagnostic for that sensitivity (``--target-scale``
        of ``python -m gae_utils.evaluate``); ``rollout``, ``raw_attention`` and the ranking of
        ``attn_gradcam`` do not depend on it.
        """
        if not factor > 0:
            raise ValueError(f"factor must be positive (Eq. 5 keeps the positive part), got {factor}")
        layers = [
            replace(
                layer,
                cam=None if layer.cam is None else layer.cam * factor,
                grad=None if layer.grad is None else layer.grad * factor,
            )
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
        inputs.values() if isinstance(inputs, Mapping) else (inputs if isinstance(inputs, (tuple, list)) else [inputs])
    )
    for t in tensors:
        if isinstance(t, Tensor) and torch.is_floating_point(t) and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).flatten(1).any(dim=1).nonzero().flatten().tolist() if t.ndim > 1 else []
            raise ValueError(
                f"inputs contain NaN or Inf values (examples {bad}); clean or re-normalise them before explaining."
            )


def _resolve_target(target: Target, output: Any, logits: Tensor | None) -> tuple[Tensor | None, Tensor, bool]:
    """Turn ``target`` into ``(indices (B, K) | None, scores (B, K), multi_target)``."""
    if callable(target) and not isinstance(target, Tensor):
        scores = target(output)
        batch = logits.shape[0] if logits is not None else getattr(scores, "shape", (None,))[0]
        if not isinstance(scores, Tensor) or scores.ndim not in (1, 2) or scores.shape[0] != batch:
            raise ValueError(
                f"a callable target must return one score per example, shape (B,) or (B, K); got "
                f"{getattr(scores, 'shape', type(scores).__name__)}"
            )
        return None, scores if scores.ndim == 2 else scores[:, None], scores.ndim == 2
    if logits is None:
        raise ValueError(
            "this model has no class logits (an encoder): pass target=callable(output) -> (B,) scores, "
            "e.g. a similarity, or use gae_utils.similarity.explain_similarity for sentence pairs."
        )
    batch, num_classes = logits.shape
    if target is None:
        index = logits.argmax(dim=-1)  # (B,)
    elif isinstance(target, int):
        index = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        index = torch.as_tensor(target, device=logits.device)
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"target must hold class indices (integers), got dtype {index.dtype}")
        index = index.long()
        if index.ndim == 0:
            index = index.expand(batch)
    multi = index.ndim == 2
    if index.ndim not in (1, 2) or index.shape[0] != batch:
        raise ValueError(
            f"target of shape {tuple(index.shape)} does not fit a batch of {batch}: pass an int, a ({batch},) "
            f"tensor, or a ({batch}, K) tensor for K targets per example."
        )
    if index.numel() and (index.min() < 0 or index.max() >= num_classes):
        raise ValueError(
            f"target class {int(index.max() if index.max() >= num_classes else index.min())} is out of range: "
            f"the model has {num_classes} classes (0..{num_classes - 1})."
        )
    index = index if multi else index[:, None]  # (B, K)
    return index, logits.gather(1, index), multi


def record(
    model: nn.Module,
    inputs: Any,
    target: Target = None,
    *,
    adapter: Adapter | None = None,
    keep_heads: bool = False,
    eval_mode: bool = True,
) -> Recording:
    """Run ``model`` once, capture every attention map and its gradient for each target.

    Args:
        model: an unmodified model served by an adapter (timm ViT/DeiT, Hugging Face ViT/DeiT,
            or one you registered).
        inputs: what the adapter passes to the model (images ``(B, C, H, W)`` for ViTs).
        target: ``None`` (each example's predicted class), an ``int``, a ``(B,)`` tensor, a
            ``(B, K)`` tensor (K targets per example from one forward pass), or a callable
            ``output -> (B,)`` scores (regression, similarity, any custom scalar).
        adapter: overrides the adapter lookup.
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (the explorer's head slider).
        eval_mode: explain the model in eval mode (restored afterwards).

    Returns:
        A :class:`Recording`.
    """
    adapter = adapter or find_adapter(model)
    if adapter.token_logits is not None and not callable(target):
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder: explain its generated tokens with "
            "gae_utils.seq2seq.explain_generation(model, source_inputs, generated), "
            "or pass target=callable(output) -> (B,)."
        )
    if adapter.towers:
        raise ValueError(
            f"{type(model).__name__} is a dual encoder whose towers run on separate batches; explain it with "
            "gae_utils.dual.explain_dual(model, images, texts) (each tower on its own, target = the pair's similarity)."
        )
    _check_finite(inputs)
    adapter.check(model, inputs)
    layout = adapter.layout(model, inputs)
    with AttentionRecorder(model, adapter, keep_heads=keep_heads, eval_mode=eval_mode) as rec:
        with torch.enable_grad():
            output = adapter.call(model, inputs)
            logits = adapter.logits(output) if adapter.logits is not None else None
            if logits is not None and not torch.isfinite(logits).all():
                raise ValueError("the model produced NaN or Inf logits for these inputs; check the inputs and weights.")
            extra: dict = {}
            if adapter.targets is not None:  # the explained row depends on the target (DETR: its query)
                index, scores, multi, layout, extra = adapter.targets(model, inputs, output, target, layout)
                extra = {k: v.tolist() if isinstance(v, Tensor) else v for k, v in extra.items()}
            else:
                index, scores, multi = _resolve_target(target, output, logits)
            rec.backward(scores)
        layers = rec.complete_records()
    n_tokens = layers[0].attn_mean.shape[-1]
    if layout.segments[0].n_tokens != n_tokens:
        raise AttentionCaptureError(
            f"the adapter's layout expects {layout.segments[0].n_tokens} tokens but attention has {n_tokens}"
        )
    detached = output.detach() if isinstance(output, Tensor) else output
    logits = logits.detach() if logits is not None else None
    return Recording(layers, layout, logits, detached, index, scores.detach(), multi, type(model).__name__, extra)


def explain(
    model: nn.Module,
    inputs: Any,
    target: Target = None,
    method: str = "gae",
    start_layer: int = 0,
    *,
    adapter: Adapter | None = None,
    verify: bool = False,
    eval_mode: bool = True,
) -> Explanation:
    """Explain a transformer's decision with Generic Attention-model Explainability.

    One forward pass and one backward pass (per target column) for the whole batch; the backward
    asks only for the gradients of the attention maps, so no parameter ``.grad`` is created.
    The model is left exactly as it was (parameters, mode, fused-attention flags, hooks), also when
    the forward pass raises.

    Args:
        model: an unmodified model (see :func:`record`).
        inputs: its inputs, e.g. images ``(B, C, H, W)``.
        target: see :func:`record`.
        method: ``"gae"`` (Chefer et al. ICCV 2021), ``"gae_last_layer"``, ``"raw_attention"``,
            ``"rollout"`` or ``"attn_gradcam"``.
        start_layer: first layer aggregated by ``gae`` and ``rollout``.
        adapter: overrides the adapter lookup.
        verify: also run the stock model (fused attention, no hooks, no grad) and check that the
            hooked logits match it; raises ``AttentionCaptureError`` otherwise.
        eval_mode: explain in eval mode (dropout off); the original modes are restored.

    Returns:
        An :class:`Explanation`; ``relevance["image"]`` is ``(B, num_patches)`` raw relevance for a
        ViT (``(B, K, num_patches)`` for K targets).

    Example:
        >>> exp = explain(model, images)                 # predicted classes
        >>> exp.relevance["image"].shape                 # (B, 196) for a 224/16 ViT
        >>> exp.heatmap(224)                             # (B, 224, 224) in [0, 1]
    """
    if method not in method_names(ablations=True):
        raise ValueError(f"unknown method {method!r}; choose one of {method_names(ablations=True)}")
    adapter = adapter or find_adapter(model)
    rec = record(model, inputs, target, adapter=adapter, keep_heads=False, eval_mode=eval_mode)
    if verify:
        _verify(model, inputs, adapter, rec.logits, eval_mode)
    return rec.explanation(method, start_layer)


def _verify(model: nn.Module, inputs: Any, adapter: Adapter, hooked: Tensor, eval_mode: bool) -> None:
    with evaluating(model, eval_mode), torch.no_grad():
        stock = adapter.logits(adapter.call(model, inputs))
    tol = 1e-4 if stock.dtype in (torch.float32, torch.float64) else 1e-2
    if not torch.allclose(stock, hooked.to(stock.dtype), atol=tol, rtol=tol):
        diff = (stock - hooked).abs().max().item()
        raise AttentionCaptureError(
            f"hooked logits differ from the stock model's by {diff:.3g}: the eager path of {type(model).__name__} "
            "does not reproduce its fused path; the explanation would describe another computation."
        )
