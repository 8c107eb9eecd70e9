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
# # 📃 Solution of exercise 06-1: one row instead of the whole matrix
#
# $$R_N = (I + \bar A_N)\cdots(I + \bar A_1), \qquad e_p^\top R_N = \Big(\big(e_p^\top (I + \bar A_N)\big)
#   (I + \bar A_{N-1})\Big)\cdots(I + \bar A_1):$$
# grouped from the left, the last layer's factor is applied first, so the row vector travels from the
# last layer to the first: $v \leftarrow v + v\,\bar A_l$ for $l = N, \dots, 1$.

# %%
import numpy as np
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.stories import draw_stories, encode_stories, story_vocabulary

lm = zoo.load("shapes-lm")
stories = draw_stories(seed=31, n=8, rng=np.random.default_rng(0))
inputs = encode_stories(stories, story_vocabulary())  # right-padded: (8, L)
rec = gu.record(lm, inputs, keep_heads=True)
last = inputs["attention_mask"].sum(1) - 1  # (B,) position p of each prompt

# %%
B, L = inputs["input_ids"].shape
e_p = torch.nn.functional.one_hot(last, L).float()  # (B, L)
v = e_p.clone()  # (B, L), row p of I
for layer in reversed(rec.layers):
    attn_bar = (layer.grad[:, 0] * layer.attn).clamp(min=0).mean(dim=1)  # (B, L, L), Eq. 5
    v = v + (v[:, None] @ attn_bar)[:, 0]  # (B, 1, L) @ (B, L, L) -> (B, L)
mine = (v - e_p) * inputs["attention_mask"]  # (B, L): row p of R - I, 0 at padding
print(mine[0])

# %% [markdown]
# The library gives the same numbers, with the full matrices (`maps=True`, the default) and with its
# own row-vector path (`maps=False`).


# %%
rows = gu.explain(lm, inputs, maps=False).relevance["text"]  # (B, L): the library's own row recursion
print("largest difference to the library's row recursion:", float((mine - rows).abs().max()))
assert torch.allclose(mine, rows, atol=1e-6)

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to the
# question with the solution's.

# %%
# your code defines: mine, (B, L)
full = gu.explain(lm, inputs).relevance["text"]  # (B, L) the library's row p of R - I
assert mine.shape == inputs["input_ids"].shape, "mine: one row of length L per prompt"
assert torch.allclose(mine * inputs["attention_mask"], mine), "mine: 0 at padding columns"
assert torch.allclose(mine, full, atol=1e-6), "the row-vector recursion must equal row p of the full product"
print(f"✓ right: {len(mine)} rows equal to gu.explain's, without any L x L relevance")
