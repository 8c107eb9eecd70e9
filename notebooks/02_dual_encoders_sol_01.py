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
# # 📃 Solution of exercise 02-1: the per-tower rule from scratch

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

rec = gu.record(clip, {"pixel_values": pixels, **texts}, gu.PairSimilarity("all"), keep_heads=True)
reference = explain_dual(clip, pixels, texts)


# %% [markdown]
# **Task 1.** The same loop as in notebook 01, once per tower. The image tower's target columns
# are the captions, the text tower's are the images.


# %%
def gae(layers: list) -> torch.Tensor:
    """Eq. 5-6 over a list of self-attention layers: ``R`` of shape ``(B, K, N, N)``."""
    b, k = layers[0].grad.shape[:2]
    n = layers[0].attn.shape[-1]
    R = torch.eye(n).expand(b, k, n, n)  # (B, K, N, N)
    for layer in layers:
        attn_bar = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(dim=2)  # (B, K, N, N), Eq. 5
        R = R + attn_bar @ R  # Eq. 6
    return R


image_layers = [layer for layer in rec.layers if layer.query == "image"]
text_layers = [layer for layer in rec.layers if layer.query == "text"]
R_ii = gae(image_layers)  # (B_i, B_t, 65, 65)
R_tt = gae(text_layers)  # (B_t, B_i, N_t, N_t)
image_rel = R_ii[:, :, 0, 1:]  # (B_i, B_t, 64): CLS row, patch columns
eot = mask.sum(-1) - 1  # (B_t,) position of each caption's end-of-text token
text_rel = R_tt[torch.arange(len(eot)), :, eot]  # (B_t, B_i, N_t): EOT row of each caption
print("image tower, largest difference:", float((image_rel - reference.image.relevance["image"]).abs().max()))
print("text tower, largest difference: ", float((text_rel - reference.text.relevance["text"]).abs().max()))

# %% [markdown]
# **Task 2.** $R[i,t]$ starts at zero and Eq. 7 multiplies it by $(I + \bar A)$ at every image
# layer: zero stays zero. Only a cross-attention layer (Eq. 10) could write this block, and a dual
# encoder has none. That is why the towers can be explained separately.


# %%
n_text = ids.shape[1]
R_it = torch.zeros(*R_ii.shape[:2], R_ii.shape[-1], n_text)  # (B_i, B_t, 65, N_t)
for layer in image_layers:
    attn_bar = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(dim=2)  # (B_i, B_t, 65, 65)
    R_it = R_it + attn_bar @ R_it  # Eq. 7
print("largest entry of R[image, text]:", float(R_it.abs().max()))

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to Task 2's
# question with the solution's.

# %%
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
