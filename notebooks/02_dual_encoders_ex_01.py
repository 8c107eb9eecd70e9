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
# # 📝 Exercise 02-1: the per-tower rule from scratch
#
# **About 15 minutes.** A dual encoder's two towers never attend to each other. Notebook 02 says
# that GAE then reduces to Eq. 5-6 in each tower, and that Eq. 7,
# $R[i,t] \leftarrow R[i,t] + \bar A\,R[i,t]$, never adds anything. Check both claims.
#
# `gu.record(clip, {"pixel_values": ..., **texts}, gu.PairSimilarity("all"), keep_heads=True)`
# records every layer of both towers for every (image, caption) pair:
# - image-tower layers (`layer.query == "image"`): `attn` $(B_i, H, 65, 65)$, `grad`
#   $(B_i, B_t, H, 65, 65)$: one target column per caption;
# - text-tower layers (`layer.query == "text"`): `attn` $(B_t, H, N_t, N_t)$, `grad`
#   $(B_t, B_i, H, N_t, N_t)$: one target column per image.

# %%
import numpy as np

import gae_utils as gu
from gae_utils.dual import explain_dual
from gae_workbook.models import zoo
from shapesworld.inputs import encode_captions, normalize_pixels
from shapesworld.language import Vocabulary, all_captions, negative_caption
from shapesworld.scenes import ShapesBatch, ShapesWorld

clip = zoo.load("shapes-clip")
scenes = [s for s in ShapesWorld(seed=3).scenes(40) if len(s.objects) == 2][:2]
captions = [c for s in scenes for c in all_captions(s)[:2]] + [negative_caption(scenes[0], np.random.default_rng(1))]
ids, mask = encode_captions(captions, Vocabulary.captions())  # (B_t, N_t)
texts = {"input_ids": ids, "attention_mask": mask}
pixels = normalize_pixels(ShapesBatch.from_scenes(scenes).images)  # (B_i, 3, 64, 64)

rec = gu.record(clip, {"pixel_values": pixels, **texts}, gu.PairSimilarity("all"), keep_heads=True)
reference = explain_dual(clip, pixels, texts)

# %% [markdown]
# **Task 1.** With only `rec.layers` and `torch`, compute
# - `image_rel`, shape $(B_i, B_t, 64)$: for each pair, the CLS row of the image tower's $R$ over
#   the 64 patches; compare with `reference.image.relevance["image"]`;
# - `text_rel`, shape $(B_t, B_i, N_t)$: for each pair, the EOT row of the text tower's $R$ (all
#   columns); the EOT token of caption $j$ sits at `mask[j].sum() - 1`. Compare with
#   `reference.text.relevance["text"]`.
#
# **Task 2.** Start $R[i,t]$ at zero, shape $(B_i, B_t, 65, N_t)$, and apply Eq. 7 with every
# image-tower layer (here the text tokens of caption $j$ are the columns of target column $j$).
# What is it after the last layer?

# %%
# Write your code here.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to Task 2's
# question with the solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: image_rel, text_rel, R_it
assert image_rel.shape == reference.image.relevance["image"].shape, "image_rel: (B_i, B_t, 64)"
assert torch.allclose(image_rel, reference.image.relevance["image"], atol=1e-5), (
    "image_rel: the CLS row of the image tower's R, patch columns 1:"
)
assert torch.allclose(text_rel, reference.text.relevance["text"], atol=1e-5), (
    "text_rel: the EOT row (mask[j].sum() - 1) of the text tower's R, all columns"
)
assert R_it.abs().max() == 0, "R_it: Eq. 7 multiplies a map that starts at 0, so it must stay 0"
print("✓ right: both towers match explain_dual, and R[image, text] stays exactly 0")
