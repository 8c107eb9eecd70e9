"""The methods a user would pick instead of GAE, in their own libraries' recipes, behind one signature.

Every peer is ``peer(model, pixel_values (B, 3, H, W), target (B,) long) -> (B, h, w)`` relevance,
higher = more relevant, on the CPU as float32; any user callable with that signature can sit next to
them (``PEERS["mine"] = my_method``). Installed with the ``peers`` extra (captum, grad-cam; lxt apart).

- ``integrated_gradients``: captum ``IntegratedGradients`` (Sundararajan et al. 2017), 50 steps from
  a black image, ``|sum over RGB|`` of the attribution; ``(B, H, W)``.
- ``saliency``: captum ``Saliency`` (Simonyan et al. 2014), ``max over RGB of |d logit / d x|``; ``(B, H, W)``.
- ``gradcam``: pytorch-grad-cam ``GradCAM`` with its ViT recipe (target layer: the last block's first
  LayerNorm, tokens reshaped to the patch grid, prefix tokens dropped), or for a timm
  ``SwinTransformer`` its Swin recipe (the last block's ``norm2``, tokens reshaped to the last
  stage's grid); ``(B, H, W)``, min-max normalised by the library.
- ``lxt_attnlrp``, ``lxt_cp_lrp``: LXT ships rules for torchvision's ``VisionTransformer`` only and
  ``import lxt.efficient`` fails under transformers >= 5 (it imports the removed
  ``transformers.modeling_attn_mask_utils``); both raise :class:`PeerUnavailableError` saying which.

Every peer leaves the model as it was: training mode, parameter ``.grad`` and ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["PEERS", "Peer", "PeerUnavailableError", "gradcam", "integrated_gradients", "saliency", "untouched"]

Peer = Callable[[nn.Module, Tensor, Tensor], Tensor]


class PeerUnavailableError(RuntimeError):
    """A peer cannot explain this model here (library missing or broken, model family unsupported)."""


def _require(module: str, extra: str = "peers") -> None:
    try:
        __import__(module)
    except ImportError as error:
        raise PeerUnavailableError(
            f"{module} is not importable ({error}); install the optional extra: pip install 'gae-workbook[{extra}]'"
        ) from error


@contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Run a peer on ``model`` in eval mode; restore its modes, parameter grads and ``requires_grad``."""
    modes = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    grads = [p.grad for p in params]
    flags = [p.requires_grad for p in params]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for p, grad, flag in zip(params, grads, flags):
            p.grad = grad
            p.requires_grad_(flag)


