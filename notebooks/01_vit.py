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
# # 01 · How a vision transformer decides
#
# Generic Attention-model Explainability (GAE; Chefer, Gur & Wolf, ICCV 2021) explains a
# transformer with its own attention maps: every layer's attention `A` is weighted by the
# gradient of the explained score, `Abar = mean_h (dA * A)^+` (Eq. 5), and the relevancy
# `R = I` is updated layer by layer, `R += Abar @ R` (Eq. 6). The explanation of a ViT is the CLS
# row of `R` over the image patches.
#
# This notebook uses `shapes-vit`, a small timm ViT trained by this repository on ShapesWorld
# scenes (coloured shapes on textured backgrounds), so every explanation can be checked against
# the object's true mask. Set `GAE_SMOKE=1` for a quick run.

# %%
import os

import matplotlib.pyplot as plt
import torch

import gae_utils as gu
from gae_utils.methods import method_label
from gae_workbook import figures, widgets, zoo
from gae_workbook.evaluate import evaluate_vit, format_table
from gae_workbook.metrics import PERTURBATION_STEPS
from shapesworld.scenes import CLASS_NAMES, ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
_ = torch.manual_seed(0)

# %% [markdown]
# ## The model and its held-out accuracy
# The card stored beside the checkpoint records how it was trained and what it scored on scenes
# it never saw (exact match: all 16 present/absent decisions right).

# %%
model = zoo.load("shapes-vit")
model.card.training["heldout"]

# %% [markdown]
# ## One scene, step by step
# We record one forward pass and one backward pass for the predicted class, then look at each
# layer's `Abar` and at `R` after each layer.

# %%
world = ShapesWorld(seed=2024)
scene = world.scene(3)
batch = ShapesBatch.from_scenes([scene])
rec = gu.record(model, batch.images, keep_heads=True)
target = int(rec.target[0, 0])
print("objects:", [o.name for o in scene.objects], "| explaining:", CLASS_NAMES[target])
fig = widgets.render_steps(rec, batch.images, index=0, target=0)
figures.save_figure(fig, "01_steps")

# %% [markdown]
# ## Class-specific explanations
# A scene with two objects has two classes present. Explaining each class separately (two
# targets of one call, K=2) should highlight a different object each time: the paper's
# cat-and-dog example, in our world.

# %%
two = [s for s in world.scenes(60) if len(s.objects) == 2][:4]
pairs = ShapesBatch.from_scenes(two)
targets = torch.tensor([[o.label for o in s.objects] for s in two])  # (4, 2)
exp = gu.explain(model, pairs.images, target=targets)
titles = [[f"GAE: {CLASS_NAMES[t]}" for t in row.tolist()] for row in targets]
fig = figures.plot_panels(pairs.images, exp.heatmap(64), titles)
figures.save_figure(fig, "01_class_specific")

# %% [markdown]
# ## GAE beside the baselines
# All five methods come from the same recording: raw attention (last layer), rollout, attention
# Grad-CAM, GAE with only the last layer (ablation), and GAE.

# %%
rec2 = gu.record(model, pairs.images, target=targets)
columns = {method_label(m): rec2.explanation(m).heatmap(64)[:, 0] for m in gu.METHODS}
fig = figures.plot_heatmap_grid(pairs.images, columns, row_labels=[CLASS_NAMES[t] for t in targets[:, 0].tolist()])
figures.save_figure(fig, "01_methods")

# %% [markdown]
# ## Measured against ground truth
# Every class present in each scene is explained and scored against its mask: pointing game,
# relevance mass, segmentation, and the perturbation tests of `evaluation.md` (pixels removed
# most-relevant-first: lower AUC is better; least-relevant-first: higher is better).

# %%
results, curves = evaluate_vit(model, n=40 if SMOKE else 300, seed=7)
print(format_table(results))

# %%
fig, axes = plt.subplots(1, 2, figsize=(figures.PANEL * 4, figures.PANEL * 1.6), layout="constrained")
for i, (name, better) in enumerate([("positive", "lower is better"), ("negative", "higher is better")]):
    figures.plot_perturbation_curves(
        {m: c[i] for m, c in curves.items()},
        PERTURBATION_STEPS,
        f"{name} perturbation ({better})",
        auc={m: results[m]["pos_auc" if i == 0 else "neg_auc"] for m in results},
        ax=axes[i],
    )
figures.save_figure(fig, "01_perturbation")

# %% [markdown]
# ## Explore
# Pick an example, a class, a method and a layer view; the sliders re-render from one recording.

# %%
explore_batch = ShapesBatch.from_scenes(two[:2])
widgets.explorer(model, explore_batch.images, class_names=CLASS_NAMES)

# %% [markdown]
# ## Real photos with a pretrained ViT (when weights can be downloaded)
# With network access, timm's pretrained `vit_base_patch16_224` explains photos that ship with
# scikit-image. Offline, this cell says so and moves on.

# %%
try:
    vit_b = zoo.load("vit_base_patch16_224", pretrained=True)
except zoo.PretrainedUnavailableError as err:
    print(err)
else:
    from gae_workbook.photos import imagenet_label, photo_batch

    photos, inputs = photo_batch(vit_b)
    with torch.no_grad():
        top2 = vit_b(inputs).topk(2).indices  # (B, 2): explain the two most likely classes
    exp = gu.explain(vit_b, inputs, target=top2)
    titles = [[f"GAE: {imagenet_label(int(t))[:24]}" for t in row] for row in top2]
    fig = figures.plot_panels(photos, exp.heatmap(224), titles)
    figures.save_figure(fig, "01_pretrained_photos")
