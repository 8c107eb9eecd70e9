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
# # 01 · How a vision transformer decides: the self-attention rule
#
# **Estimated time: 45 minutes** (reading and running; about 40 minutes more for the two
# exercises, 20 each). The notebook runs in well under two minutes on a laptop CPU.
#
# **Learning objectives.** After this notebook you can
# - state Eq. 5 and Eq. 6 of GAE with the shape of every term, and say why each part is there;
# - compute GAE by hand for a 3-token, 2-layer example, and from scratch on a recorded ViT;
# - read a ViT's explanation (the CLS row of `R`) and say what its magnitude means;
# - compare GAE with raw attention, rollout and attention Grad-CAM, and read a perturbation test.
#
# Generic Attention-model Explainability (GAE; Chefer, Gur & Wolf, ICCV 2021) explains a
# transformer with its own attention maps. We use `shapes-vit`, a small timm ViT trained by this
# repository on ShapesWorld scenes (coloured shapes on textured backgrounds), so every
# explanation can be checked against the object's true mask. Symbols are listed in
# [`00_notation.py`](00_notation.py); the rules, with shapes, in [`docs/rules.md`](../docs/rules.md).
# Set `GAE_SMOKE=1` for a quick run.

# %%
import os
from pathlib import Path

import torch

import gae_utils as gu
from gae_utils import rules
from gae_utils.methods import method_label
from gae_workbook.evaluate import cached_results, evaluate_vit, format_table
from gae_workbook.evaluation.metrics import PERTURBATION_STEPS, masks_to_grid
from gae_workbook.exploration import figures, widgets
from gae_workbook.models import zoo
from shapesworld.scenes import CLASS_NAMES, ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
RECOMPUTE = os.environ.get("GAE_RECOMPUTE", "0") == "1"  # re-run the evaluation instead of loading it
_ = torch.manual_seed(0)

# %% [markdown]
# ## The model and its held-out accuracy
# The card stored beside the checkpoint records how it was trained and what it scored on scenes
# it never saw (exact match: all 16 present/absent decisions right). The model is a multi-label
# classifier: one logit per (colour, shape) class, positive when the object is in the scene.

# %%
model = zoo.load("shapes-vit")
model.card.training["heldout"]

# %% [markdown]
# ## The rules
#
# A ViT turns a $64 \times 64$ image into $8 \times 8 = 64$ patch tokens plus one CLS token
# ($N = 65$). Each of its $L = 4$ layers has $H = 4$ attention heads with probabilities
# $A \in \mathbb{R}^{B \times H \times N \times N}$; the classifier reads only the CLS token's final
# state. We explain one scalar $y$ per example (here a class logit) and record, for every layer,
# $A$ and its gradient $\nabla A = \partial y / \partial A$ (same shape).
#
# **Eq. 5, one map per layer:**
# $$\bar A = \mathbb{E}_h\big[(\nabla A \odot A)^+\big] \qquad (B, H, N, N) \to (B, N, N)$$
#
# - *the gradient* makes the map class-specific: the same attention weights are weighted
#   differently when we explain "red square" and when we explain "blue circle";
# - *the positive part* $(\cdot)^+$ keeps the attention that increases $y$; negative parts would
#   cancel positive ones across heads;
# - *the mean over heads* $\mathbb{E}_h$ gives one map per layer.
#
# **Eq. 6, accumulate over layers**, starting from the identity:
# $$R_0 = I, \qquad R_l = R_{l-1} + \bar A_l\, R_{l-1} \qquad (B, N, N)$$
#
# - *$R = I$* is the residual connection: a layer adds its attention output to its input, so
#   before any layer each token is relevant to itself only;
# - *$\bar A\,R$*: a token collects the relevance of the tokens it attends to, and those tokens carry
#   what they collected in earlier layers, so paths through several layers count;
# - for a pure self-attention stack, $R_L = (I + \bar A_L) \cdots (I + \bar A_1)$.
#
# **The readout.** The classifier reads the CLS token, so the explanation is the CLS row of
# $R_L$ without its own column: $R_L[0, 1{:}]$, 64 values, one per patch, shape $(B, 64)$.

# %%
fig = figures.rule_diagram()
_ = figures.save_figure(fig, "01_rule_diagram")

