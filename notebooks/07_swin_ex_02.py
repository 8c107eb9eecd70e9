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
# # 📝 Exercise 07-2: undo the shift by hand
#
# **About 15 minutes.** The second block of each Swin stage rolls its token grid before cutting it
# into windows. To scatter a window's $\bar A$ at the right tokens, GAE needs, for every window
# position, the token it came from: `layer.windows`, `(nW, Nw)`. Here you build it yourself for
# `shapes-swin`'s second block and look at what the shift mask does to the attention.
#
# Setup (run it): `shapes-swin`, one held-out scene, recorded with every head.

# %%
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-swin")
images = ShapesWorld(seed=11).batch(1).images  # (1, 3, 64, 64)
rec = gu.record(model, images, keep_heads=True)
shifted = rec.layers[1]  # the second block: 16 x 16 grid, 4 x 4 windows, shifted by 2
print("grid", shifted.grid, "| per-window attention", tuple(shifted.attn.shape), "(B, nW, H, Nw, Nw)")

# %% [markdown]
# **Predict first** (write it down): after rolling the grid by 2 tokens up and left, which tokens
# share token 0's window? Can token 0 attend token 255 in that window?
#
# **Task.**
# 1. `my_index`, `(16, 16)` long: `tokens = torch.arange(256).view(16, 16)`, rolled by
#    `(-2, -2)` (`torch.roll`), cut into 4 x 4 windows in raster order (window $(a, b)$ holds rows
#    $4a \dots 4a+3$ and columns $4b \dots 4b+3$), each window read in raster order.
# 2. `window_of_0`: the index of the window holding token 0, and `together`: the sorted list of
#    the 16 tokens in it.
# 3. `p_0_to_255`: the largest, over heads, attention probability from token 0 to token 255 in that
#    window (`shifted.attn[0, w, :, i, j]` for the positions `i`, `j` of tokens 0 and 255).
# 4. In one sentence: why is it so small, and what does GAE do about it?

# %%
# Write your code here.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your sentence with the
# solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
assert tuple(my_index.shape) == (16, 16), "my_index is (windows, positions) = (16, 16)"
assert torch.equal(my_index.cpu(), shifted.windows.cpu()), (
    "my_index: roll by (-2, -2), then windows in raster order, each read in raster order"
)
assert window_of_0 == 15 and len(together) == 16 and together[0] == 0 and 255 in together, "token 0's window"
w = int((shifted.windows == 0).any(dim=1).nonzero())
i, j = int((shifted.windows[w] == 0).nonzero()), int((shifted.windows[w] == 255).nonzero())
assert abs(p_0_to_255 - float(shifted.attn[0, w, :, i, j].max())) < 1e-12, "p_0_to_255: the max over heads"
assert p_0_to_255 < 1e-6, "the shift mask keeps wrapped-around pairs apart"
print(f"✓ right: token 0 shares window {window_of_0} with the other corners; masked, P(0 -> 255) = {p_0_to_255:.1e}")
