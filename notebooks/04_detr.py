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
# # 04 · DETR: which pixels made the detector see this object?
#
# DETR is an encoder-decoder transformer: the encoder's self-attention mixes the backbone's
# feature-grid tokens ("image"), the decoder's self-attention mixes the object queries ("query"),
# and its cross-attention lets each query read the image tokens. GAE runs the self-attention rule
# (Eq. 6-7) on both and the cross-attention rule with the residual normalisation (Eq. 8-11) on the
# decoder's cross-attention; a detected object is explained through its query's class logit, and
# its map is row k of `R[query, image]`, reshaped to the feature grid.
#
# `shapes-detr` is a tiny Hugging Face `DetrForObjectDetection` trained by this repository on
# ShapesWorld boxes (`python -m gae_workbook.train shapes-detr`). Set `GAE_SMOKE=1` for a quick run.

# %%
import os

import matplotlib.pyplot as plt
import torch

import gae_utils as gu
from gae_utils.methods import method_label
from gae_workbook import figures, views, widgets, zoo
from gae_workbook.detection import box_matched_queries, detect, otsu_foreground
from gae_workbook.evaluate import evaluate_detr, format_table
from shapesworld.inputs import detr_pixels
from shapesworld.scenes import CLASS_NAMES, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
METHODS = gu.method_names()

# %% [markdown]
# ## The detector and its held-out mAP@0.5
# Measured at the end of training on 1,000 scenes it never saw.

# %%
detr = zoo.load("shapes-detr")
detr.card.training["heldout"]

# %% [markdown]
# ## Every detected object, explained in one call
# `gu.record` with no target explains every confident detection (class probability > 0.5,
# "no object" excluded) of every image: one forward pass, one backward per detection slot for the
# whole batch. Images may hold different numbers of detections.

# %%
world = ShapesWorld(seed=99)
batch = world.batch(3 if SMOKE else 6)
pixels = detr_pixels(batch.images)  # normalised RGB + x, y coordinate channels
for b, found in enumerate(detect(detr, pixels)):
    print(f"image {b}:", [f"{CLASS_NAMES[c]} {p:.2f}" for c, p in zip(found.labels.tolist(), found.scores.tolist())])
rec = views.explore_detr(detr, pixels)  # every confident detection
print("explained queries per image:", rec.extra["queries"])
for i in range(2 if SMOKE else 4):
    fig = widgets.render_detections(rec, batch.images, index=i, class_names=CLASS_NAMES)
    figures.save_figure(fig, f"04_detr_detections_{i}")

# %% [markdown]
# ## GAE beside the baselines
# One row per detection of the first images; raw attention is the last decoder layer's
# cross-attention row averaged over heads, attention Grad-CAM weighs its heads by their gradients.

# %%
size = tuple(batch.images.shape[-2:])
slots = [(b, k) for b, row in enumerate(rec.extra["queries"][:3]) for k, q in enumerate(row) if q >= 0]
columns = {
    method_label(m): torch.stack([rec.explanation(m).heatmap(size)[b, k] for b, k in slots]) for m in METHODS
}
labels = [CLASS_NAMES[int(rec.target[b, k])] for b, k in slots]
fig = figures.plot_heatmap_grid(batch.images[[b for b, _ in slots]], columns, row_labels=labels)
figures.save_figure(fig, "04_detr_methods")

# %% [markdown]
# ## How the decoder mixes queries: `R[query, query]`
# Row k of `R[query, query]` says which object queries the explained query drew on through the
# decoder's self-attention (Eq. 6 on the query modality; the cross-attention adds nothing to it
# because `R[image, query]` stays 0). Left: the full map for one detection; right: one detection's
# map, its mixing row and the last cross-attention row of its query.

# %%
gae = rec.explanation("gae")
fig, ax = plt.subplots(figsize=(figures.PANEL * 1.4, figures.PANEL * 1.2), layout="constrained")
artist = figures.plot_matrix(ax, gae.maps[("query", "query")][0, 0], "R[query, query], detection 0 of image 0")
ax.set_xlabel("object query")
ax.set_ylabel("object query")
fig.colorbar(artist, ax=ax, shrink=0.8)
figures.save_figure(fig, "04_detr_query_matrix")
fig = widgets.render_detr_query(rec, batch.images, index=0, detection=0, class_names=CLASS_NAMES)
figures.save_figure(fig, "04_detr_query_mixing")

# %% [markdown]
# ## Weakly supervised segmentation against the ground truth
# The paper's DETR protocol: each detected object's map (upsampled, min-max normalised) is
# thresholded with Otsu's method and compared with the mask of the object it detected.
# First a few objects, then mIoU and pixel accuracy over fresh scenes, with the pointing game.

# %%
with torch.no_grad():
    boxes = detr(pixel_values=pixels).pred_boxes
matched = box_matched_queries(boxes, batch.scenes)  # (query, object) pairs with box IoU >= 0.5
rows, heat, otsu, truth = [], [], [], []
maps = gae.heatmap(size)  # (B, K, H, W)
for b, scene in enumerate(batch.scenes[:3]):
    explained = rec.extra["queries"][b]
    for q, o in matched[b]:
        if q not in explained:
            continue
        k = explained.index(q)
        rows.append(b)
        heat.append(maps[b, k])
        otsu.append(otsu_foreground(maps[b, k]).float())
        truth.append(torch.from_numpy(scene.objects[o].mask.copy()).float())
if rows:
    fig = figures.plot_heatmap_grid(
        batch.images[rows],
        {"GAE map": torch.stack(heat), "Otsu foreground": torch.stack(otsu), "ground truth": torch.stack(truth)},
        colorbar=False,
    )
    figures.save_figure(fig, "04_detr_segmentation_examples")

# %%
results = evaluate_detr(detr, n=25 if SMOKE else 300, seed=7, methods=METHODS)
print(format_table(results))

# %% [markdown]
# ## Explore
# Image, detection, method, decoder layer, head (or the mean over heads) and what the layer view
# shows: the attention probabilities of the query's row or its Eq. 5 map `(dA * A)^+`.

# %%
widgets.detr_explorer(detr, pixels, batch.images, class_names=CLASS_NAMES)

# %% [markdown]
# ## Hugging Face DETR-R50 on photos (when pretrained weights can be downloaded)

# %%
try:
    detr_r50 = zoo.load("facebook/detr-resnet-50", pretrained=True)
except zoo.PretrainedUnavailableError as err:
    print("pretrained DETR unavailable offline:", str(err)[:160])
else:
    from gae_workbook.photos import load_photos

    photos = load_photos(["astronaut", "coffee"], size=512)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    coco = views.explore_detr(detr_r50, (photos - mean) / std, target=None)
    names = [detr_r50.config.id2label[i] for i in range(len(detr_r50.config.id2label))]
    for i in range(len(photos)):
        fig = widgets.render_detections(coco, photos, index=i, class_names=names)
        figures.save_figure(fig, f"04_detr_r50_photo_{i}")
