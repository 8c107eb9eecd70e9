# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---


# %% [markdown]
# # 📝 Exercise 01-1: take the gradient out of Eq. 5 and see what moves
#
# **About 20 minutes.** Notebook 01 says the gradient in Eq. 5 is what makes GAE class-specific:
# the same attention, explained for two different classes, gives two different maps. Here you change
# that rule and measure what it changes.
#
# Setup (run it): four scenes with two objects each, both classes explained (`targets`, `(4, 2)`),
# and `object_patches`, `(4, 2, 64)`: which of the 64 patches hold pixels of each target's object.

# %%
import torch

import gae_utils as gu
from gae_workbook.evaluation.metrics import masks_to_grid
from gae_workbook.models import zoo
from shapesworld.scenes import ShapesBatch, ShapesWorld

model = zoo.load("shapes-vit")
scenes = [s for s in ShapesWorld(seed=5).scenes(80) if len(s.objects) == 2][:4]
batch = ShapesBatch.from_scenes(scenes)
images = batch.images  # (4, 3, 64, 64)
targets = torch.tensor([[o.label for o in s.objects] for s in scenes])  # (4, 2): both objects of each scene
object_patches = torch.stack(
    [masks_to_grid(batch.masks[b, targets[b]], (8, 8)).flatten(1) for b in range(len(scenes))]
)  # (4, 2, 64) bool
rec = gu.record(model, images, target=targets, keep_heads=True)


def on_own_object(relevance: torch.Tensor) -> float:
    """Share of the (image, target) maps whose most relevant patch lies on the target's own object."""
    return object_patches.gather(-1, relevance.argmax(-1, keepdim=True)).float().mean().item()


# %% [markdown]
# **Predict first** (write it down): if Eq. 5 used the attention alone, $\bar A = \mathbb{E}_h[A]$, with
# no gradient and no positive part, would the two targets of one image still get different maps? Would
# the maps land on their own object more or less often than GAE's?
#
# **Task.**
# 1. `gae`: GAE's relevance, `(4, 2, 64)` (`gu.explain(model, images, target=targets)`).
# 2. `no_gradient`: the same Eq. 6 loop over `rec.layers` (`R = R + attn_bar @ R` from `R = I`, CLS row
#    without its own column), with `attn_bar = layer.attn.mean(dim=1)` broadcast to both targets.
#    Shapes: `layer.attn` is `(B, H, N, N)`, `layer.grad` is `(B, K, H, N, N)`.
# 3. `share_gae`, `share_no_gradient`: `on_own_object(...)` of each.
# 4. In one sentence: what did taking the gradient out change, and why?

# %%
# Write your code here.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your sentence with the
# solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
assert gae.shape == no_gradient.shape == (4, 2, 64), "both maps are (images, targets, patches) = (4, 2, 64)"
assert torch.allclose(gae, gu.explain(model, images, target=targets).relevance["image"]), "gae: use gu.explain"
assert torch.allclose(no_gradient[:, 0], no_gradient[:, 1]), (
    "without the gradient nothing in Eq. 5-6 depends on the target: both targets must get the same map"
)
expected = torch.eye(65).expand(4, 2, 65, 65)
for layer in rec.layers:  # the check recomputes the answer: write yours first
    expected = expected + layer.attn.mean(dim=1)[:, None] @ expected
assert torch.allclose(no_gradient, expected[:, :, 0, 1:], atol=1e-5), (
    "no_gradient: attn_bar = layer.attn.mean(dim=1), the same for both targets; keep Eq. 6 and the CLS-row readout"
)
assert abs(share_gae - on_own_object(gae)) < 1e-9 and abs(share_no_gradient - on_own_object(no_gradient)) < 1e-9
assert share_gae > share_no_gradient, "GAE's maps land on their own object more often"
print(f"✓ right: on their own object, GAE {share_gae:.0%} of the maps, without the gradient {share_no_gradient:.0%}")
