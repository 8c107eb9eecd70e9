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
# # 📃 Solution of exercise 02-2: logit or cosine?

# %%
import numpy as np
import torch

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

dual = explain_dual(clip, pixels, texts)  # dual.logits: (B_i, B_t)

# %% [markdown]
# **Task 1.** The embeddings, normalised, give the cosine; the logit is $\tau$ times it.

# %%
tau = float(clip.logit_scale.detach().exp())
with torch.no_grad():
    out = clip(pixel_values=pixels, **texts)
cosine = out.image_embeds @ out.text_embeds.T  # (B_i, D) @ (D, B_t): unit vectors, so cosines
print(f"tau = {tau:.2f}; largest |logit - tau * cos| = {float((dual.logits - tau * cosine).abs().max()):.2e}")

# %% [markdown]
# **Task 2.** Expanding the product, $R - I = \sum_l \bar A_l + \sum_{l > m} \bar A_l \bar A_m + \dots$:
# one term per path through one, two, three, ... layers, all non-negative. Dividing the gradients
# by $\tau$ divides each $\bar A_l$ by $\tau$ (Eq. 5 is positively homogeneous), so a path through
# $k$ layers shrinks by $\tau^k$. The cosine's $R - I$ is therefore *at most* the logit's divided
# by $\tau$, and smaller where paths through several layers carry the relevance. GAE is not
# invariant to the scale of the explained scalar; the ranking of the patches can change.

# %%
rec = gu.record(clip, {"pixel_values": pixels, **texts}, gu.PairSimilarity("all"))


def image_relevance(recording: gu.Recording) -> torch.Tensor:
    """``R - I`` of the image tower, CLS row over the patches: ``(B_i, B_t, 64)``."""
    layers = [layer for layer in recording.layers if layer.query == "image"]
    R = gu.propagate(layers)[("image", "image")]  # (B_i, B_t, 65, 65)
    return R[:, :, 0, 1:]  # the patch columns of the CLS row hold no identity


logit_rel = image_relevance(rec)
cosine_rel = image_relevance(rec.scaled(1 / tau))
ratio = logit_rel.sum(-1) / cosine_rel.sum(-1)  # (B_i, B_t)
print("total patch relevance, logit / cosine, per pair:\n", ratio)

# %% [markdown]
# **Task 3.** Count the pairs whose argmax patch differs. On this four-layer model the ratio is, for most
# pairs, only a few percent above $\tau$ (the printed median; a pair whose relevance runs through several
# layers goes further): the one-layer paths dominate (each $\bar A$ is small next to $I$), so the
# most relevant patch rarely moves. The effect grows with depth and with the size of the
# gradients; notebook 03 meets a model where the choice of the explained scalar changes the answer.


# %%
changed = int((logit_rel.argmax(-1) != cosine_rel.argmax(-1)).sum())
print(f"the most relevant patch changes for {changed} of {ratio.numel()} pairs")
excess = ratio / tau - 1  # (B_i, B_t) how far the shrinking goes beyond tau
print(f"beyond tau: median {float(excess.median()):.0%}, largest {float(excess.max()):.0%}")
assert excess.median() < 0.1 and changed <= ratio.numel() // 4  # the paragraph above, checked

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your prediction (Task 2)
# with the solution's expansion of the product.

# %%
# your code defines: tau, cosine, logit_rel, cosine_rel, ratio (logit_rel.sum(-1) / cosine_rel.sum(-1)), changed
assert torch.allclose(dual.logits, tau * cosine, rtol=1e-4, atol=1e-4), "cosine: image_embeds @ text_embeds.T"
assert logit_rel.shape == cosine_rel.shape == dual.logits.shape + (64,), "the CLS row over the 64 patches, per pair"
assert (logit_rel >= tau * cosine_rel * (1 - 1e-5) - 1e-9).all(), "each path of k layers shrinks by tau**k >= tau"
assert (ratio > tau).all(), "with paths through several layers, the cosine's relevance shrinks by more than tau"
assert changed == int((logit_rel.argmax(-1) != cosine_rel.argmax(-1)).sum()), "changed: pairs whose argmax differs"
print(f"✓ right: the relevance shrinks by {float(ratio.min()):.1f} to {float(ratio.max()):.1f} (tau = {tau:.1f})")
