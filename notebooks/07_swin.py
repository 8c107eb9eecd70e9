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
# # 07 · Hierarchical transformers: GAE through windows and merges (Swin)
#
# **Estimated time: 35 minutes** (reading and running; about 30 minutes more for the two
# exercises, 15 each). The notebook runs in well under a minute on a laptop CPU.
#
# **Learning objectives.** After this notebook you can
# - say how Eq. 5 and Eq. 6 apply to attention within windows: each window's $\bar A$ scattered
#   block-diagonally over the stage's tokens, the cyclic shift undone, the shift mask kept;
# - carry $R$ through a 2x2 patch merge ($R \leftarrow P R$) and read the explanation as the mean of
#   the last stage's rows, a map on the first stage's grid;
# - compute GAE by hand on a 4 x 4 grid with 2 x 2 windows and one merge, and from scratch on a
#   recorded Swin;
# - read `shapes-swin`'s maps and its evaluation, and say where GAE wins and where it does not.
#
# A Swin transformer (Liu et al., ICCV 2021) does not let every token attend to every other: it
# cuts the token grid into windows and attends within each, shifts the windows every other block so
# that neighbouring windows exchange information, and halves the grid between stages with a 2x2
# patch merge. We use `shapes-swin`, a small timm `SwinTransformer` trained by this repository on
# the same ShapesWorld task as `shapes-vit` (notebook [01](01_vit.py)). The rules, with shapes, are
# in [`docs/rules.md`](../docs/rules.md) ("Windows and merges"). Set `GAE_SMOKE=1` for a quick run.

# %%
import os
from pathlib import Path

import torch

import gae_utils as gu
from gae_utils import rules
from gae_workbook.evaluate import cached_results, evaluate_vit, format_table
from gae_workbook.evaluation.metrics import masks_to_grid
from gae_workbook.evaluation.peers import PEERS
from gae_workbook.exploration import figures, windows
from gae_workbook.models import zoo
from shapesworld.scenes import CLASS_NAMES, ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
RECOMPUTE = os.environ.get("GAE_RECOMPUTE", "0") == "1"  # re-run the evaluation instead of loading it
_ = torch.manual_seed(0)

# %% [markdown]
# ## The model
# Its card records how it was trained and what it scored on held-out scenes, as for `shapes-vit`.
# The printed lines below read the stages off the model's own blocks.

# %%
model = zoo.load("shapes-swin")
vit = zoo.load("shapes-vit")
print("shapes-swin held out:", model.card.training["heldout"])
print("shapes-vit  held out:", vit.card.training["heldout"])
blocks = [m for m in model.modules() if type(m).__name__ == "SwinTransformerBlock"]
for i, b in enumerate(blocks):
    (h, w), (wh, ww) = b.input_resolution, b.window_size
    print(f"block {i}: grid {h}x{w}, {h // wh * (w // ww)} windows of {wh}x{ww}, shift {tuple(b.shift_size)}")
assert [tuple(b.input_resolution) for b in blocks] == [(16, 16), (16, 16), (8, 8), (8, 8)]

# %% [markdown]
# Four-pixel patches give a $16 \times 16$ grid ($N_0 = 256$ tokens) cut into 16 windows of
# $4 \times 4$; the second block of each stage shifts its windows by 2. One merge halves the grid
# to $8 \times 8$ (4 windows). There is no CLS token: the head averages the last stage's 64 tokens.

