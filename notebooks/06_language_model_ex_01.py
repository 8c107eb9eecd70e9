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
# # 📝 Exercise 06-1: one row instead of the whole matrix
#
# **About 15 minutes.** For a stack of self-attention layers, Eq. 6 gives
# $$R_N = (I + \bar A_N)(I + \bar A_{N-1})\cdots(I + \bar A_1).$$
# A causal LM's explanation needs only row $p$ of $R_N$ (the last real token). Row $p$ is
# $e_p^\top R_N$, with $e_p$ the one-hot row vector of position $p$, so it can be computed as a row
# vector carried **from the last layer to the first**:
# $$v \leftarrow e_p^\top, \qquad v \leftarrow v + v\,\bar A_l \quad (l = N, N-1, \dots, 1),$$
# $N$ vector-matrix products instead of $N$ matrix-matrix products, and no $L \times L$ relevance kept:
# what makes long prompts cheap.
#
# `rec.layers[l].attn` is $(B, H, L, L)$, `rec.layers[l].grad` is $(B, K, H, L, L)$ (here $K = 1$).

# %%
import numpy as np
import torch  # noqa: F401 (you will need it)

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.stories import draw_stories, encode_stories, story_vocabulary

lm = zoo.load("shapes-lm")
stories = draw_stories(seed=31, n=8, rng=np.random.default_rng(0))
inputs = encode_stories(stories, story_vocabulary())  # right-padded: (8, L)
rec = gu.record(lm, inputs, keep_heads=True)
last = inputs["attention_mask"].sum(1) - 1  # (B,) position p of each prompt

# %% [markdown]
# **Task.** Compute `mine`, a `(B, L)` tensor: row $p$ of $R_N - I$ for every prompt, 0 at padding,
# with the row-vector recursion above (never form an $L \times L$ relevance). Compare it with
# `gu.explain(lm, inputs).relevance["text"]`.
#
# *Hints:* `torch.nn.functional.one_hot(last, L).float()` is $e_p$; `v @ attn_bar` for a `(B, L)`
# vector and a `(B, L, L)` matrix is `(v[:, None] @ attn_bar)[:, 0]`; `reversed(rec.layers)`.

# %%
# Write your code here.

# %% [markdown]
# **Question.** Why is the order of the layers reversed here, while notebook 06's loop runs in forward
# order? (Write $e_p^\top R_N$ with the product above and group it from the left.)


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to the
# question with the solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: mine, (B, L)
full = gu.explain(lm, inputs).relevance["text"]  # (B, L) the library's row p of R - I
assert mine.shape == inputs["input_ids"].shape, "mine: one row of length L per prompt"
assert torch.allclose(mine * inputs["attention_mask"], mine), "mine: 0 at padding columns"
assert torch.allclose(mine, full, atol=1e-6), "the row-vector recursion must equal row p of the full product"
print(f"✓ right: {len(mine)} rows equal to gu.explain's, without any L x L relevance")
