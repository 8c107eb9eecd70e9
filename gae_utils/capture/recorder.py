"""The one owner of every hook an explanation uses (:class:`AttentionRecorder`).

Forward hooks capture each layer's attention probabilities ``A`` as the layers run;
:meth:`AttentionRecorder.differentiate` then asks autograd for ``dy/dA`` only (no parameter
``.grad``) and reduces ``(dA * A)^+`` over heads (Eq. 5). Every piece of state lives on the
instance; on exit, also after an exception, every hook, flag, mode and registry entry is undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from ..layers import LayerRecord, last_of_each_pair
from ..rules import head_average
from .sites import (
    AttentionCaptureError,
    AttentionSite,
    ChildOutput,
    FromInterface,
    OutputItem,
    attention_modules,
)
from .switches import evaluating, interface_capture

__all__ = ["AttentionRecorder", "CaptureSpec", "Gradients"]


class CaptureSpec(Protocol):
    """What the recorder needs from an adapter: where attention lives and how to switch it on."""

    @property
    def name(self) -> str: ...

    @property
    def eager(self) -> Callable[[nn.Module], Any]: ...

    def sites_of(self, model: nn.Module) -> tuple[AttentionSite, ...]: ...


@dataclass(frozen=True)
class Gradients:
    """Scores ``(B_m, K_m)`` whose column ``k`` the layers of ``modality`` explain as target ``k``.

    Attributes:
        scores: still attached to the graph; ``B_m`` is the batch of the modality's layers.
        modality: whose layers (``None``: every recorded layer).
        vectorised: the K columns may run as one vectorised backward (``is_grads_batched``: every op
            between the scores and the maps supports vmap); else one backward pass per column.
    """

    scores: Tensor
    modality: str | None = None
    vectorised: bool = False


@dataclass
class _Captured:
    """A captured probability tensor still attached to the autograd graph."""

    record: LayerRecord
    probs: Tensor  # (B, H, Nq, Nk)
    node: Tensor  # the tensor the model computed with: ``probs``, or the base it is a view of


def _needs_graph(x: Any) -> bool:
    return isinstance(x, Tensor) and torch.is_floating_point(x) and not x.requires_grad


class AttentionRecorder:
    """Context manager owning the hooks, flags, registry entries and mode of one explanation.

    Args:
        model: the unmodified model.
        adapter: where its attention lives (an :class:`~gae_utils.adapters.Adapter`).
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (explorer), not only of the last
            layer of each modality pair (attention Grad-CAM).
        eval_mode: run the model in eval mode for the call; every ``training`` flag is restored.

    Example:
        >>> with AttentionRecorder(model, adapter) as rec:
        ...     out = model(x)
        ...     rec.backward(out[:, [3]])          # (B, K) scores
        >>> rec.records                             # list[LayerRecord], in forward order
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: CaptureSpec,
        keep_heads: bool = False,
        eval_mode: bool = True,
    ):
        self.model = model
        self.adapter = adapter
        self.keep_heads = keep_heads
        self.eval_mode = eval_mode
        self.records: list[LayerRecord] = []
        self.num_modules = 0
        self._live: list[_Captured] = []
        self._undo = ExitStack()  # every hook, flag, mode and registry entry, undone in reverse
        self._calls: dict[str, int] = {}  # module name -> calls so far (modules called repeatedly)
        self._interface: dict[nn.Module, list[Tensor]] = {}  # probabilities the interface computed
        self._hooked: list[str] = []

    def __enter__(self) -> AttentionRecorder:
        try:
            sites = self.adapter.sites_of(self.model)
            modules = attention_modules(self.model, sites)
            if not modules:
                raise AttentionCaptureError(
                    f"{type(self.model).__name__} matched adapter {self.adapter.name!r} but has no "
                    f"module of class {[s.module_class for s in sites]}; the adapter's sites do "
                    "not describe this model. Register an adapter whose sites name its attention "
                    "modules."
                )
            self.num_modules = sum(len(site.calls) if site.calls else 1 for _, _, site in modules)
            self._hooked = [name for name, _, _ in modules]
            self._undo.enter_context(self.adapter.eager(self.model))
            if any(isinstance(site.probs, FromInterface) for _, _, site in modules):
                keep = lambda module, probs: self._interface.setdefault(module, []).append(probs)
                self._undo.enter_context(interface_capture(self.model, keep))
            self._undo.enter_context(evaluating(self.model, self.eval_mode))
            for name, module, site in modules:
                pre = module.register_forward_pre_hook(self._ensure_grad, with_kwargs=True)
                self._undo.callback(pre.remove)
                child = site.probs.name if isinstance(site.probs, ChildOutput) else ""  # "": itself
                hook = self._capture_hook(name, site)
                self._undo.callback(module.get_submodule(child).register_forward_hook(hook).remove)
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
        self._interface.clear()

    @staticmethod
    def _ensure_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Let gradients reach ``A`` in a frozen model without touching its parameters: hidden
        states that carry no graph are replaced by a detached copy (same values) that requires
        grad."""
        if not torch.is_grad_enabled():
            return None
        if args and _needs_graph(args[0]):
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        key = next(
            (k for k in ("hidden_states", "x", "query") if _needs_graph(kwargs.get(k))), None
        )
        if not args and key is not None:
            return args, {**kwargs, key: kwargs[key].detach().requires_grad_(True)}
        return None

    def _capture_hook(self, name: str, site: AttentionSite) -> Callable[..., None]:
        """Forward hook reading the probabilities as the site's reader says."""
        reader = site.probs

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            probs: Any
            if isinstance(reader, ChildOutput):
                probs = output
            elif isinstance(reader, OutputItem):
                probs = output[reader.index] if isinstance(output, (tuple, list)) else None
            elif isinstance(reader, FromInterface):
                probs = self._interface_probs(module)
            else:
                probs = reader.fn(module, output)
            self._capture(name, site, probs)

        return hook

    def _interface_probs(self, module: nn.Module) -> Tensor | None:
        """The probabilities the capturing function kept for this module's call (None: not
        called)."""
        calls = self._interface.pop(module, [])
        if len(calls) > 1:
            raise AttentionCaptureError(
                f"{type(module).__name__} called attention {len(calls)} times in one forward (per "
                "image or window); this layout is not supported by the generic adapter yet."
            )
        return calls[0] if calls else None

    def _capture(self, name: str, site: AttentionSite, probs: Tensor | None) -> None:
        if not isinstance(probs, Tensor) or probs.ndim != 4:
            raise AttentionCaptureError(
                f"attention module {name!r} returned no attention probabilities (got "
                f"{type(probs).__name__}); its fused/SDPA path is active, or it does not route its "
                "attention through the path the adapter switches. Load the model with "
                "attn_implementation='eager' (Hugging Face) or check the adapter's eager switch."
            )
        kind, query, key, group = site.kind, site.query, site.key, site.group
        if site.calls:  # one module called several times per forward, each call a direction
            n = self._calls.get(name, 0)
            self._calls[name] = n + 1
            query, key = site.calls[n % len(site.calls)]
            kind = "self" if query == key else "cross"
            group = f"{name}#{n // len(site.calls)}" if site.group_per_cycle else group
        record = LayerRecord(name, kind, query, key, group, probs.detach().mean(dim=1))
        self.records.append(record)
        if not probs.requires_grad:
            return  # forward under no_grad: nothing to differentiate
        node = probs
        if site.graph_base:  # torch's MultiheadAttention returns a view made after its bmm
            if probs._base is None or probs._base.numel() != probs.numel():
                raise AttentionCaptureError(
                    f"attention module {name!r} returned probabilities that are not a view of the "
                    "tensor it computed with; the adapter's site (graph_base=True) does not "
                    "describe this module."
                )
            node = probs._base  # (B*H, Nq, Nk)
        self._live.append(_Captured(record, probs, node))

    def _check_captured(self) -> None:
        if not self.records:
            raise AttentionCaptureError(
                f"no attention probabilities were captured from {type(self.model).__name__}: the "
                "forward pass did not run any hooked attention module."
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
                f"captured {len(self.records)} attention maps but the model has "
                f"{self.num_modules} attention modules"
                + (f"; {', '.join(silent)} captured nothing" if silent else "")
            )
        return self.records

    def backward(self, scores: Tensor) -> list[LayerRecord]:
        """Eq. 5 maps of every captured layer for each column of ``scores`` ``(B, K)``, one backward
        pass per column for the whole batch (:meth:`differentiate` with one :class:`Gradients`)."""
        return self.differentiate([Gradients(scores)])

    def differentiate(self, parts: Sequence[Gradients]) -> list[LayerRecord]:
        """Fill ``attn_bar`` ``(B, K, Nq, Nk)`` (Eq. 5: ``mean_h (dA * A)^+``) of the layers of each
        part; per-head ``attn``/``grad`` are kept for the last layer of each modality pair, or for
        every layer with ``keep_heads``. The one place that decides how gradients are taken."""
        self._check_captured()
        for i, part in enumerate(parts):
            scores = part.scores
            if not scores.requires_grad:
                raise AttentionCaptureError(
                    "the target score does not depend on the model's attention (no graph)."
                )
            if scores.ndim != 2:
                raise ValueError(f"scores must be (B, K), got {tuple(scores.shape)}")
            lives = [c for c in self._live if part.modality in (None, c.record.query)]
            if not lives:
                raise ValueError(f"no recorded layers of modality {part.modality!r}")
            batch = lives[0].record.attn_mean.shape[0]
            windowed = any(s.windowed for s in self.adapter.sites_of(self.model))
            per_image = any(s.per_image for s in self.adapter.sites_of(self.model))
            folded = per_image or (windowed and batch % scores.shape[0] == 0)
            if scores.shape[0] != batch and not folded:
                raise AttentionCaptureError(  # one map per window or image, sites not windowed
                    f"scores have {scores.shape[0]} rows but the attention maps a batch of "
                    f"{batch}: the model attends within windows or per image, which the adapter's "
                    "token layout does not describe"
                )
            keep = set(last_of_each_pair([c.record for c in lives]))
            keep = set(range(len(lives))) if self.keep_heads else keep
            if part.vectorised:
                self._vectorised(scores, lives, keep)
            else:
                self._per_column(scores, lives, keep, free_graph=i == len(parts) - 1)
        return self.records

    @staticmethod
    def _vectorised(scores: Tensor, lives: list[_Captured], keep: set[int]) -> None:
        """K backward passes as one vectorised backward (``is_grads_batched``), exact like K
        separate ones: pass ``k`` differentiates column ``k`` of ``scores`` ``(B, K)``."""
        columns = torch.eye(scores.shape[1], dtype=scores.dtype, device=scores.device)  # (K, K)
        grads = torch.autograd.grad(
            scores,
            [c.node for c in lives],
            grad_outputs=columns[:, None, :].expand(-1, scores.shape[0], -1),  # (K, B, K)
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,  # a layer the targets do not reach gets dy/dA = 0
        )
        for i, (live, grad) in enumerate(zip(lives, grads)):
            grad = grad.reshape(grad.shape[0], *live.probs.shape)  # (K, B, H, Nq, Nk)
            attn_bar = head_average(live.probs.detach().unsqueeze(0), grad)  # (K, B, Nq, Nk)
            live.record.attn_bar = attn_bar.transpose(0, 1)  # (B, K, Nq, Nk)
            if i in keep:
                live.record.attn = live.probs.detach()
                live.record.grad = grad.transpose(0, 1)  # (B, K, H, Nq, Nk)

    @staticmethod
    def _per_column(
        scores: Tensor, lives: list[_Captured], keep: set[int], free_graph: bool
    ) -> None:
        """One backward pass per column of ``scores`` ``(B, K)`` (exact per example when each
        example's score depends only on its own tokens). The pass stops at the first map of each
        modality; tensor hooks, removed after each pass, reduce each ``dA`` as it arrives."""
        n = scores.shape[1]
        bars: list[list[Tensor | None]] = [[None] * n for _ in lives]  # (B, Nq, Nk) per column
        heads: list[list[Tensor | None]] = [[None] * n for _ in lives]  # (B, H, Nq, Nk) per column

        def on_grad(i: int, k: int) -> Callable[[Tensor], None]:
            def hook(grad: Tensor) -> None:
                grad = grad.reshape(lives[i].probs.shape)  # (B, H, Nq, Nk)
                bars[i][k] = head_average(lives[i].probs.detach(), grad)  # (B, Nq, Nk)
                if i in keep:
                    heads[i][k] = grad.detach()

            return hook

        roots = list({c.record.query: c.node for c in reversed(lives)}.values())
        for k in range(n):
            handles = [c.node.register_hook(on_grad(i, k)) for i, c in enumerate(lives)]
            try:
                retain = not free_graph or k < n - 1
                torch.autograd.grad(
                    scores[:, k].sum(), roots, retain_graph=retain, allow_unused=True
                )
            finally:
                for handle in handles:
                    handle.remove()
        if not any(bar is not None for row in bars for bar in row):
            raise AttentionCaptureError(
                "no gradient reached any recorded attention map: the target does not depend on the "
                "captured attention (a capture site outside the computation that produced the "
                "target?)"
            )
        for i, live in enumerate(lives):
            # dy/dA = 0 at a layer no gradient reaches (LXMERT's last image->text cross-attention
            # feeds only the image stream, which the answer head never reads): a zero Eq. 5 map.
            live.record.reached = any(bar is not None for bar in bars[i])
            zeros = torch.zeros_like(live.record.attn_mean)
            live.record.attn_bar = torch.stack([b if b is not None else zeros for b in bars[i]], 1)
            if i in keep:
                live.record.attn = live.probs.detach()
                zero = torch.zeros_like(live.probs)
                live.record.grad = torch.stack([g if g is not None else zero for g in heads[i]], 1)