# %% [markdown]
# ## The rule
#
# Keep $R_s$ as a map from the current stage's tokens to the first stage's tokens:
# $R_s \in \mathbb{R}^{N_s \times N_0}$, starting from $R_0 = I$.
#
# - **Windowed attention.** One attention call holds all windows ($B \cdot n_W$ maps of
#   $N_w \times N_w$); it is one layer. Eq. 5 gives each window's
#   $\bar A_w = \mathbb{E}_h[(\nabla A \odot A)^+]$, $(n_W, N_w, N_w)$. Scattered at the window's
#   tokens (the window partition and the cyclic shift undone), the windows form one
#   block-diagonal $\bar A$ over the stage's $N_s$ tokens, and Eq. 6 applies unchanged:
#   $R_s \leftarrow R_s + \bar A R_s$. The shift mask needs nothing: masked pairs have
#   $A \approx 0$ in the model's own probabilities, so $\nabla A \odot A \approx 0$ there too.
# - **Patch merge.** Four children become one parent (a linear map of their concatenated
#   features): $R_{s+1} = P R_s$, $P \in \mathbb{R}^{N_s/4 \times N_s}$, each parent's row the mean of
#   its children's rows. (The sum would multiply $R$ by 4 per merge and change nothing else: exercise 1.)
# - **Readout.** The head averages the last stage's tokens, so the explanation is the mean of the
#   rows of $R_S$: a map on the first stage's $16 \times 16$ grid, twice as fine as `shapes-vit`'s
#   $8 \times 8$.
#
# The figure draws the rule on the worked example below: a $4 \times 4$ grid, $2 \times 2$ windows,
# one merge.

# %%
example = windows.worked_example()
fig = windows.plot_windows_and_merge(example)
_ = figures.save_figure(fig, "07_windows_and_merge")

# %% [markdown]
# **What to notice.**
# - First two panels: the same 16 tokens, grouped into windows (one grey per window) without and
#   with the shift. Shifted by one token, the centre window holds tokens 5, 6, 9, 10, which sat in
#   four different windows before: this is how information crosses window borders. The corner
#   windows wrap around (4 with 7, 0 with 3, 12 and 15); inside them the model's mask keeps the
#   wrapped pairs apart.
# - Middle: in the raster order of the grid, a window's block is not contiguous. Scattering each
#   window's map at its own tokens is all "block-diagonal" means here.
# - Fourth panel: each parent of the $2 \times 2$ grid takes a quarter of each of its four children.
# - Last panel: the explanation, in raw values with its colour bar; the numbers are derived by hand
#   next.

# %% [markdown]
# ## A worked example you can check on paper
#
# Tokens $0 \dots 15$ in raster order. Three layers and one merge, each $\bar A$ with a single
# non-zero entry (written "query ← key"):
#
# 1. layer 1, windows unshifted: $\bar A[5, 0] = 0.5$. So $R_1 = I + \bar A_1$: row 5 is
#    $e_5 + 0.5\,e_0$.
# 2. layer 2, shifted by 1 (the centre window is 5, 6, 9, 10): $\bar A[10, 5] = 0.5$. So
#    $R_2 = R_1 + \bar A_2 R_1$: row 10 is $e_{10} + 0.5\,(e_5 + 0.5\,e_0) = e_{10} + 0.5\,e_5 + 0.25\,e_0$.
#    Token 0 now reaches token 10, which never shared an unshifted window with it.
# 3. merge: parent 3 (children 10, 11, 14, 15) is the mean of their rows:
#    $(e_{10} + e_{11} + e_{14} + e_{15} + 0.5\,e_5 + 0.25\,e_0)/4$.
# 4. layer 3, on the $2 \times 2$ grid (one window): parent 0 ← parent 3 with 0.4.
#
# The readout is the mean of the 4 rows of $R_3$. Without layer 3, the mean of the parents' rows is
# the mean of all 16 rows of $R_2$: its column sums over 16, i.e. $1/16 = 0.0625$ for every token, plus
# $(0.5 + 0.25)/16$ for token 0 and $0.5/16$ for token 5. Layer 3 adds $0.4/4 = 0.1$ times parent 3's
# row: $+0.025$ for tokens 10, 11, 14, 15, $+0.0125$ for token 5, $+0.00625$ for token 0.
# Result: token 0 gets $0.109375 + 0.00625 = 0.115625$, token 5 gets $0.09375 + 0.0125 = 0.10625$,
# tokens 10, 11, 14, 15 get $0.0875$, the others $0.0625$.