# %% [markdown]
# **What to notice.**
# - Left: Eq. 5 is element-wise. White cells are where the product of attention and gradient is
#   negative or zero; $(\cdot)^+$ drops them.
# - Middle: Eq. 6 is a matrix product. With one grey scale for all four matrices, $\bar A$ is faint
#   next to $I$: each layer adds a little to the identity. Keep this in mind; we measure it below.
# - Right: in a ViT there is one modality, so only the block $R[s,s]$ exists. Notebook 03 fills the
#   other blocks with the cross-attention rules.

# %% [markdown]
# ## A worked example you can check on paper
#
# Three tokens (0 = CLS, 1 and 2 = patches), two heads, two layers. In the **last** layer only the
# CLS row has a gradient: the classifier reads only the CLS token, so the other tokens' last-layer
# outputs never reach the logit (exercise 2 changes the readout and asks what moves). Its two heads:
#
# $$A_{h=1} = \begin{pmatrix} .50 & .25 & .25 \\ .25 & .50 & .25 \\ .25 & .25 & .50 \end{pmatrix},\quad
# \nabla A_{h=1} = \begin{pmatrix} .4 & -.4 & .8 \\ 0 & 0 & 0 \\ 0 & 0 & 0 \end{pmatrix},\qquad
# A_{h=2} = \begin{pmatrix} .2 & .6 & .2 \\ .4 & .4 & .2 \\ 0 & .5 & .5 \end{pmatrix},\quad
# \nabla A_{h=2} = \begin{pmatrix} 1 & .5 & -1 \\ 0 & 0 & 0 \\ 0 & 0 & 0 \end{pmatrix}$$
#
# Row 0 of $\nabla A \odot A$: head 1 gives $(0.2, -0.1, 0.2)$, head 2 gives $(0.2, 0.3, -0.2)$.
# The positive parts are $(0.2, 0, 0.2)$ and $(0.2, 0.3, 0)$; their mean is
# $\bar A_2[0] = (0.2, 0.15, 0.1)$, every other row is 0.
#
# *One layer only* (start from $R = I$): $R = I + \bar A_2 I$, CLS row $(1.2, 0.15, 0.1)$. Patch 1
# is more relevant than patch 2.
#
# *Two layers.* Say the first layer's map is
# $\bar A_1 = \begin{pmatrix} .1 & 0 & 0 \\ 0 & 0 & 0 \\ 0 & .5 & 0 \end{pmatrix}$: patch 2 collected
# from patch 1. Then $R_1 = I + \bar A_1$, and the CLS row of $R_2 = R_1 + \bar A_2 R_1$ is
# $(1.1, 0, 0) + 0.2\,(1.1, 0, 0) + 0.15\,(0, 1, 0) + 0.1\,(0, 0.5, 1) = (1.32, 0.20, 0.10)$.
# Patch 1 gained 0.05: it reached the CLS token a second way, through patch 2.

# %%
A = torch.tensor(
    [
        [[0.50, 0.25, 0.25], [0.25, 0.50, 0.25], [0.25, 0.25, 0.50]],
        [[0.20, 0.60, 0.20], [0.40, 0.40, 0.20], [0.00, 0.50, 0.50]],
    ]
)  # (H=2, N=3, N=3)
dA = torch.zeros(2, 3, 3)  # (H, N, N): only the CLS row has a gradient
dA[0, 0] = torch.tensor([0.4, -0.4, 0.8])
dA[1, 0] = torch.tensor([1.0, 0.5, -1.0])
abar_2 = rules.head_average(A, dA)  # (N, N), Eq. 5
eye = torch.eye(3)
abar_1 = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
r_1 = rules.self_attention_update(eye, abar_1)  # Eq. 6, layer 1
r_2 = rules.self_attention_update(r_1, abar_2)  # Eq. 6, layer 2
print("Abar of the last layer:\n", abar_2)
print("CLS row, last layer only:", rules.self_attention_update(eye, abar_2)[0].tolist())
print("CLS row, both layers:    ", r_2[0].tolist())
assert torch.allclose(abar_2[0], torch.tensor([0.2, 0.15, 0.1])) and abar_2[1:].abs().sum() == 0
assert torch.allclose(r_2[0], torch.tensor([1.32, 0.20, 0.10]))
quiz = torch.zeros(3, 3)
quiz[0] = torch.tensor([0.0, 0.2, 0.4])  # quiz question 2's last layer
assert torch.allclose(rules.self_attention_update(r_1, quiz)[0], torch.tensor([1.1, 0.4, 0.4]))

