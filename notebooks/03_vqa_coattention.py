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
# # 03 · Co-attention VQA: how relevance flows between the question and the image
#
# A two-stream model (LXMERT) reads the question and the image regions in separate streams,
# each with its own self-attention, and lets them meet in cross-modality layers where text attends
# to image and image attends to text. GAE keeps four relevancy maps, `R[t, t]`, `R[t, i]`,
# `R[i, t]` and `R[i, i]`, starting from identities and zeros:
#
# - a self-attention layer of a stream updates that stream's rows (Eq. 6-7);
# - a cross-attention layer adds `Rbar[s, s]^T Abar Rbar[q, q]` to `R[s, q]` (Eq. 10, with the
#   residual normalisation of Eq. 8-9) and `Abar R[q, s]` to `R[s, s]` (Eq. 11); the two directions
#   of one block are computed from the same maps, then added together.
#
# The answer is read at the question's `[CLS]` token: the image explanation is its row of
# `R[t, i]`, the text explanation its row of `R[t, t]` (with `[CLS]` itself zeroed).
#
# `shapes-vqa` is a small Hugging Face `LxmertForQuestionAnswering` trained by this repository on
# ShapesWorld questions. LXMERT reads regions proposed by an object detector; here the regions are
# the 16 cells of a 4 x 4 grid, each described by its pixels. Set `GAE_SMOKE=1` for a quick run.

# %%
import os

import matplotlib.pyplot as plt

import gae_utils as gu
from gae_workbook import figures, views, widgets, zoo
from gae_workbook.evaluate import VQA_STEPS, evaluate_vqa, format_table, vqa_word_study
from shapesworld.inputs import region_heatmap, vqa_inputs
from shapesworld.language import ANSWERS, Vocabulary, questions
from shapesworld.scenes import ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"

# %% [markdown]
# ## The model and its held-out answer accuracy
# One question per held-out scene, 1,000 scenes, measured at the end of training.

# %%
vqa = zoo.load("shapes-vqa")
vqa.card.training["heldout"]

# %% [markdown]
# ## One image, several questions
# Each question refers to different objects, so each gets its own image map (the `[CLS]` row of
# `R[t, i]`) and its own word strip (the `[CLS]` row of `R[t, t]`).

# %%
vocab = Vocabulary.questions()
world = ShapesWorld(seed=123)
scene = next(s for s in world.scenes(200) if len(s.objects) == 3 and len({o.shape for o in s.objects}) == 3)
asked = questions(scene)
by_kind = {}
for q in asked:
    if q.kind not in by_kind or (q.kind == "exists" and q.answer == "yes"):
        by_kind[q.kind] = q
chosen = list(by_kind.values())
image = ShapesBatch.from_scenes([scene] * len(chosen)).images
x = vqa_inputs(image, chosen, vocab)
rec = gu.record(vqa, x, keep_heads=True)  # one forward and backward serve every figure of this scene
exp = rec.explanation("gae")
predicted = [ANSWERS[k] for k in exp.target.tolist()]
titles = [[f"{q.text}?\n-> {p} (truth: {q.answer})" for q, p in zip(chosen, predicted)]]
fig = figures.plot_panels(image[:1], region_heatmap(exp.relevance["image"], 64)[None], titles)
figures.save_figure(fig, "03_vqa_image_per_question")

# %%
fig, axes = plt.subplots(len(chosen), 1, figsize=(figures.PANEL * 3, 0.55 * len(chosen)), layout="constrained")
for k, (ax, q) in enumerate(zip(axes, chosen)):
    figures.plot_token_relevance(ax, q.words, exp.relevance["text"][k, 1 : 1 + len(q.words)], title=None)
fig.suptitle("word relevance for the predicted answer ([CLS] row of R[t, t])")
figures.save_figure(fig, "03_vqa_words_per_question")

# %% [markdown]
# ## How relevance flows between the streams
# The four maps for the first question: after the single-stream layers, after each co-attention
# block (its two cross-attentions merged in one step) and at the end. The self maps are shown minus
# their identity start; `R[t, i]` stays zero until the first cross-modality block lets the
# question attend to the image. The explorer below steps through every layer.

# %%
tokens = [["[CLS]", *q.words, "[SEP]"] + ["[PAD]"] * (x["input_ids"].shape[1] - len(q.words) - 2) for q in chosen]
steps = views.flow_steps(rec)
for i, label in enumerate(steps):
    print(i, label)
after_blocks = [i for i, label in enumerate(steps) if "cross" in label]  # each co-attention block
shown = sorted({after_blocks[0] - 1, *after_blocks, len(steps) - 1})
fig = widgets.render_flow(rec, index=0, target=0, steps=shown, tokens=tokens[0])
figures.save_figure(fig, "03_vqa_flow")

# %% [markdown]
# ## Perturbation tests and ground truth
# Remove image regions (or question words; `[CLS]` and `[SEP]` stay) most relevant first
# (positive: accuracy should fall fast) or least relevant first (negative: it should hold), at the
# LXMERT steps of the paper. Ground truth: do the image maps point at the objects the question
# refers to, and is a key word of the question (the shape in "what colour is the triangle") the
# most relevant word? The workbook scores 300 held-out questions (`python -m gae_workbook.evaluate
# --model shapes-vqa` runs the same code).

