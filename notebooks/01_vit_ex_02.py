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
# # 📝 Exercise 01-2: which rows of the last layer's $\bar A$ are non-zero?
#
# **About 15 minutes.** `shapes-vit` has four layers; its classifier reads only the CLS token
# (token 0) after the last layer.
#
# **Predict before you run.** In the *last* layer, which rows of $\bar A = \mathbb{E}_h[(\nabla A \odot A)^+]$
# can be non-zero? Which rows can be non-zero in the first layer? Write your prediction and one
# sentence of reasoning down first.

# %%
import gae_utils as gu
from gae_workbook import zoo
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-vit")
images = ShapesWorld(seed=11).batch(6).images  # (6, 3, 64, 64)
rec = gu.record(model, images)  # the predicted class of each image

# %% [markdown]
# **Task 1.** From `rec.layers[-1].attn_bar` (shape $(B, K, N, N)$), compute `nonzero_rows`: the
# sorted list of row indices that are non-zero in *any* image of the batch. Do the same for the
# first layer. Was your prediction right? Why?
#
# **Task 2.** `rec.explanation("gae", start_layer=3)` aggregates only the last layer. Which other
# method of `gu.method_names()` gives exactly the same relevance on this model? Check it with
# `torch.allclose`.

# %%
# Write your code here.