class _Logits(nn.Module):
    """``x -> (B, C)`` logits of a timm or Hugging Face image classifier (the latter returns a ModelOutput)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out if isinstance(out, Tensor) else out.logits


def _check(pixel_values: Tensor, target: Tensor) -> None:
    if pixel_values.ndim != 4 or target.shape != (pixel_values.shape[0],):
        raise ValueError(
            f"peers take pixel_values (B, C, H, W) and target (B,), got {tuple(pixel_values.shape)} and "
            f"{tuple(target.shape)}; pass one target class per image"
        )


def integrated_gradients(model: nn.Module, pixel_values: Tensor, target: Tensor, steps: int = 50) -> Tensor:
    """captum IntegratedGradients, ``|sum_c attribution|`` per pixel: ``(B, H, W)``."""
    _require("captum")
    from captum.attr import IntegratedGradients

    _check(pixel_values, target)
    with untouched(model):
        attr = IntegratedGradients(_Logits(model)).attribute(
            pixel_values, target=target, n_steps=steps, internal_batch_size=max(steps, pixel_values.shape[0])
        )  # (B, C, H, W)
    return attr.sum(1).abs().detach().float().cpu()


def saliency(model: nn.Module, pixel_values: Tensor, target: Tensor) -> Tensor:
    """captum Saliency, ``max_c |gradient|`` per pixel: ``(B, H, W)``."""
    _require("captum")
    from captum.attr import Saliency

    _check(pixel_values, target)
    with untouched(model):
        attr = Saliency(_Logits(model)).attribute(pixel_values, target=target, abs=True)  # (B, C, H, W)
    return attr.amax(1).detach().float().cpu()


def _vit_facts(model: nn.Module) -> tuple[nn.Module, int, int]:
    """(Grad-CAM target layer, prefix tokens, patch size) of a timm or Hugging Face ViT."""
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # timm VisionTransformer
        return model.blocks[-1].norm1, int(getattr(model, "num_prefix_tokens", 1)), model.patch_embed.patch_size[0]
    vit = getattr(model, "vit", None)
    if vit is not None:  # Hugging Face ViTForImageClassification (``vit.layers`` from transformers 5)
        layers = vit.layers if hasattr(vit, "layers") else vit.encoder.layer
        return layers[-1].layernorm_before, 1, int(model.config.patch_size)
    raise PeerUnavailableError(
        f"gradcam's ViT recipe knows timm VisionTransformer and Hugging Face ViT models, not {type(model).__name__}; "
        "pass your own peer callable (model, pixel_values, target) -> (B, h, w)"
    )


def _swin_facts(model: nn.Module, pixel_values: Tensor) -> tuple[nn.Module, int, int, int]:
    """pytorch-grad-cam's Swin recipe for a timm ``SwinTransformer``: the last block's second LayerNorm,
    whose ``(B, h*w, D)`` tokens lie on the last stage's grid, ``(layer, prefix 0, h, w)``."""
    block = model.layers[-1].blocks[-1]
    stride = pixel_values.shape[-2] // block.input_resolution[0]  # patch size x 2 per merge
    return block.norm2, 0, pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride


def gradcam(model: nn.Module, pixel_values: Tensor, target: Tensor) -> Tensor:
    """pytorch-grad-cam GradCAM with the ViT (or, for timm Swin, the Swin) reshape transform:
    ``(B, H, W)`` in [0, 1]."""
    _require("pytorch_grad_cam", extra="peers (grad-cam)")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _check(pixel_values, target)
    if type(model).__name__ == "SwinTransformer" and hasattr(model, "layers"):
        layer, prefix, h, w = _swin_facts(model, pixel_values)
    else:
        layer, prefix, patch = _vit_facts(model)
        h, w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch

    def reshape(tokens: Tensor) -> Tensor:  # (B, N, D) -> (B, D, h, w)
        return tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    with untouched(model):
        cam = GradCAM(model=_Logits(model), target_layers=[layer], reshape_transform=reshape)
        try:  # not ``with``: its __exit__ swallows IndexError
            maps = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(int(t)) for t in target])
        finally:
            cam.activations_and_grads.release()
    return torch.as_tensor(maps).float()  # (B, H, W)


def _lxt(rule: str) -> Peer:
    def peer(model: nn.Module, pixel_values: Tensor, target: Tensor) -> Tensor:
        if type(model).__name__ != "VisionTransformer" or not type(model).__module__.startswith("torchvision"):
            raise PeerUnavailableError(
                f"LXT {rule} ships rules for torchvision's VisionTransformer only, not {type(model).__module__}."
                f"{type(model).__name__}; port the weights to torchvision or pass your own peer callable"
            )
        _require("lxt")
        try:
            import lxt.efficient  # noqa: F401
        except ImportError as error:
            raise PeerUnavailableError(
                f"LXT {rule}: `import lxt.efficient` fails here ({error}); LXT's model patches need transformers < 5"
            ) from error
        raise PeerUnavailableError(f"LXT {rule} on torchvision ViTs is not wired into this harness yet")

    peer.__name__ = f"lxt_{rule.lower().replace('-', '_')}"
    return peer


PEERS: dict[str, Peer] = {
    "integrated_gradients": integrated_gradients,
    "saliency": saliency,
    "gradcam": gradcam,
    "lxt_attnlrp": _lxt("AttnLRP"),
    "lxt_cp_lrp": _lxt("CP-LRP"),
}
"""Peer name -> ``(model, pixel_values (B, 3, H, W), target (B,)) -> (B, h, w)`` relevance."""