# %% [markdown]
# ## GAE from scratch on a real ViT
# `gu.record` runs the model once forward and once backward and keeps, for every attention layer
# in forward order, its probabilities and their gradients (`keep_heads=True` keeps them per head):
# `rec.layers[l].attn` is $(B, H, N, N)$, `rec.layers[l].grad` is $(B, K, H, N, N)$ for $K$ targets.
# Eq. 5 and Eq. 6 are then six lines. Here we explain the predicted class of one scene.

# %%
world = ShapesWorld(seed=2024)
scene = world.scene(3)
batch = ShapesBatch.from_scenes([scene])
rec = gu.record(model, batch.images, keep_heads=True)
print("objects:", [o.name for o in scene.objects], "| explaining:", CLASS_NAMES[int(rec.target[0, 0])])

n_tokens = rec.layers[0].attn.shape[-1]  # N = 65
R = torch.eye(n_tokens).expand(*rec.scores.shape, n_tokens, n_tokens)  # (B, K, N, N), R = I
for layer in rec.layers:
    attn_bar = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(dim=2)  # (B, K, N, N), Eq. 5
    R = R + attn_bar @ R  # (B, K, N, N), Eq. 6
mine = R[:, 0, 0, 1:]  # (B, 64): the CLS row over the patches

library = gu.explain(model, batch.images)  # the one-line API, predicted class
print("largest difference to gu.explain:", float((mine - library.relevance["image"]).abs().max()))
assert torch.allclose(mine, library.relevance["image"], atol=1e-6)

# %% [markdown]
# The loop and `gu.explain` agree. From here on the notebook uses the one-line API: `gu.explain(model,
# images, target=...)` returns an `Explanation` whose `relevance["image"]` is the raw CLS row
# ($(B, 64)$, or $(B, K, 64)$ for $K$ targets) and whose `heatmap(size)` upsamples it to the image
# and min-max normalises it for display.

# %% [markdown]
# ## One scene, layer by layer, in raw values
# Before looking at heatmaps, look at the matrices the equations act on. Top: each layer's
# $\bar A$. Middle: $R - I$ after that layer (what the layers have added to the identity). Bottom:
# the CLS row of $R - I$ on the $8 \times 8$ patch grid. Each row of panels shares one colour
# bar; nothing is min-max normalised.

# %%
fig = figures.plot_rule_steps(rec, batch.images)
_ = figures.save_figure(fig, "01_steps")
row_sums = [float(layer.attn_bar[0, 0, 0].sum()) for layer in rec.layers]
for i, total in enumerate(row_sums):
    print(f"layer {i}: CLS row of Abar sums to {total:.3f}; I contributes 1")
largest = sorted(sorted(range(len(row_sums)), key=row_sums.__getitem__)[-2:])
print("the two layers with the largest CLS row:", largest)
# the notes below, checked
assert min(row_sums) < 0.1 and 0.5 < max(row_sums) < 2  # a few hundredths in some layers, about 1 in others
assert (rec.layers[-1].attn_bar[0, 0, 1:] == 0).all()  # only row 0 of the last layer's Abar is non-zero

# %% [markdown]
# **What to notice.**
# - $\bar A$ is small next to $I$: its CLS row sums to a few hundredths in some layers and to about 1
#   in others. The explanation is $R - I$'s CLS row, a small signal on top of the identity (this is
#   why the figures subtract $I$, and why notebook 03 finds GAE sensitive to the scale of the
#   explained score).
# - Top row: the sum of each row of $\bar A$, one bar per query token. In the last layer only row 0
#   (CLS) has a bar: "non-zero rows: 1 of 65", for the reason given in the worked example.
# - The bottom row grows layer by layer, most at the layers whose $\bar A$ row is large (the two
#   printed layers), and sits on the object: the relevance is accumulated, not read from one layer.

# %% [markdown]
# ## Class-specific explanations
# A scene with two objects has two classes present. Explaining each class separately (two
# targets of one call, $K = 2$) should highlight a different object each time: the paper's
# cat-and-dog example, in our world. *Predict before you run:* where will the map of the second
# class go?

