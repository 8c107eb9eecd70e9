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
# # Exercise 03.02 · Eq. 8-11 on the first co-attention block, by hand
#
# Notebook 03 wrote the cross-attention rule as equations and ran it as a loop. Here you compute one
# co-attention block yourself: its two cross-attentions (text -> image and image -> text), from the
# maps as they were before the block, and compare with what the library's propagation produced.
#
# Setup (run it): one recording of four questions about one scene, with per-head attention and gradients
# kept, the library's maps after every step (`rec.history()`), and the first co-attention block.

# %%
import torch  # noqa: F401 (for your code)

import gae_utils as gu
from gae_utils import rules  # noqa: F401 (for your code)
from gae_utils.propagation import layer_steps
from gae_workbook import zoo
from shapesworld.inputs import vqa_inputs
from shapesworld.language import Vocabulary, questions
from shapesworld.scenes import ShapesBatch, ShapesWorld

vqa = zoo.load("shapes-vqa")
scene = next(s for s in ShapesWorld(seed=123).scenes(200) if len(s.objects) == 3)
asked = questions(scene)[:4]
x = vqa_inputs(ShapesBatch.from_scenes([scene] * len(asked)).images, asked, Vocabulary.questions())
rec = gu.record(vqa, x, keep_heads=True)

steps = layer_steps(rec.layers)  # one entry per propagation step: one layer, or the two layers of a block
history = rec.history()  # history[i][(a, b)]: the map R[a, b] after step i, (B, K, Na, Nb)
block = next(i for i, step in enumerate(steps) if len(step) == 2)  # the first co-attention block
before, after = history[block - 1], history[block]
cross = [rec.layers[n] for n in steps[block]]
for layer in cross:
    print(layer.kind, layer.query, "->", layer.key, "attn", tuple(layer.attn.shape), "grad", tuple(layer.grad.shape))

# %% [markdown]
# **Your task.**
#
# 1. Write `rbar(R)`, Eq. 8-9: subtract `I`, divide each row by its sum (a row summing to 0 stays 0),
#    add `I` back. Check it against `rules.normalize_self_relevancy` on `before[("text", "text")]` and
#    `before[("image", "image")]`.
# 2. For each layer of `cross` (queries from `s = layer.query`, keys from `q = layer.key`): its Eq. 5
#    map `A_bar = mean over heads of (grad * attn)^+` (`attn` is `(B, H, Nq, Nk)`, `grad` is
#    `(B, K, H, Nq, Nk)`), then the additions of Eq. 10 to `R[s, q]` and of Eq. 11 to `R[s, s]`, both
#    computed from `before`. Collect them in a dict `added = {(a, b): tensor}`.
# 3. Check that `before[key] + added[key]` equals `after[key]` for the four blocks written.
# 4. Two of the four additions are exactly zero. Which, and why?

# %%
# Write your code here.
