"""GAE as a captum-style attribution object, for code written against captum or Quantus:
``GAEAttribution(model).attribute(images, target=labels)`` or
``quantus.PixelFlipping(...)(model, x, y, explain_func=GAEAttribution.quantus_explain)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .explainer import explain
from .heatmaps import upsample_maps

__all__ = ["GAEAttribution"]


class GAEAttribution:
    """``attribute(inputs, target)`` of captum's ``Attribution`` for any method of
    :data:`gae_utils.METHODS`.

    The output is ``(B, 1, H, W)``: the raw relevance on the patch grid upsampled bilinearly to the
    input's ``H, W``, one channel (Quantus' layout; ``.expand_as(inputs)`` gives captum's).

    Args:
        forward_func: the model (captum's name for it), unmodified and served by an adapter.
        method: a method name (``"gae"``, ``"rollout"``, ...).
        start_layer: passed to :func:`gae_utils.explain`.
    """

    def __init__(self, forward_func: nn.Module, method: str = "gae", start_layer: int = 0):
        self.forward_func = forward_func
        self.method = method
        self.start_layer = start_layer

    def has_convergence_delta(self) -> bool:
        """GAE has no completeness delta (captum's API)."""
        return False

    def attribute(
        self, inputs: Tensor, target: int | list[int] | Tensor | None = None, **_: Any
    ) -> Tensor:
        """Relevance of ``inputs`` ``(B, C, H, W)`` for ``target`` (None: the predicted class):
        ``(B, 1, H, W)``; a 1-tuple ``(inputs,)``, as captum's metrics pass it, gives a 1-tuple
        back."""
        if isinstance(inputs, tuple) and len(inputs) == 1:
            return (self.attribute(inputs[0], target),)
        if not isinstance(inputs, Tensor) or inputs.ndim != 4:
            raise ValueError(
                "inputs must be a (B, C, H, W) tensor, got "
                f"{getattr(inputs, 'shape', type(inputs))}"
            )
        if isinstance(target, (list, tuple)):
            target = torch.as_tensor(target, dtype=torch.long, device=inputs.device)
        if isinstance(target, Tensor) and target.ndim > 1:
            raise ValueError(
                f"one target class per image: target must be (B,), got {tuple(target.shape)}"
            )
        explanation = explain(
            self.forward_func, inputs, target, method=self.method, start_layer=self.start_layer
        )
        grid = explanation.grid_relevance().detach().float()  # (B, h, w)
        return upsample_maps(grid, (inputs.shape[-2], inputs.shape[-1]))[:, None]  # (B, 1, H, W)

    @staticmethod
    def quantus_explain(
        model: nn.Module, inputs: Any, targets: Any, method: str = "gae", **kwargs: Any
    ) -> Any:
        """Quantus' ``explain_func(model, inputs, targets, **kwargs)``: numpy in, ``(B, 1, H, W)``
        numpy out."""
        device = next(model.parameters()).device
        x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
        t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
        start_layer = int(kwargs.get("start_layer", 0))
        return GAEAttribution(model, method, start_layer).attribute(x, target=t).cpu().numpy()