# %%
relevance = example["relevance"].view(4, 4)
print("explanation on the 4 x 4 grid:\n", relevance)
expected = torch.full((16,), 0.0625)
expected[[10, 11, 14, 15]] = 0.0875
expected[0], expected[5] = 0.115625, 0.10625
assert torch.allclose(example["relevance"], expected)
# the library's rules compute the same map from the output side: V = the mean row over the
# parents, V <- V + V Abar per window, V <- V P at the merge (no 16 x 16 matrix)
V = torch.full((1, 4), 0.25)  # (1, 4) the readout: the mean of the parents' rows
V = rules.window_update_rows(V, example["abar3"], example["index3"])  # layer 3
V = rules.patch_merge_rows(V, (4, 4))  # (1, 16) the merge
V = rules.window_update_rows(V, example["abar2"], example["index2"])  # layer 2
V = rules.window_update_rows(V, example["abar1"], example["index1"])  # layer 1
print("largest difference to the library's rules:", float((V[0] - example["relevance"]).abs().max()))
assert torch.allclose(V[0], example["relevance"], atol=1e-7)

# %% [markdown]
# ## GAE from scratch on shapes-swin
# `gu.record(..., keep_heads=True)` keeps every windowed layer's probabilities per window and head,
# `layer.attn` $(B, n_W, H, N_w, N_w)$, their gradients `layer.grad` $(B, K, n_W, H, N_w, N_w)$, the
# raster index of each window position `layer.windows` $(n_W, N_w)$ (shift and partition undone) and
# the stage's `layer.grid`. `windows.dense_gae` writes the rule out with dense matrices: per layer,
# Eq. 5 per window, the windows scattered into an $(N_s, N_s)$ matrix, Eq. 6; at each merge a dense
# $P$; the mean row at the end. Two scenes, two classes each.

# %%
world = ShapesWorld(seed=2024)
two = [s for s in world.scenes(60) if len(s.objects) == 2][:4]
pairs = ShapesBatch.from_scenes(two)
targets = torch.tensor([[o.label for o in s.objects] for s in two])  # (4, 2) both objects' classes
rec = gu.record(model, pairs.images[:2], target=targets[:2], keep_heads=True)
mine = windows.dense_gae(rec.layers)  # (2, 2, 256)
library = gu.explain(model, pairs.images[:2], target=targets[:2]).relevance["image"]  # (2, 2, 256)
print("shapes:", tuple(mine.shape), tuple(library.shape))
print("largest difference to gu.explain:", float((mine - library).abs().max()))
assert torch.allclose(mine, library, atol=1e-5)

# %% [markdown]
# The dense loop builds $256 \times 256$ matrices; the library never does (it carries the
# explained row from the output side, one product per window), and agrees.

# %% [markdown]
# ## Maps on a few scenes
# Each scene has two objects; the first class of each is explained by GAE on `shapes-swin`
# ($16 \times 16$ map), by rollout and raw attention on the same recording, and by GAE on
# `shapes-vit` ($8 \times 8$). The printed lines say where each map's most relevant token lies.

# %%
rec4 = gu.record(model, pairs.images, target=targets[:, :1])
columns = {
    "GAE (swin)": rec4.explanation("gae").heatmap(64)[:, 0],
    "rollout (swin)": rec4.explanation("rollout").heatmap(64)[:, 0],
    "raw attention (swin)": rec4.explanation("raw_attention").heatmap(64)[:, 0],
    "GAE (vit)": gu.explain(vit, pairs.images, target=targets[:, :1]).heatmap(64)[:, 0],
}
labels = [CLASS_NAMES[t] for t in targets[:, 0].tolist()]
fig = figures.plot_heatmap_grid(pairs.images, columns, row_labels=labels)
_ = figures.save_figure(fig, "07_maps")
object_tokens = masks_to_grid(pairs.masks[torch.arange(4), targets[:, 0]], (16, 16)).flatten(1)  # (4, 256)
hits = {}
for method in ("gae", "rollout", "raw_attention"):
    top = rec4.explanation(method).relevance["image"][:, 0].argmax(-1)  # (4,) most relevant token
    hits[method] = object_tokens[torch.arange(4), top].tolist()
    print(f"{method:14s} most relevant token on the explained object, per scene: {hits[method]}")

# %% [markdown]
# **What to notice.** The printed lines count, per method, the scenes whose most relevant token is
# on the explained object; four scenes say little, the evaluation below gives the rates. GAE's
# Swin map is finer than the ViT's ($16 \times 16$ tokens against $8 \times 8$), and rollout and raw
# attention have no target: they draw the same map whichever object is explained.

