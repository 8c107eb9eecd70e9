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
# # 📃 Solution of exercise 01-1: implement Eq. 5-6 and match `gu.explain`
#
# For every layer $l$ in forward order:
# $$\bar A_l = \mathbb{E}_h\big[(\nabla A_l \odot A_l)^+\big], \quad R_l = R_{l-1} + \bar A_l R_{l-1}, \quad R_0 = I.$$
#
# `rec.layers[l].attn` has shape $(B, H, N, N)$ and `rec.layers[l].grad` has shape
# $(B, K, H, N, N)$: one gradient per target column. The explanation of target $k$ of image $b$ is
# `R[b, k, 0, 1:]`, the CLS row without the CLS column.

# %%
import torch

import gae_utils as gu
from gae_workbook import zoo
from shapesworld.scenes import ShapesBatch, ShapesWorld

model = zoo.load("shapes-vit")
scenes = [s for s in ShapesWorld(seed=5).scenes(80) if len(s.objects) == 2][:4]
images = ShapesBatch.from_scenes(scenes).images  # (4, 3, 64, 64)
targets = torch.tensor([[o.label for o in s.objects] for s in scenes])  # (4, 2): both objects of each scene
rec = gu.record(model, images, target=targets, keep_heads=True)

# %% [markdown]
# **Task.** Compute `mine`, a tensor of shape `(4, 2, 64)`: for each image and each of its two
# targets, GAE's relevance of the 64 patches, using only `rec.layers` and `torch`. Then compare it
# with `gu.explain(model, images, target=targets).relevance["image"]`.

# %%
B, K = targets.shape
N = rec.layers[0].attn.shape[-1]  # 65 = CLS + 8 x 8 patches
R = torch.eye(N).expand(B, K, N, N)  # (B, K, N, N), R = I
for layer in rec.layers:
    A = layer.attn[:, None]  # (B, 1, H, N, N): the same attention for every target
    dA = layer.grad  # (B, K, H, N, N): one gradient per target
    attn_bar = (dA * A).clamp(min=0).mean(dim=2)  # (B, K, N, N), Eq. 5
    R = R + attn_bar @ R  # (B, K, N, N), Eq. 6
mine = R[:, :, 0, 1:]  # (B, K, 64): CLS row, patch columns
print(mine.shape)

# %% [markdown]
# The two targets of one image get different maps: the same attention, weighted by two different
# gradients. Each map's argmax should lie on its own object more often than not.

# %%
library = gu.explain(model, images, target=targets).relevance["image"]  # (B, K, 64)
print("largest difference:", float((mine - library).abs().max()))
print("the two targets' maps differ by", float((mine[:, 0] - mine[:, 1]).abs().amax(-1).min()), "at least")
assert mine.shape == (4, 2, 64)
assert torch.allclose(mine, library, atol=1e-6), "Eq. 5-6 from scratch must equal gu.explain"
