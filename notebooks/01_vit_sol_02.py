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
# # 📃 Solution of exercise 01-2: which rows of the last layer's $\bar A$ are non-zero?

# %%
import torch

import gae_utils as gu
from gae_workbook import zoo
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-vit")
images = ShapesWorld(seed=11).batch(6).images  # (6, 3, 64, 64)
rec = gu.record(model, images)  # the predicted class of each image

# %% [markdown]
# **Task 1.** A row of $\bar A$ is non-zero only where $\nabla A$ is non-zero. Row $i$ of a layer's
# attention only shapes the output of token $i$ in that layer. After the last layer the classifier
# reads only token 0 (CLS), so the outputs of tokens 1..64 of the last layer are never used and
# their attention rows get no gradient: only **row 0** can be non-zero. In the first layer every
# token's output feeds later layers, which feed the CLS token, so every row can be non-zero.


# %%
def nonzero_rows(attn_bar: torch.Tensor) -> list[int]:
    """Rows of a ``(B, K, N, N)`` map that are non-zero in any example and target."""
    return (attn_bar.abs().sum(dim=-1) > 0).flatten(0, 1).any(dim=0).nonzero().flatten().tolist()


last = nonzero_rows(rec.layers[-1].attn_bar)
first = nonzero_rows(rec.layers[0].attn_bar)
print("last layer, non-zero rows:", last)
print("first layer, non-zero rows:", len(first), "of", rec.layers[0].attn_bar.shape[-1])

# %% [markdown]
# **Task 2.** With `start_layer=3`, Eq. 6 runs once: $R = I + \bar A_3$. That is the ablation
# "GAE, last layer only" (`gae_last_layer`).

# %%
only_last = rec.explanation("gae", start_layer=3).relevance["image"]
ablation = rec.explanation("gae_last_layer").relevance["image"]
print("largest difference:", float((only_last - ablation).abs().max()))
assert last == [0], "only the CLS row of the last layer has a gradient"
assert len(first) == rec.layers[0].attn_bar.shape[-1], "every row of the first layer feeds the CLS token"
assert torch.allclose(only_last, ablation)