# %%
two = [s for s in world.scenes(60) if len(s.objects) == 2][:4]
pairs = ShapesBatch.from_scenes(two)
targets = torch.tensor([[o.label for o in s.objects] for s in two])  # (4, 2)
exp = gu.explain(model, pairs.images, target=targets)
titles = [[f"GAE: {CLASS_NAMES[t]}" for t in row.tolist()] for row in targets]
fig = figures.plot_panels(pairs.images, exp.heatmap(64), titles)
_ = figures.save_figure(fig, "01_class_specific")

# %% [markdown]
# **What to notice.**
# - The two maps of one scene differ: the gradient in Eq. 5 selects the attention that serves
#   the explained class. Raw attention and rollout (below) cannot do this: they have no target.
# - Last row: the "blue cross" map also lights the blue square, and the "blue square" map the
#   cross. The two classes share the colour, and the model's "blue" evidence is shared between
#   them; the explanation shows it rather than hiding it.
# - The maps peak on edges and corners (the triangle's edge in row 1, the square's right edge in
#   row 3) rather than filling the shape: that is where this model finds its evidence. A patch-level
#   pointing game credits such a map; the pixel-level one is stricter (see the table below).
# - These maps are min-max normalised per panel (the colour bar says so); the raw magnitudes are
#   the bottom row of the previous figure.

# %% [markdown]
# ## GAE beside the baselines
# Every method below comes from the same recording (`gu.record(..., target=targets)`):
#
# | method | what it computes | target-specific |
# |---|---|---|
# | raw attention | the last layer's $A$, mean over heads, CLS row | no |
# | rollout (Abnar & Zuidema 2020) | $\prod_l \mathrm{rownorm}(0.5\,\mathbb{E}_h A_l + 0.5\,I)$, CLS row | no |
# | attention Grad-CAM | last layer: heads' CLS rows of $A$, weighted by mean gradient; mean, $(\cdot)^+$ | yes |
# | GAE, last layer only | $I + \bar A_L$ (Eq. 5-6 without aggregation over layers) | yes |
# | GAE | Eq. 5-6 over all layers | yes |

# %%
rec2 = gu.record(model, pairs.images, target=targets)
methods = gu.method_names()  # the comparison set (ablations that equal GAE on a ViT are left out)
columns = {method_label(m): rec2.explanation(m).heatmap(64)[:, 0] for m in methods}
fig = figures.plot_heatmap_grid(pairs.images, columns, row_labels=[CLASS_NAMES[t] for t in targets[:, 0].tolist()])
_ = figures.save_figure(fig, "01_methods")
gradcam = rec2.explanation("attn_gradcam").relevance["image"][:, 0]  # (4, 64) raw
blank = int((gradcam.amax(-1) == 0).sum())
print("attention Grad-CAM maps that are all zero:", blank, "of", gradcam.shape[0])
# where each method's most relevant patch lies: on the explained object, on the other one, or neither
patches = torch.stack(
    [masks_to_grid(pairs.masks[r, targets[r]], (8, 8)).flatten(1) for r in range(len(two))]
)  # (4, 2, 64)


def top_patch_on(relevance: torch.Tensor, r: int) -> str:
    """Where row r's most relevant patch lies: the explained object, the other object, neither; or a blank map."""
    if relevance[r].amax() == 0:
        return "blank"
    top = int(relevance[r].argmax())
    return "explained" if patches[r, 0, top] else "other" if patches[r, 1, top] else "neither"


where = {}
for m in methods:
    relevance = rec2.explanation(m).relevance["image"][:, 0]  # (4, 64) the first target of each scene
    where[m] = [top_patch_on(relevance, r) for r in range(len(two))]
    print(f"{method_label(m):22s} most relevant patch per row: {where[m]}")
# row 1 in the notes below: only GAE's most relevant patch is on the explained object
assert where["gae"][0] == "explained"
assert all(where[m][0] == "other" for m in ("raw_attention", "rollout", "attn_gradcam", "gae_last_layer"))
assert blank > gradcam.shape[0] / 2  # "often a blank panel", and quiz question 4: "most scenes of the batch"

