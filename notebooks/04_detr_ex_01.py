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
# # Exercise 04.01 · Which blocks of `R` does each DETR layer change?
#
# **About 15 minutes.**
#
# `shapes-detr` records six attention layers: two encoder self-attentions (image -> image), then per
# decoder layer a self-attention (query -> query) and a cross-attention (query -> image). GAE keeps four
# maps, `R[image, image]`, `R[image, query]`, `R[query, image]`, `R[query, query]`.
#
# **Predict first**, with the rules of notebooks 03-04 (Eq. 6-7 for self-attention, Eq. 10-11 for
# cross-attention, starting from `R = I` on the diagonal blocks and 0 elsewhere): which blocks does
# each layer *change* (an addition that is exactly zero changes nothing)? Then check with the library.
#
# Setup (run it):

# %%
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.inputs import detr_pixels
from shapesworld.scenes import ShapesWorld

detr = zoo.load("shapes-detr")
pixels = detr_pixels(ShapesWorld(seed=99).batch(4).images)
rec = gu.record(detr, pixels)  # every confident detection of the 4 images
for i, layer in enumerate(rec.layers):
    print(i, layer.kind, layer.query, "->", layer.key)
history = rec.history()  # history[i][(a, b)]: the map R[a, b] after layer i, (B, K, Na, Nb)
start = {
    key: torch.eye(value.shape[-1]).expand_as(value) if key[0] == key[1] else torch.zeros_like(value)
    for key, value in history[0].items()
}  # the maps before the first layer

# %% [markdown]
# **Your task.**
#
# 1. Write `predicted`: a list with one set per layer, the blocks (as `(row, column)` tuples such as
#    `("query", "image")`) you expect that layer to change.
# 2. Compute `changed`, the same list from `start` and `history`: a block changed at layer `i` if its map
#    after layer `i` is not exactly equal (`torch.equal`) to the map before it.
# 3. Compare. Why does no layer ever change `R[image, query]`, and why does the cross-attention never
#    change `R[query, query]` although Eq. 11 writes it?

# %%
# Write your code here.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to question 3
# with the solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: predicted, changed
expected = []
for i, after in enumerate(history):
    before = start if i == 0 else history[i - 1]
    expected.append({key for key in after if not torch.equal(after[key], before[key])})
assert changed == expected, "changed: the blocks whose map after layer i is not torch.equal to the map before it"
wrong = [i for i, (p, e) in enumerate(zip(predicted, expected)) if p != e]
assert not wrong, f"your prediction is wrong at layers {wrong}: which blocks can Eq. 7 and Eq. 11 change there?"
print("✓ right: every layer changes exactly the blocks you predicted")
