"""The one owner of every hook an explanation uses (:class:`AttentionRecorder`).

Forward hooks capture each layer's attention probabilities ``A`` as the layers run; the backward
asks autograd for ``dy/dA`` only (no parameter ``.grad``) and tensor hooks reduce ``(dA * A)^+``
over heads (Eq. 5) as each gradient arrives. On exit, also after an exception, everything is restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

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
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (explorer), not only of the last layer of
            each modality pair (attention Grad-CAM).
        eval_mode: run the model in eval mode for the call; every submodule's ``training`` flag is restored.

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
        self._undo = ExitStack()  # every hook handle, flag and mode, undone in reverse order on exit
        self._target_index = 0
        self._hooks_off = False
        self._calls: dict[str, int] = {}
        self.num_modules = 0
        self._hooked: list[str] = []

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
            self._hooked = [name for name, _, _ in modules]
            self._undo.enter_context(self.adapter.eager(self.model))
            self._undo.enter_context(evaluating(self.model, self.eval_mode))
            for name, module, site in modules:
                self._undo.callback(module.register_forward_pre_hook(self._ensure_grad, with_kwargs=True).remove)
                hooked = module.get_submodule(site.probs) if isinstance(site.probs, str) else module
                self._undo.callback(hooked.register_forward_hook(self._capture_hook(name, site)).remove)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self._restore()
        return False  # never swallow an exception

    def _restore(self) -> None:
        self._undo.close()
        self._live.clear()

    @staticmethod
    def _ensure_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Let gradients reach ``A`` in a frozen model without touching its parameters: hidden states that
        carry no graph are replaced by a detached copy (same values) that requires grad."""
        if not torch.is_grad_enabled():
            return None
        if args and _needs_graph(args[0]):
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        key = next((k for k in ("hidden_states", "x", "query") if _needs_graph(kwargs.get(k))), None)
        if not args and key is not None:
            return args, {**kwargs, key: kwargs[key].detach().requires_grad_(True)}
        return None

    def _capture_hook(self, name: str, site: AttentionSite) -> Callable[..., None]:
        """Forward hook reading the probabilities as ``site.probs`` says: the hooked child's output, an
        item of the attention module's output tuple, or ``site.probs(module, output)``."""
        read = site.probs

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if isinstance(read, str):
                probs = output
            elif callable(read):
                probs = read(module, output)
            else:
                probs = output[read] if isinstance(output, (tuple, list)) else None
            self._capture(name, site, probs)

        return hook

    def _capture(self, name: str, site: AttentionSite, probs: Tensor | None) -> None:
        if not isinstance(probs, Tensor) or probs.ndim != 4:
            raise AttentionCaptureError(
                f"attention module {name!r} returned no attention probabilities (got {type(probs).__name__}); its "
                "fused/SDPA path is active, or it does not route its attention through the path the adapter switches. "
                "Load the model with attn_implementation='eager' (Hugging Face) or check the adapter's eager switch."
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
        self._undo.callback(node.register_hook(self._on_grad(live)).remove)

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

    def batched_backward(self, scores: Tensor, modality: str | None) -> None:
        """K backward passes at once (``is_grads_batched``) for the layers of one modality.

        Pass ``k`` differentiates column ``k`` of ``scores`` (a text's column of a similarity matrix, a
        generated token's logit); the K passes run as one vectorised backward, exact like K separate
        ones, and set ``attn_bar`` of the modality's layers to ``(B, K, Nq, Nk)``. The graph is kept.
        Per-head ``A`` and ``dA`` are kept as in :meth:`backward_objectives`.

        Args:
            scores: ``(B, K)`` the targets' scores, e.g. ``(B_i, B_t)`` pair logits.
            modality: whose layers to fill; ``None`` for every recorded layer (an encoder-decoder,
                whose targets depend on both modalities).
        """
        self._check_captured()
        lives = [live for live in self._live if modality is None or live.record.query == modality]
        if not lives:
            raise ValueError(f"no recorded layers of modality {modality!r}")
        self._hooks_off = True
        try:
            columns = torch.eye(scores.shape[1], dtype=scores.dtype, device=scores.device)  # (K, K)
            grads = torch.autograd.grad(
                scores,
                [live.node for live in lives],
                grad_outputs=columns[:, None, :].expand(-1, scores.shape[0], -1),  # (K, B, K): pass k, column k
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
            silent = sorted(set(self._hooked) - {r.name for r in self.records})
            raise AttentionCaptureError(
                f"captured {len(self.records)} attention maps but the model has {self.num_modules} attention modules"
                + (f"; {', '.join(silent)} captured nothing" if silent else "")
            )
        return self.records

    def backward(self, scores: Tensor) -> list[LayerRecord]:
        """Gradients of each column of ``scores`` ``(B, K)`` with respect to every captured ``A``, one backward
        pass per column for the whole batch; returns the records with ``attn_bar`` (``attn``/``grad`` where kept)."""
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
        """One backward pass per scalar objective; objective ``k`` fills target column ``k`` (exact per
        example when each example's score depends only on its own tokens).

        Args:
            objectives: K scalars.
            modalities: for each objective, the modalities whose layers need its gradient (None: all);
                the pass stops at their first maps, and other modalities' layers are left to another backward.
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
            # dy/dA = 0 at a layer no gradient reaches (LXMERT's last image->text cross-attention feeds
            # only the image stream, which the answer head never reads), so its Eq. 5 map is zero.
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
