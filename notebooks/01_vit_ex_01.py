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
# # 📝 Exercise 01-1: implement Eq. 5-6 and match `gu.explain`
#
# **About 15 minutes.** In notebook 01 the from-scratch loop explained one class of one image.
# Here you explain **two classes per image for a batch of four images** in one go, and check your
# result against the library.
#
# Recall, for every layer $l$ in forward order:
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
#
# *Hints:* `layer.attn[:, None]` broadcasts the attention against the $K$ gradients; the mean over
# heads is over dimension 2 of a `(B, K, H, N, N)` tensor; start from
# `torch.eye(N).expand(B, K, N, N)`.

# %%
# Write your code here.
