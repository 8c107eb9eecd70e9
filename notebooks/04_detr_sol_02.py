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
# # Exercise 04.02 · Do duplicate detections share a map?
#
# **About 15 minutes.**
#
# DETR has no non-maximum suppression: two object queries may detect the same object. A ShapesWorld
# scene holds at most one object per class, so two detections of one class in one image are duplicates
# of one object. Are their explanations the same, and how different are the maps of two *different*
# objects?
#
# Setup (run it): every confident detection of 8 scenes, explained with GAE in one recording.

# %%
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.inputs import detr_pixels
from shapesworld.scenes import CLASS_NAMES, ShapesWorld

detr = zoo.load("shapes-detr")
pixels = detr_pixels(ShapesWorld(seed=99).batch(8).images)
rec = gu.record(detr, pixels)
relevance = rec.explanation("gae").relevance["image"]  # (B, K, 64): row of R[query, image] per detection slot
queries = rec.extra["queries"]  # (B, K) explained query per slot, -1 for an empty slot
for b, row in enumerate(queries):
    print(f"image {b}:", [CLASS_NAMES[int(rec.target[b, k])] for k, q in enumerate(row) if q >= 0])

# %% [markdown]
# **Your task.**
#
# 1. For every pair of detections of the same image, compute the cosine similarity of their relevance
#    rows (`torch.nn.functional.cosine_similarity`). Put it in `duplicates` if both detections have
#    the same class (`rec.target[b, k]`), in `different` otherwise.
# 2. Print the mean and the range of both lists. Do duplicates share a map? Why would they (what do
#    their two queries read, and which logit is explained)?

# %%
duplicates, different = [], []
for b, row in enumerate(queries):
    slots = [k for k, q in enumerate(row) if q >= 0]
    for i in slots:
        for j in slots:
            if j > i:
                cos = float(torch.nn.functional.cosine_similarity(relevance[b, i], relevance[b, j], dim=0))
                (duplicates if int(rec.target[b, i]) == int(rec.target[b, j]) else different).append(cos)
for name, values in (("duplicates", duplicates), ("different", different)):
    mean = sum(values) / len(values)
    print(f"{name:10s} {len(values):2d} pairs, mean cosine {mean:.2f}, range {min(values):.2f}-{max(values):.2f}")

# %% [markdown]
# Duplicates share most of their map: both queries read the same image tokens through cross-attention,
# and the same class logit is explained, so the gradients select the same tokens. Different objects'
# maps barely overlap. A duplicate is not a second piece of evidence; it is the same explanation twice.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your 'why' with the solution's.

# %%
# your code defines: duplicates, different (lists of cosine similarities)
expected = {"duplicates": [], "different": []}
for b, row in enumerate(queries):
    slots = [k for k, q in enumerate(row) if q >= 0]
    for i in slots:
        for j in (j for j in slots if j > i):
            cos = float(torch.nn.functional.cosine_similarity(relevance[b, i], relevance[b, j], dim=0))
            expected["duplicates" if int(rec.target[b, i]) == int(rec.target[b, j]) else "different"].append(cos)
assert sorted(duplicates) == sorted(expected["duplicates"]), "duplicates: every pair of same-class detections"
assert sorted(different) == sorted(expected["different"]), "different: every pair of detections of two classes"
assert min(duplicates) > max(different), "every duplicate pair is more alike than every pair of different objects"
print(
    f"✓ right: mean cosine of duplicates {sum(duplicates) / len(duplicates):.2f}, "
    f"of different objects {sum(different) / len(different):.2f}"
)
