"""The one owner of every hook an explanation uses (:class:`AttentionRecorder`).

Forward hooks capture each layer's attention probabilities ``A`` in the order the layers run;
the backward asks autograd for ``dy/dA`` only, tensor hooks reduce ``(dA * A)^+`` over heads
(Eq. 5) as each gradient arrives, and no parameter ``.grad`` is created. On exit (also after an
exception) every hook, flag, mode and handle is restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .adapters import Adapter, AttentionCaptureError, AttentionSite, attention_modules
from .records import LayerRecord, last_of_each_pair
from .rules import head_average

__all__ = ["AttentionRecorder", "AttentionCaptureError", "evaluating"]


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


@dataclass
class _CapturedMap:
    """A captured probability tensor still attached to the autograd graph."""

    record: LayerRecord
    probs: Tensor  # (B, H, Nq, Nk)
    keep_heads: bool
    node: Tensor  # the tensor the model computed with: ``probs``, or the base ``probs`` is a later view of
    attn_bars: list[Tensor | None] = field(default_factory=list)
    grads: list[Tensor | None] = field(default_factory=list)


def _needs_graph(x: Any) -> bool:
    return isinstance(x, Tensor) and torch.is_floating_point(x) and not x.requires_grad


class AttentionRecorder:
    """Context manager owning the hooks, flags and mode of one explanation.

    Args:
        model: the unmodified model.
        adapter: the adapter describing where its attention lives.
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (explorer); otherwise only of
            the last layer of each modality (attention Grad-CAM needs it).
        eval_mode: run the model in eval mode (dropout off) for the call; the original
            ``training`` flag of every submodule is restored afterwards.

    Example:
        >>> with AttentionRecorder(model, adapter) as rec:
        ...     out = model(x)
        ...     rec.backward(out[:, [3]])          # (B, K) scores
        >>> rec.records                             # list[LayerRecord], in forward order
    """

    def __init__(self, model: nn.Module, adapter: Adapter, keep_heads: bool = False, eval_mode: bool = True):
        self.model = model
        self.adapter = adapter
        self.keep_heads = keep_heads
        self.eval_mode = eval_mode
        self.records: list[LayerRecord] = []
        self._live: list[_CapturedMap] = []
        self._handles: list[RemovableHandle] = []
        self._tensor_handles: list[Any] = []
        self._exits: list[Any] = []
        self._target_index = 0
        self._hooks_off = False
        self._calls: dict[str, int] = {}
        self.num_modules = 0

    # ------------------------------------------------------------------ context management
    def __enter__(self) -> AttentionRecorder:
        try:
            modules = attention_modules(self.model, self.adapter)
            if not modules:
                raise AttentionCaptureError(
                    f"{type(self.model).__name__} matched adapter {self.adapter.name!r} but has no module of "
                    f"class {[s.module_class for s in self.adapter.sites_of(self.model)]}; the adapter's sites do "
                    "not describe this model. Register an adapter whose sites name its attention modules."
                )
            self.num_modules = sum(len(site.calls) if site.calls else 1 for _, _, site in modules)  # captures expected
            switch = self.adapter.eager(self.model)
            switch.__enter__()
            self._exits.append(switch)
            modes = evaluating(self.model, self.eval_mode)
            modes.__enter__()
            self._exits.append(modes)
            for name, module, site in modules:
                self._handles.append(module.register_forward_pre_hook(self._ensure_grad, with_kwargs=True))
                if isinstance(site.probs, str):
                    child = module.get_submodule(site.probs)
                    self._handles.append(child.register_forward_hook(self._capture_output(name, site)))
                else:
                    self._handles.append(module.register_forward_hook(self._capture_item(name, site)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self._restore()
        return False  # never swallow an exception

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        for handle in self._tensor_handles:
            handle.remove()
        self._handles.clear()
        self._tensor_handles.clear()
        while self._exits:
            self._exits.pop().__exit__(None, None, None)
        self._live.clear()

    # ------------------------------------------------------------------ forward hooks
    @staticmethod
    def _ensure_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Let gradients reach ``A`` in a frozen model without touching ``requires_grad`` of parameters.

        If the hidden states entering the attention module carry no graph (all parameters frozen,
        input not requiring grad), they are replaced by a detached copy that requires grad: the
        same values, so the output is unchanged.
        """
        if not torch.is_grad_enabled():
            return None
        if args and _needs_graph(args[0]):
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        key = next((k for k in ("hidden_states", "x", "query") if _needs_graph(kwargs.get(k))), None)
        if not args and key is not None:
            return args, {**kwargs, key: kwargs[key].detach().requires_grad_(True)}
        return None

    def _capture_output(self, name: str, site: AttentionSite) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._capture(name, site, output)

        return hook

    def _capture_item(self, name: str, site: AttentionSite) -> Callable[..., None]:
        read = site.probs
        assert not isinstance(read, str)  # child-module sites are hooked by _capture_output

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if callable(read):
                probs = read(module, output)
            else:
                probs = output[read] if isinstance(output, (tuple, list)) else None
            self._capture(name, site, probs)

        return hook

    def _capture(self, name: str, site: AttentionSite, probs: Tensor | None) -> None:
        if not isinstance(probs, Tensor) or probs.ndim != 4:
            raise AttentionCaptureError(
                f"attention module {name!r} returned no attention probabilities (got "
                f"{type(probs).__name__}); its fused/SDPA path is active, or it does not route its attention "
                "through the path the adapter switches. Load the model with attn_implementation='eager' "
                "(Hugging Face) or check the adapter's eager switch."
            )
        kind, query, key, group = site.kind, site.query, site.key, site.group
        if site.calls:  # one module called several times per forward, each call a different direction
            n = self._calls.get(name, 0)
            self._calls[name] = n + 1
            query, key = site.calls[n % len(site.calls)]
            kind = "self" if query == key else "cross"
            group = f"{name}#{n // len(site.calls)}" if group == "module" else group
        record = LayerRecord(name, kind, query, key, group, probs.detach().mean(dim=1))
        self.records.append(record)
        if not probs.requires_grad:
            return  # forward under no_grad: nothing to differentiate
        node = probs
        if site.graph_base:  # torch's MultiheadAttention returns a view made after its bmm read the base
            if probs._base is None or probs._base.numel() != probs.numel():
                raise AttentionCaptureError(
                    f"attention module {name!r} returned probabilities that are not a view of the tensor it "
                    "computed with; the adapter's site (graph_base=True) does not describe this module."
                )
            node = probs._base  # (B*H, Nq, Nk)
        live = _CapturedMap(record, probs, self.keep_heads, node)
        self._live.append(live)
        self._tensor_handles.append(node.register_hook(self._on_grad(live)))

    def _on_grad(self, live: _CapturedMap) -> Callable[..., None]:
        def hook(grad: Tensor) -> None:
            if self._hooks_off:
                return  # a batched (vmapped) backward reads its gradients itself
            k = self._target_index
            grad = grad.reshape(live.probs.shape)  # (B, H, Nq, Nk)
            live.attn_bars[k] = head_average(live.probs.detach(), grad)  # (B, Nq, Nk)
            if live.keep_heads:
                live.grads[k] = grad.detach()

        return hook

    # ------------------------------------------------------------------ backward
    def batched_backward(self, output: Tensor, grad_outputs: Tensor, modality: str | None) -> None:
        """K backward passes at once (``is_grads_batched``) for the layers of one modality.

        ``grad_outputs[k]`` selects target ``k`` (e.g. one column of a similarity matrix, or one
        generated token's logit); the K passes run as one vectorised backward, exact like K
        separate ones. Sets ``cam`` of the modality's layers to ``(B, K, Nq, Nk)``. The graph is
        kept for later backward passes. Per-head ``A`` and ``dA`` are kept for the last layer of
        each (query, key) pair (attention Grad-CAM) and, with ``keep_heads``, for every layer.

        Args:
            output: the tensor the targets are read from, e.g. ``(B_i, B_t)`` logits.
            grad_outputs: ``(K, *output.shape)``.
            modality: whose layers to fill; ``None`` for every recorded layer (an encoder-decoder,
                whose targets depend on both modalities).
        """
        self._check_captured()
        lives = [live for live in self._live if modality is None or live.record.query == modality]
        if not lives:
            raise ValueError(f"no recorded layers of modality {modality!r}")
        self._hooks_off = True
        try:
            grads = torch.autograd.grad(
                output,
                [live.node for live in lives],
                grad_outputs=grad_outputs,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,  # a layer the targets do not reach gets dy/dA = 0
            )
        finally:
            self._hooks_off = False
        last = last_of_each_pair([c.record for c in lives])
        for i, (live, grad) in enumerate(zip(lives, grads)):
            grad = grad.reshape(grad.shape[0], *live.probs.shape)  # (K, B, H, Nq, Nk)
            attn_bar = head_average(live.probs.detach().unsqueeze(0), grad)  # (K, B, Nq, Nk)
            live.record.attn_bar = attn_bar.transpose(0, 1)  # (B, K, Nq, Nk)
            if i in last or live.keep_heads:
                live.record.attn = live.probs.detach()
                live.record.grad = grad.transpose(0, 1)  # (B, K, H, Nq, Nk)

    def _check_captured(self) -> None:
        if not self.records:
            raise AttentionCaptureError(
                f"no attention probabilities were captured from {type(self.model).__name__}: the forward "
                "pass did not run any hooked attention module."
            )
        if len(self._live) != len(self.records):
            raise AttentionCaptureError(
                "attention was captured without a graph; call the model with gradients enabled."
            )

    def complete_records(self) -> list[LayerRecord]:
        """The records, after checking that every hooked attention call was captured once."""
        if len(self.records) != self.num_modules:
            raise AttentionCaptureError(
                f"captured {len(self.records)} attention maps but the model has {self.num_modules} attention modules"
            )
        return self.records

    def backward(self, scores: Tensor) -> list[LayerRecord]:
        """Gradients of each target column with respect to every captured ``A``.

        Args:
            scores: ``(B, K)`` one scalar per example and target. One backward pass per target
                column serves the whole batch.

        Returns:
            The records, with ``cam`` (and ``attn``/``grad`` where kept) filled in.
        """
        self._check_captured()
        if not scores.requires_grad:
            raise AttentionCaptureError("the target score does not depend on the model's attention (no graph).")
        if scores.ndim != 2:
            raise ValueError(f"scores must be (B, K), got {tuple(scores.shape)}")
        batch = self.records[0].attn_mean.shape[0]
        if scores.shape[0] != batch:
            raise AttentionCaptureError(  # e.g. windowed attention (Swin): one map per window, not per example
                f"scores have {scores.shape[0]} rows but the attention maps a batch of {batch}: the model attends "
                "within windows or per image, which the adapter's token layout does not describe"
            )
        return self.backward_objectives([scores[:, k].sum() for k in range(scores.shape[1])])

    def backward_objectives(
        self, objectives: list[Tensor], modalities: list[set[str] | None] | None = None
    ) -> list[LayerRecord]:
        """One backward pass per scalar objective; objective ``k`` fills target column ``k``.

        Exact per example when each example's score depends only on that example's tokens (a
        batch of independent inputs, or the two sentences of one pair): the gradient of the sum
        with respect to example ``i``'s attention is then the gradient of its own score.

        Args:
            objectives: K scalars.
            modalities: for each objective, the modalities whose layers need its gradient (None:
                all). The backward pass then stops at those modalities' first maps, so a dual
                encoder's image target does not pay for a backward through the text tower. Layers
                of other modalities get zeros in that column.
        """
        self._check_captured()
        n_targets = len(objectives)
        modalities = modalities or [None] * n_targets
        for live in self._live:
            live.attn_bars = [None] * n_targets
            live.grads = [None] * n_targets
        for i in last_of_each_pair([c.record for c in self._live]):
            self._live[i].keep_heads = True
        first_of = {live.record.query: live.node for live in reversed(self._live)}  # first map of each modality
        for k, objective in enumerate(objectives):
            self._target_index = k
            wanted = modalities[k]
            roots = [probs for m, probs in first_of.items() if wanted is None or m in wanted]
            torch.autograd.grad(objective, roots, retain_graph=k < n_targets - 1, allow_unused=True)
        requested = (
            None if any(m is None for m in modalities) else set().union(*(m for m in modalities if m is not None))
        )
        if not any(c is not None for live in self._live for c in live.attn_bars):
            raise AttentionCaptureError(
                "no gradient reached any recorded attention map: the target does not depend on the captured "
                "attention (a capture site outside the computation that produced the target?)"
            )
        for live in self._live:
            if requested is not None and live.record.query not in requested:
                continue  # filled by another backward (e.g. batched_backward) or not asked for
            # A layer no gradient reaches does not influence the target (LXMERT's last image->text
            # cross-attention feeds only the image stream, which the answer head never reads):
            # dy/dA = 0 there, so its Eq. 5 map is zero.
            live.record.reached = any(c is not None for c in live.attn_bars)
            zeros = torch.zeros_like(live.record.attn_mean)
            bars = [bar if bar is not None else zeros for bar in live.attn_bars]
            live.record.attn_bar = torch.stack(bars, dim=1)  # (B, K, Nq, Nk)
            if live.keep_heads:
                live.record.attn = live.probs.detach()
                zero_grad = torch.zeros_like(live.probs)
                live.record.grad = torch.stack([g if g is not None else zero_grad for g in live.grads], dim=1)
        self._live.clear()
        return self.records