# %%
results, curves = evaluate_vqa(vqa, n=40 if SMOKE else 300, seed=7)
print(format_table(results))

# %% [markdown]
# On this model GAE does not win here. Explaining the answer's *logit* (as the paper does) credits
# evidence that raises every answer of the question's kind; explaining its log-probability (what
# favours this answer over the others) moves GAE's image maps much closer to the objects.

# %%
results_lp, _ = evaluate_vqa(vqa, n=40 if SMOKE else 300, seed=7, score="log_prob")
print(format_table(results_lp))

# %% [markdown]
# ## Why GAE's words are not the key words
# Two effects, both measured on the same questions:
#
# - **Which word comes first.** When GAE misses the key word, its first word is nearly always the
#   one that names the question's kind: "colour", "shape", "many", "there". That word raises the
#   logit of *every* answer of its kind, so it is what the logit depends on most.
# - **How large the gradients are.** GAE starts from `R = I` and adds `Abar @ R` at every layer.
#   Here the `[CLS]` row of Eq. 5's `Abar` sums to a few hundredths in the language layers, next
#   to the identity's 1, so `R` is close to `I + sum_l Abar_l`: relevance that reaches `[CLS]`
#   through another word (a product of two layers' maps) is second order. Rollout mixes every
#   layer half-and-half with the identity whatever the gradients. Explaining the same scalar
#   times a constant (`Recording.scaled`, exact: Eq. 5 is linear in the gradient's scale) lets
#   those paths count.

# %%
ranks, tops = vqa_word_study(vqa, n=60 if SMOKE else 300, seed=7)
print(format_table(ranks))
for label in ("gae logit x1", "gae log_prob x1000", "rollout"):
    firsts = {kind: max(shares, key=shares.get) for kind, shares in sorted(tops[label].items())}
    print(f"{label:20s} most frequent first word:", {k: f"{w} ({tops[label][k][w]:.0%})" for k, w in firsts.items()})

# %%
fig = figures.plot_target_scale(ranks)
figures.save_figure(fig, "03_vqa_target_scale")

# %%
fig, axes = plt.subplots(1, 4, figsize=(figures.PANEL * 7.2, figures.PANEL * 1.6), layout="constrained")
panels = [("image", "positive", 0), ("image", "negative", 1), ("text", "positive", 2), ("text", "negative", 3)]
for ax, (what, sign, row) in zip(axes, panels):
    key = f"{what}_{sign[:3]}_auc"
    figures.plot_perturbation_curves(
        {m: c[row] for m, c in curves.items()},
        VQA_STEPS,
        f"{what} tokens, {sign}",
        auc={m: r[key] for m, r in results.items()},
        ax=ax,
        xlabel=f"fraction of {'regions' if what == 'image' else 'words'} removed",
        ylabel="answer accuracy",
    )
    ax.legend(frameon=False, fontsize=6)
figures.save_figure(fig, "03_vqa_perturbation")

# %% [markdown]
# ## Explore
# Pick a question, an answer to explain, a map and its row token, then walk through the
# propagation steps, or look at one head's `(dA * A)+` at one layer.

# %%
top = rec.logits.topk(3, dim=-1).indices  # (B, 3): the three most likely answers of each question
explore = gu.record(vqa, x, target=top, keep_heads=True)
widgets.coattention_explorer(explore, image, tokens, target_names=[f"answer #{k + 1}" for k in range(3)])

# %% [markdown]
# ## Single-stream models
# ViLT and VisualBERT concatenate words and image tokens into one stream; GAE then keeps a single
# map over the joint sequence and reads its blocks: the `[CLS]` row over the words (`R[t, t]`)
# and over the image tokens (`R[t, i]`). ViLT feeds its patches in a random order; the adapter
# puts the relevance back on the patch grid. With network access the pretrained ViLT VQA model
# runs on a photo:

# %%
try:
    from transformers import ViltForQuestionAnswering, ViltProcessor

    with zoo.offline_unless_reachable():
        vilt = ViltForQuestionAnswering.from_pretrained("dandelin/vilt-b32-finetuned-vqa").eval()
        processor = ViltProcessor.from_pretrained("dandelin/vilt-b32-finetuned-vqa")
except OSError as err:
    print("pretrained ViLT unavailable offline:", str(err)[:160])
else:
    from gae_workbook.photos import load_photos

    photo = load_photos(["chelsea"], size=384)
    inputs = processor(images=list(photo), text=["what animal is this?"], return_tensors="pt", do_rescale=False)
    vexp = gu.explain(vilt, dict(inputs))
    answer = vilt.config.id2label[int(vexp.target[0])]
    fig = figures.plot_panels(photo, vexp.heatmap(384)[:, None], [[f"what animal is this? -> {answer}"]])
    figures.save_figure(fig, "03_vilt_photo")