# %% [markdown]
# ## Measured against ground truth
# The protocol of notebook 01, unchanged (`evaluate_vit`, defined in
# [`docs/evaluation.md`](../docs/evaluation.md)): every class present in 150 held-out scenes
# (seed 7) is explained and scored against its mask. `pointing` is scored on each map's own
# grid: $16 \times 16$ for the Swin's maps, the pixel-level peers average-pooled to it. Two peers
# join: pytorch-grad-cam's `GradCAM` with its Swin recipe (the last block's `norm2`, tokens reshaped to the last stage's
# $4 \times 4$ grid) and captum's `IntegratedGradients` (a missing library is skipped with a
# printed reason). The notebook loads the committed result,
# `notebooks/results/07_swin_evaluation.json`; `GAE_RECOMPUTE=1` runs it again
# (`python -m gae_workbook.evaluate --model shapes-swin --n 150 --seed 7 --peers gradcam
# integrated_gradients` prints the same table).

# %%
peers = {name: PEERS[name] for name in ("gradcam", "integrated_gradients")}
results, curves = cached_results(  # ({method: {metric: value}}, {method: (2, steps) curves})
    Path("results/07_swin_evaluation.json"),
    lambda: evaluate_vit(model, n=20 if SMOKE else 150, seed=7, peers=peers),
    RECOMPUTE,
    save=not SMOKE,  # a smoke-size run must not replace the full-size results
)
print(format_table(results))
vit_results, _ = cached_results(Path("results/01_vit_evaluation.json"), lambda: None)  # notebook 01's table
claims = {}
for metric, better in (("pointing", max), ("pos_auc", min)):
    for rival in ("rollout", "raw_attention"):
        wins = better(results["gae"][metric], results[rival][metric]) == results["gae"][metric]
        claims[(metric, rival)] = wins and results["gae"][metric] != results[rival][metric]
        verdict = "beats" if claims[(metric, rival)] else "does not beat"
        print(f"GAE {verdict} {rival} on {metric}: {results['gae'][metric]:.3f} vs {results[rival][metric]:.3f}")
for metric in ("pointing", "pointing_pixel", "mass", "pos_auc", "neg_auc"):
    print(f"GAE {metric:15s} shapes-swin {results['gae'][metric]:7.3f}   shapes-vit {vit_results['gae'][metric]:7.3f}")
rows = [m for m in results if m != "random"]
leader = {
    c: (min if c == "pos_auc" else max)(rows, key=lambda m: results[m][c]) for c in ("pointing", "mass", "pos_auc")
}
print("best per column:", leader)
# the notes below, checked
assert all(claims.values())  # GAE beats rollout and raw attention on pointing and positive AUC
assert leader["pos_auc"] == "gae" and leader["pointing"] == "integrated_gradients"
assert max(rows, key=lambda m: results[m]["neg_auc"]) == "gae"
assert 30 < results["integrated_gradients"]["ms_per_pair"] / results["gae"]["ms_per_pair"] < 50  # "about 40 times"
assert results["gae"]["mass"] < results["rollout"]["mass"] < results["attn_gradcam"]["mass"]
assert results["gradcam"]["pointing"] < 2 * results["random"]["pointing"]  # grad-cam's Swin recipe: near random
assert results["gae"]["pointing"] < vit_results["gae"]["pointing"]

# %% [markdown]
# **What to notice.** (Every statement is asserted in the cell above.)
# - **Where GAE wins.** It beats rollout and raw attention on pointing and on the positive
#   perturbation AUC (the four printed lines), and has the best positive and negative AUC of
#   every method, integrated gradients included: removing its most relevant pixels first makes the
#   model lose the class fastest.
# - **Where it does not.** Integrated gradients points slightly better, at about 40 times GAE's cost
#   (`ms_per_pair`). GAE's relevance *mass* on the object is low, below rollout's and attention
#   Grad-CAM's: its $16 \times 16$ map peaks on the object but spreads its mass over the whole
#   image (the $I$ part of $R$ and the window-wide averages). And GAE on `shapes-swin` points less
#   often than on `shapes-vit`, on a grid four times finer in tokens (256 against 64), where a hit
#   needs a 4-pixel token on the object.
# - pytorch-grad-cam's Swin recipe reads the last stage's $4 \times 4$ grid (16-pixel cells): on
#   these small objects it scores near the random row.

