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
# # 📃 Solution of exercise 01-2: change the readout, predict which rows of $\bar A$ move
#
# **About 20 minutes.** Notebook 01 showed that in the last layer of `shapes-vit` only the CLS row of
# $\bar A$ is non-zero, because the classifier reads only the CLS token. Some ViTs (DeiT-III, BEiT) pool
# instead: the classifier reads the **mean of the 64 patch tokens**, not CLS. timm switches a model to
# that readout with `global_pool = "avg"`; the weights stay the same.
#
# **Predict before you run** (write it down, with one sentence of reasoning): with the mean-pooling
# readout, which rows of the *last* layer's $\bar A = \mathbb{E}_h[(\nabla A \odot A)^+]$ can be
# non-zero? How many, and is the CLS row among them?

# %%
import copy

import torch

import gae_utils as gu
from gae_workbook.models import zoo
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-vit")
pooled = copy.deepcopy(model)
pooled.global_pool = "avg"  # the classifier now reads the mean of the patch tokens
images = ShapesWorld(seed=11).batch(6).images  # (6, 3, 64, 64)
rec = gu.record(model, images)  # CLS readout, the predicted class of each image
rec_pooled = gu.record(pooled, images)  # mean-pooling readout


def nonzero_rows(attn_bar: torch.Tensor) -> list[int]:
    """Rows of a ``(B, K, N, N)`` map that are non-zero in any example and target."""
    return (attn_bar.abs().sum(dim=-1) > 0).flatten(0, 1).any(dim=0).nonzero().flatten().tolist()


# %% [markdown]
# **Task 1.** `rows_cls` and `rows_pooled`: the non-zero rows of the last layer's `attn_bar` in `rec`
# and in `rec_pooled` (`rec.layers[-1].attn_bar`). Was your prediction right?
#
# **Task 2.** With mean pooling, the CLS row of $R$ would be the wrong explanation. Explain in one
# sentence why (use `cls_row_last`: the sum of row 0 of the pooled model's last-layer $\bar A$), and say
# which rows of $R$ to read instead. Then compute `pooled_readout`, `(B, 64)`: the mean of $R$'s 64 patch
# rows, patch columns only, with `R = rec_pooled.explanation("gae").maps[("image", "image")]`
# (`(B, 65, 65)`: one target per image), and compare it with what the library reports for this model,
# `rec_pooled.explanation("gae").relevance["image"]`.

# %%
rows_cls = nonzero_rows(rec.layers[-1].attn_bar)
rows_pooled = nonzero_rows(rec_pooled.layers[-1].attn_bar)
print("CLS readout, non-zero rows of the last layer:", rows_cls)
print(f"mean pooling: {len(rows_pooled)} non-zero rows, from {rows_pooled[0]} to {rows_pooled[-1]}")
cls_row_last = float(rec_pooled.layers[-1].attn_bar[:, :, 0].sum())
print("sum of the CLS row of the pooled model's last-layer Abar:", cls_row_last)
R = rec_pooled.explanation("gae").maps[("image", "image")]  # (B, 65, 65)
pooled_readout = R[:, 1:, 1:].mean(dim=1)  # (B, 64): the mean of the 64 patch rows, patch columns
print(
    "largest difference to the library's readout:",
    float((pooled_readout - rec_pooled.explanation("gae").relevance["image"]).abs().max()),
)

# %% [markdown]
# A row of $\bar A$ is non-zero only where $\nabla A$ is: row $i$ of a layer's attention shapes only
# token $i$'s output of that layer. With mean pooling the classifier reads the 64 patch tokens after the
# last layer and never the CLS token, so the 64 patch rows have gradients and the CLS row has none: the
# readout decides which rows carry the explanation. The CLS row of $R$ then holds only what earlier
# layers passed to a token the classifier ignores (its last-layer row is exactly 0); the explanation of a
# mean-pooled model is the **mean of $R$'s rows over the pooled tokens** (the 64 patch rows), which is
# what the library reads for a timm ViT with `global_pool="avg"`.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your Task 2 sentence with
# the solution's.

# %%
assert rows_cls == nonzero_rows(rec.layers[-1].attn_bar), "rows_cls: the non-zero rows of rec's last layer"
assert rows_pooled == nonzero_rows(rec_pooled.layers[-1].attn_bar), "rows_pooled: the same for rec_pooled"
assert rows_cls == [0], "with the CLS readout only row 0 reaches the logit"
assert 0 not in rows_pooled and len(rows_pooled) == 64, "with mean pooling every patch row, and not CLS, is read"
assert cls_row_last == float(rec_pooled.layers[-1].attn_bar[:, :, 0].sum()) == 0, "cls_row_last: the sum of row 0"
assert pooled_readout.shape == (6, 64), "pooled_readout: one value per patch and image"
assert torch.allclose(pooled_readout, rec_pooled.explanation("gae").relevance["image"], atol=1e-6), (
    "pooled_readout: R[:, 1:, 1:].mean(dim=1), the mean of the patch rows over the patch columns"
)
print(f"✓ right: CLS readout -> rows {rows_cls}; mean pooling -> {len(rows_pooled)} rows, the patches; read their mean")