# %% [markdown]
# **What to notice.**
# - Attention Grad-CAM is often a blank panel. That is the method, not a bug: it weights each head
#   by its *mean* gradient and clamps the weighted sum at 0, so when heads with negative mean
#   gradients dominate, every patch is 0 (the printed count says how often in this batch).
# - Row 1: raw attention, rollout and Grad-CAM put their most relevant patch on the yellow cross while
#   the green triangle is explained (the printed lines say where each method's top patch lies, per
#   row). Raw attention and rollout have no target: they would draw the same map for the cross. GAE
#   follows the explained class.
# - GAE with only the last layer also strays to the cross in row 1: a single layer's $\bar A$
#   misses the paths through earlier layers. The table below measures the gap.

# %% [markdown]
# ## Measured against ground truth
# Every class present in each of 300 held-out scenes is explained and scored against its mask
# (the metrics are defined in [`docs/evaluation.md`](../docs/evaluation.md)): the pointing game
# (patch and pixel level), the relevance mass inside the mask, a segmentation test, and the
# perturbation tests (pixels removed most-relevant-first: lower AUC is better;
# least-relevant-first: higher is better).
# The `random` row is uniform noise: the floor any method must beat.
#
# The evaluation takes about a minute on two cores, so the notebook loads the committed result of
# `evaluate_vit(model, n=300, seed=7)` from `notebooks/results/01_vit_evaluation.json`. Set
# `GAE_RECOMPUTE=1` (or `RECOMPUTE = True` above) to run it again and rewrite the file;
# `python -m gae_workbook.evaluate --model shapes-vit --n 300 --seed 7` prints the same table.

# %%
results, curves = cached_results(  # ({method: {metric: value}}, {method: (2, steps) curves})
    Path("results/01_vit_evaluation.json"),
    lambda: evaluate_vit(model, n=40 if SMOKE else 300, seed=7),
    RECOMPUTE,
    save=not SMOKE,  # a smoke-size run must not replace the full-size results
)
print(format_table(results))
lower = {"pos_auc"}
best = {
    c: (min if c in lower else max)((m for m in results if m != "random"), key=lambda m: results[m][c])
    for c in results["gae"]
    if c not in ("n", "pairs")
}
print("best per column:", best)
assert set(best.values()) == {"gae"}  # the take-away "GAE beats ... on every metric", checked

# %%
panels = [  # (title, AUC column of the table, x axis) per test, in the order of the curves
    ("positive perturbation (lower is better)", "pos_auc", "fraction of pixels removed"),
    ("negative perturbation (higher is better)", "neg_auc", "fraction of pixels removed"),
]
fig = figures.plot_perturbation_panels(curves, results, PERTURBATION_STEPS, panels)
_ = figures.save_figure(fig, "01_perturbation")
near_random = {t: abs(results["attn_gradcam"][t] - results["random"][t]) for t in ("pos_auc", "neg_auc")}
print("attention Grad-CAM's distance to random (AUC points):", {t: f"{v:.1f}" for t, v in near_random.items()})
assert max(near_random.values()) < 10

# %% [markdown]
# **What to notice.**
# - Left: removing GAE's most relevant pixels first makes the model lose the class fastest
#   (lowest AUC); removing random pixels lowers the accuracy only in proportion to the pixels removed.
# - Right: removing the least relevant pixels first, GAE keeps the class longest (highest AUC).
# - Attention Grad-CAM is close to random in both tests (within 10 AUC points, printed). Its maps are
#   mostly all-zero (see above): a blank map ranks every pixel equally, ties are removed in reading
#   order, and the test degenerates to removing pixels from the top of the image down.
# - Every curve starts at the same point (the unperturbed accuracy) and the AUC is the area under
#   the curve times 100, so 90 is the largest possible value.

# %% [markdown]
# ## Explore
# Pick an example, a class, a method and a layer view; the sliders re-render from one recording.
# *Predict before you move the layer slider:* which layer adds most to the CLS row?

# %%
explore_batch = ShapesBatch.from_scenes(two[:2])
widgets.explorer(model, explore_batch.images, class_names=CLASS_NAMES)

# %% [markdown]
# ## Real photos with a pretrained ViT (when weights can be downloaded)
# With network access, timm's pretrained `vit_base_patch16_224` explains photos that ship with
# scikit-image. Offline, this cell says so and moves on. What transfers from ShapesWorld: the
# rules and the readout are the same for a 12-layer, 12-head ViT-B/16 ($N = 197$).

# %%
try:
    vit_b = zoo.load("vit_base_patch16_224", pretrained=True)
except zoo.PretrainedUnavailableError as err:
    print(err)