# %% [markdown]
# ## Check yourself
# Answer before you open the answer; each can be answered from this notebook.
#
# **1.** A Swin block attends within 16 windows of 16 tokens each, folded into the batch: 16
# attention maps of $16 \times 16$ per image. How many layers does GAE count for that block?
# (a) 16, one per window; (b) one: the windows are scattered into one block-diagonal
# $(256, 256)$ $\bar A$ and Eq. 6 is applied once; (c) none, windowed blocks are skipped;
# (d) four, one per row of windows.
#
# <details><summary>Answer</summary>
#
# (b). The windows partition the stage's tokens, so their maps together form one block-diagonal
# map over the stage; Eq. 6 applies to it once, $R \leftarrow R + \bar A R$, computed one window at a
# time.
#
# </details>
#
# **2.** In the worked example, why does token 0 reach token 10 before the merge, although they
# never share an unshifted window?
# (a) the merge mixes them; (b) the shift mask adds it; (c) the shifted layer puts 5 and 10 in one
# window, and token 5 had already collected token 0 in layer 1, so Eq. 6 passes it on;
# (d) the readout averages all rows.
#
# <details><summary>Answer</summary>
#
# (c). Row 10 of $R_2$ is $e_{10} + 0.5\,R_1[5] = e_{10} + 0.5\,e_5 + 0.25\,e_0$: the path 0 → 5 → 10
# crosses a window border through the shifted layer, as the cell asserts.
#
# </details>
#
# **3.** `shapes-swin`'s merges averaged instead of summed. What happens to its heatmaps if the
# merge sums the four children's rows?
# (a) they move to the merged tokens; (b) they become blurrier; (c) they become all zero;
# (d) nothing: every entry is multiplied by 4 (one merge), and a min-max heatmap, the pointing
# game and the perturbation tests only see the order.
#
# <details><summary>Answer</summary>
#
# (d). Every step is a product on the left ($(I + \bar A) R$, $P R$), so the summing $P = 4 P_{mean}$
# scales everything after it; exercise 1 measures the factor 4 at every entry.
#
# </details>
#
# **4.** What is the shape of `gu.explain(swin, images, target=targets).relevance["image"]` for
# `shapes-swin`, 4 images and `targets` of shape `(4, 2)`?
# (a) `(4, 2, 256)`; (b) `(4, 2, 64)`; (c) `(4, 2, 16)`; (d) `(4, 2, 65)`.
#
# <details><summary>Answer</summary>
#
# (a). The map lies on the first stage's $16 \times 16$ grid: the mean of the last stage's 64 rows
# of $R_S$, each over the 256 first-stage tokens (the from-scratch cell prints the shapes).
#
# </details>

# %% [markdown]
# ## Exercises
# - `07_swin_ex_01.py` (15 min): merge with the sum instead of the mean, predict and measure what
#   changes (solution: `07_swin_sol_01.py`).
# - `07_swin_ex_02.py` (15 min): build the shifted block's window index by hand and find what the
#   shift mask does to the attention across wrapped-around windows (solution: `07_swin_sol_02.py`).
#
# ## Take-aways
# - Windowed attention is one layer: each window's $\bar A$ (Eq. 5) scattered at its tokens, the
#   shift and partition undone, and Eq. 6 unchanged; the shift mask is already in $A$.
# - A 2x2 merge is $R \leftarrow P R$ with $P$ averaging each parent's four children; the sum would
#   only scale $R$. $R$ stays a map from the current stage's tokens to the first stage's.
# - The head averages the last stage, so the explanation is the mean row of $R_S$, on the first
#   stage's grid: $16 \times 16$ for `shapes-swin`, finer than `shapes-vit`'s $8 \times 8$.
# - On `shapes-swin` (150 held-out scenes) GAE beats rollout and raw attention on pointing and on
#   the positive perturbation AUC, and has the best perturbation AUCs of all; integrated gradients
#   points slightly better at about 40 times the cost, and GAE's relevance mass on the object is low.
