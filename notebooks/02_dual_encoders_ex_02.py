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
# # 📝 Exercise 02-2: logit or cosine?
#
# **About 15 minutes.** CLIP scores a pair by a logit $y = \tau \cos(e_\text{image}, e_\text{text})$
# with a learned $\tau$ = `clip.logit_scale.exp()`. Notebook 02 explains the logit. What would
# explaining the cosine change?

# %%
import numpy as np

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

dual = explain_dual(clip, pixels, texts)  # dual.logits: (B_i, B_t)

# %% [markdown]
# **Task 1.** Compute the cosine of every (image, caption) pair from the embeddings (run
# `clip(pixel_values=pixels, **texts)` without gradients; its `image_embeds` and `text_embeds` are
# L2-normalised) and check that `dual.logits` equals $\tau$ times it.
#
# **Task 2.** Explaining $y / \tau$ instead of $y$ multiplies every gradient $\nabla A$ by $1/\tau$.
# `rec.scaled(1 / tau)` gives that recording without running the model again (record with
# `gu.record(clip, {"pixel_values": pixels, **texts}, gu.PairSimilarity("all"))`). Compute the image
# tower's $R - I$ (CLS row, patch columns) for the logit and for the cosine
# (`gu.propagate(image_layers)[("image", "image")]` applies Eq. 5-6 to a list of layers).
#
# *Predict before you compute:* is the cosine's relevance the logit's divided by $\tau$? Smaller
# than that? Larger? Why? (Hint: expand $R = (I + \bar A_L) \cdots (I + \bar A_1)$.)
#
# **Task 3.** For how many pairs does the most relevant patch change?

# %%
# Write your code here.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your prediction (Task 2)
# with the solution's expansion of the product.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: tau, cosine, logit_rel, cosine_rel, ratio (logit_rel.sum(-1) / cosine_rel.sum(-1)), changed
assert torch.allclose(dual.logits, tau * cosine, rtol=1e-4, atol=1e-4), "cosine: image_embeds @ text_embeds.T"
assert logit_rel.shape == cosine_rel.shape == dual.logits.shape + (64,), "the CLS row over the 64 patches, per pair"
assert (logit_rel >= tau * cosine_rel * (1 - 1e-5) - 1e-9).all(), "each path of k layers shrinks by tau**k >= tau"
assert (ratio > tau).all(), "with paths through several layers, the cosine's relevance shrinks by more than tau"
assert changed == int((logit_rel.argmax(-1) != cosine_rel.argmax(-1)).sum()), "changed: pairs whose argmax differs"
print(f"✓ right: the relevance shrinks by {float(ratio.min()):.1f} to {float(ratio.max()):.1f} (tau = {tau:.1f})")
