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
# # Solution of exercise 03.02 · The second co-attention block: what Eq. 11 and Eq. 8-9 change
#
# **About 25 minutes.** Notebook 03 showed that at the *first* co-attention block Eq. 11 adds nothing,
# because the streams are not yet connected. Here you look at the **second** block: predict, compute
# one addition yourself, then change a rule (leave out the normalisation of Eq. 8-9) and say what moves.
#
# Setup (run it): one recording of four questions about one scene, with per-head attention and gradients
# kept, the library's maps after every step (`rec.history()`), and the second co-attention block.

# %%
import torch

import gae_utils as gu
from gae_utils import rules
from gae_utils.propagation import layer_steps
from gae_workbook.models import zoo
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
blocks = [i for i, step in enumerate(steps) if len(step) == 2]  # the co-attention blocks
block = blocks[1]  # the second one
before, after = history[block - 1], history[block]
text_to_image = next(rec.layers[n] for n in steps[block] if rec.layers[n].query == "text")
print("second block: step", block, "| text -> image layer: attn", tuple(text_to_image.attn.shape))
print("R[image, text] before the block is non-zero:", bool(before[("image", "text")].any()))

# %% [markdown]
# **Predict first** (write it down): at this block, does Eq. 11, $R^{tt} \mathrel{+}= \bar A\, R^{it}$,
# still add nothing? And if Eq. 10 used $R^{tt}$ and $R^{ii}$ as they are, without Eq. 8-9, would its
# addition to $R^{ti}$ be larger or smaller? (Hint: how large is the context part $R^{tt} - I$ here?)
#
# **Your task.**
#
# 1. `A_bar`: Eq. 5 for `text_to_image`, mean over heads of `(grad * attn)^+`, shape `(B, K, Nt, Ni)`.
# 2. `eq11_text`: the Eq. 11 addition to `R[text, text]`, from the maps `before` the block. In a
#    co-attention block only Eq. 11 writes `R[text, text]`, so it must equal
#    `after[("text", "text")] - before[("text", "text")]`.
# 3. `eq10`, `eq10_no_norm`: the Eq. 10 additions to `R[text, image]` with and without Eq. 8-9
#    (`rules.cross_attention_update(r_sq, r_ss, r_qq, r_qs, A_bar, normalize=...)` returns
#    `(addition to R[s, q], addition to R[s, s])`), and `ratio = eq10_no_norm.sum() / eq10.sum()`.
# 4. One sentence: why is the ratio on the side of 1 that it is? What does Eq. 8-9 do to a context part
#    that sums to a few hundredths?

# %%
A_bar = (text_to_image.grad * text_to_image.attn[:, None]).clamp(min=0).mean(2)  # Eq. 5: (B, K, Nt, Ni)
eq11_text = A_bar @ before[("image", "text")]  # Eq. 11: (B, K, Nt, Nt)
maps = before[("text", "image")], before[("text", "text")], before[("image", "image")], before[("image", "text")]
eq10, _ = rules.cross_attention_update(*maps, A_bar)  # Eq. 10 with Eq. 8-9
eq10_no_norm, _ = rules.cross_attention_update(*maps, A_bar, normalize=False)  # Eq. 10 on the raw self maps
ratio = eq10_no_norm.sum() / eq10.sum()
context = (before[("text", "text")] - torch.eye(before[("text", "text")].shape[-1])).sum(-1)  # (B, K, Nt)
print(f"Eq. 11 adds up to {float(eq11_text.abs().max()):.1e} to R[text, text]")
print(f"context part of R[text, text] (row sums of R - I): at most {float(context.max()):.3f}")
print(f"Eq. 10 without Eq. 8-9 adds {float(ratio):.2f} times what it adds with them")
assert ratio < 1 and context.max() < 0.5  # the paragraph below, checked

# %% [markdown]
# Eq. 11 is no longer zero: the first block wrote `R[image, text]`, so relevance now comes back into the
# text stream's own map through the image. Without Eq. 8-9 Eq. 10 adds less here (the ratio printed
# above is below 1): the context part of the self maps sums to well below 1 per row (printed), so
# $R^{ss}$ is close to $I$ and the addition is close to $\bar A$ alone. Eq. 9 rescales each row's context to sum
# 1, so the tokens a word drew on get as much weight as the word itself, whatever the size of the
# gradients.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your sentence with the
# solution's.

# %%
expected_bar = (text_to_image.grad * text_to_image.attn[:, None]).clamp(min=0).mean(2)
assert torch.allclose(A_bar, expected_bar), "A_bar: Eq. 5, the mean over the head axis (dim 2 of grad)"
assert torch.allclose(eq11_text, after[("text", "text")] - before[("text", "text")], atol=1e-6), (
    "eq11_text: A_bar @ before[('image', 'text')]"
)
assert eq11_text.abs().max() > 0, "at the second block R[image, text] is no longer 0, so Eq. 11 adds something"
assert torch.allclose(eq10, after[("text", "image")] - before[("text", "image")], atol=1e-6), "eq10: normalize=True"
check, _ = rules.cross_attention_update(
    before[("text", "image")],
    before[("text", "text")],
    before[("image", "image")],
    before[("image", "text")],
    A_bar,
    normalize=False,
)
assert torch.allclose(eq10_no_norm, check, atol=1e-6), "eq10_no_norm: the same call with normalize=False"
assert abs(float(ratio) - float(eq10_no_norm.sum() / eq10.sum())) < 1e-6, "ratio = eq10_no_norm.sum() / eq10.sum()"
print(
    f"✓ right: Eq. 11 adds up to {float(eq11_text.abs().max()):.1e}; without Eq. 8-9 Eq. 10 adds {float(ratio):.2f} x"
)
