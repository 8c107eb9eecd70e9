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
# # 📝 Exercise 07-1: sum or mean at the patch merge?
#
# **About 15 minutes.** A 2x2 patch merge turns four children into one parent, and GAE carries
# $R$ through it as $R \leftarrow P R$. Notebook 07 uses the mean ($P$'s entries 1/4); the sum
# (entries 1) is the other natural choice. Here you measure what the choice changes.
#
# Setup (run it): `shapes-swin`, four held-out scenes, the predicted class of each, recorded with
# every head (`rec`).

# %%
import torch

import gae_utils as gu
from gae_workbook.exploration import windows
from gae_workbook.models import zoo
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-swin")
images = ShapesWorld(seed=11).batch(4).images  # (4, 3, 64, 64)
rec = gu.record(model, images, keep_heads=True)
mean_map = windows.dense_gae(rec.layers)  # (4, 1, 256): GAE with the mean at the merge

# %% [markdown]
# **Predict first** (write it down): `shapes-swin` has one merge. If $P$ sums instead of averaging,
# by what factor does each entry of the explanation change? Does any heatmap change?
#
# **Task.**
# 1. `sum_map`, `(4, 1, 256)`: GAE with a summing merge. Write the loop over `rec.layers` yourself
#    (as `windows.dense_gae` does): from $R = I$ ($256 \times 256$), for each layer, if its
#    `layer.grid` is smaller than the current grid, first $R \leftarrow P R$ with
#    `windows.merge_matrix(grid, "sum")`; then Eq. 5 per window,
#    `(layer.grad * layer.attn[:, None]).clamp(min=0).mean(dim=3)`, scattered with
#    `windows.scatter_windows(..., layer.windows, n)`, and Eq. 6; finally the mean over the rows.
# 2. `ratio = sum_map / mean_map`.
# 3. `same_heatmaps`: True if the min-max normalised maps (each map minus its minimum, over its range) agree to
#    `1e-5`.
# 4. In one sentence: why does the choice not matter for GAE here, and when would it?

# %%
# Write your code here.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your sentence with the
# solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
assert sum_map.shape == mean_map.shape == (4, 1, 256), "sum_map is (images, targets, tokens) = (4, 1, 256)"
expected = windows.dense_gae(rec.layers, reduce="sum")  # the check recomputes the answer: write yours first
assert torch.allclose(sum_map, expected, rtol=1e-5), "sum_map: merge with windows.merge_matrix(grid, 'sum')"
assert torch.allclose(ratio, torch.full_like(ratio, 4.0), rtol=1e-4), "one merge: the sum is 4 times the mean"
assert same_heatmaps is True, "the min-max normalised maps are the same"
print(f"✓ right: the summing merge multiplies every entry by {float(ratio.mean()):.4f}; the heatmaps are equal")