else:
    from gae_workbook.models.photos import imagenet_label, photo_batch

    photos, inputs = photo_batch(vit_b)
    with torch.no_grad():
        top2 = vit_b(inputs).topk(2).indices  # (B, 2): explain the two most likely classes
    exp = gu.explain(vit_b, inputs, target=top2)
    titles = [[f"GAE: {imagenet_label(int(t))[:24]}" for t in row] for row in top2]
    fig = figures.plot_panels(photos, exp.heatmap(224), titles)
    _ = figures.save_figure(fig, "01_pretrained_photos")

# %% [markdown]
# ## Check yourself
# Answer before you open the answer; each can be answered from this notebook.
#
# **1.** In the last layer of `shapes-vit`, which rows of $\bar A$ can be non-zero?
# (a) every row; (b) only the CLS row; (c) only the 64 patch rows; (d) none, the last layer gets no
# gradient.
#
# <details><summary>Answer</summary>
#
# (b). The classifier reads only the CLS token's final state, so in the last layer only the CLS row's
# attention reaches the explained logit and every other row's gradient is 0 (the worked example and
# the layer-by-layer figure show it).
#
# </details>
#
# **2.** Take the worked example's first layer, $\bar A_1$, but a last layer whose CLS row is
# $\bar A_2[0] = (0, 0.2, 0.4)$ (other rows 0). What is the CLS row of $R_2$ over the two patches?
# (a) $(0.4, 0.4)$; (b) $(0.2, 0.4)$; (c) $(0.2, 0.6)$; (d) $(0.4, 0.2)$.
#
# <details><summary>Answer</summary>
#
# (a). $R_1 = I + \bar A_1$, and the CLS row of $R_2 = R_1 + \bar A_2 R_1$ is
# $(1.1, 0, 0) + 0.2\,(0, 1, 0) + 0.4\,(0, 0.5, 1) = (1.1, 0.4, 0.4)$: patch 1 gets 0.2 directly and
# $0.4 \times 0.5 = 0.2$ through patch 2 (the worked example's cell asserts it).
#
# </details>
#
# **3.** `targets` has shape `(4, 2)` (two classes for each of 4 images). What is the shape of
# `gu.explain(model, images, target=targets).relevance["image"]`?
# (a) `(4, 64)`; (b) `(2, 4, 64)`; (c) `(4, 2, 64)`; (d) `(4, 2, 65)`.
#
# <details><summary>Answer</summary>
#
# (c). One raw CLS row over the 64 patches per image and per target; with a single target (the
# default, the predicted class) the `K` axis is dropped and the shape is `(4, 64)`.
#
# </details>
#
# **4.** Attention Grad-CAM draws a blank panel for most scenes of the batch. What does that mean?
# (a) a bug in the recording; (b) the model's prediction is wrong; (c) the object is too small to
# detect; (d) the method's own degenerate case: heads weighted by their mean gradient, the weighted
# sum clamped at 0, so negative weights give an all-zero map.
#
# <details><summary>Answer</summary>
#
# (d). The printed count shows how often its maps are all zero; a blank map ranks all pixels
# equally, which is why its perturbation AUCs sit near the random row.
#
# </details>

# %% [markdown]
# ## Exercises
# - `01_vit_ex_01.py` (20 min): take the gradient out of Eq. 5, predict what moves, and measure how
#   often the maps still land on their own object (solution: `01_vit_sol_01.py`).
# - `01_vit_ex_02.py` (20 min): switch the classifier to mean pooling, predict which rows of the last
#   layer's $\bar A$ become non-zero, and find the row of $R$ to read instead of CLS (solution:
#   `01_vit_sol_02.py`).
#
# ## Take-aways
# - Eq. 5: $\bar A = \mathbb{E}_h[(\nabla A \odot A)^+]$, one gradient-weighted map per layer;
#   Eq. 6: $R \leftarrow R + \bar A R$ from $R = I$. The explanation is the CLS row of $R$.
# - The gradient makes the map class-specific; the identity is the residual connection; the CLS
#   row is read because the classifier reads the CLS token.
# - $\bar A$ is small next to $I$: look at $R - I$ and at raw values, not only at min-max pictures.
# - On this model GAE beats raw attention, rollout, attention Grad-CAM and its own last-layer
#   ablation on every metric of the table above; attention Grad-CAM is often blank by construction.
