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
# **Learning objectives.** After this notebook you can
#
# 1. write the four relevancy maps of a two-stream model and say which layer writes which block;
# 2. state the cross-attention rule (Eq. 10-11) and the normalisation `Rbar` (Eq. 8-9), compute them
#    by hand on a 2 x 2 example, and say why the normalisation exists;
# 3. re-implement GAE on a co-attention model as a loop over the recorded layers and check it against
#    the library;
# 4. recognise a failure case (maps pointing at the wrong object) and name its cause: the explained
#    scalar.
#
# **Estimated time:** 60-75 minutes (the sections marked *optional* add 15 minutes). Prerequisite:
# notebook 01 (Eq. 5-6). The rules are written out in full in [`docs/rules.md`](../docs/rules.md),
# the metrics in [`docs/evaluation.md`](../docs/evaluation.md).
#
# A two-stream model (LXMERT) reads the question and the image regions in separate streams, each with
# its own self-attention, and lets them meet in co-attention blocks where text attends to image and
# image attends to text. `shapes-vqa` is a small Hugging Face `LxmertForQuestionAnswering` trained by
# this repository on ShapesWorld questions. LXMERT reads regions proposed by an object detector; here
# the regions are the 16 cells of a 4 x 4 grid, each described by its pixels. Set `GAE_SMOKE=1` for a
# quick run.

# %%
import os
from itertools import groupby
from pathlib import Path

import torch

import gae_utils as gu
from gae_utils import rules
from gae_workbook.evaluate import VQA_STEPS, cached_results, evaluate_vqa, format_table, vqa_word_study
from gae_workbook.evaluation.metrics import masks_to_grid, pointing_game
from gae_workbook.exploration import figures, widgets
from gae_workbook.models import zoo
from shapesworld.inputs import vqa_inputs
from shapesworld.language import ANSWERS, Vocabulary, questions
from shapesworld.scenes import ShapesBatch, ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
# The evaluation cells load committed results (notebooks/results/); set RECOMPUTE = True (or
# GAE_RECOMPUTE=1) to recompute them: about 3 minutes on 2 cores.
RECOMPUTE = os.environ.get("GAE_RECOMPUTE", "0") == "1"
RESULTS = Path("results")

# %% [markdown]
# ## The rules, with shapes
# Write `t` for the question's tokens (`T` of them, `[CLS]` first) and `i` for the image regions
# (`I = 16`). GAE keeps four maps, one per ordered pair of streams; row = the token being explained,
# column = the token it draws on:
#
# $$R^{tt} \in \mathbb{R}^{T\times T},\quad R^{ti} \in \mathbb{R}^{T\times I},\quad
#   R^{it} \in \mathbb{R}^{I\times T},\quad R^{ii} \in \mathbb{R}^{I\times I},\qquad
#   R^{tt} = I,\; R^{ii} = I,\; R^{ti} = 0,\; R^{it} = 0 \text{ at the start.}$$
#
# Every layer first makes its Eq. 5 map from its attention `A` and the gradient of the explained
# scalar, $\bar A = \mathbb{E}_h[(\nabla A \odot A)^+]$ (shape `(Nq, Nk)`, rows = queries). Then:
#
# **Self-attention of stream `s`** (`s` is `t` or `i`; $\bar A \in \mathbb{R}^{N_s\times N_s}$) updates
# the whole row band of `s`:
#
# $$R^{ss} \mathrel{+}= \bar A\, R^{ss} \quad\text{(Eq. 6)},\qquad
#   R^{sq} \mathrel{+}= \bar A\, R^{sq} \quad\text{(Eq. 7)}.$$
#
# **Cross-attention from `s` to `q`** (queries from `s`, keys from `q`;
# $\bar A \in \mathbb{R}^{N_s\times N_q}$) writes two blocks:
#
# $$R^{sq} \mathrel{+}= (\bar R^{ss})^{\top}\, \bar A\, \bar R^{qq} \quad\text{(Eq. 10)},\qquad
#   R^{ss} \mathrel{+}= \bar A\, R^{qs} \quad\text{(Eq. 11)},$$
#
# with shapes $(N_s\times N_s)(N_s\times N_q)(N_q\times N_q)$ and $(N_s\times N_q)(N_q\times N_s)$.
# In a co-attention block both directions (`t -> i` and `i -> t`) are computed from the maps as they
# were *before* the block, then added.
#
# **The normalisation (Eq. 8-9).** A self map is the identity plus what the self-attention layers
# added: $R^{ss} = I + \hat R^{ss}$. Eq. 10 uses it with the context part of each row rescaled to sum 1:
#
# $$\hat R^{ss} = R^{ss} - I \quad\text{(Eq. 8)},\qquad
#   \bar R^{ss}_{jk} = \frac{\hat R^{ss}_{jk}}{\sum_{k'} \hat R^{ss}_{jk'}} + I_{jk} \quad\text{(Eq. 9)}.$$
#
# *Why.* $\hat R^{ss}$ has no fixed scale: it grows with the number of layers and with the size of
# the gradients (Eq. 5 is linear in them; in this model the `[CLS]` row of $\bar A$ sums to a few
# hundredths). Without Eq. 8-9, Eq. 10 would mostly pass $\bar A$ through the identity when the
# gradients are small, or let the accumulated context swamp it when they are large. After Eq. 9 each
# row is "the token itself (weight 1) plus its context (weight 1 in total)", whatever the scale. A row
# that no layer touched yet (context sum 0) stays an identity row.
#
# **Reading the answer.** The answer is read at the question's `[CLS]` token: the image explanation is
# its row of $R^{ti}$, the text explanation its row of $R^{tt}$ (with `[CLS]` itself zeroed).
#
# The diagram shows, for each attention type of this model, which blocks of `R` it writes.

# %%
figures.set_style()
fig = figures.plot_rule_blocks(
    ["text", "image"],
    [
        ("self-attention of text", {("text", "text"): "Eq. 6", ("text", "image"): "Eq. 7"}),
        ("self-attention of image", {("image", "image"): "Eq. 6", ("image", "text"): "Eq. 7"}),
        ("cross-attention text → image", {("text", "image"): "Eq. 10", ("text", "text"): "Eq. 11"}),
        ("cross-attention image → text", {("image", "text"): "Eq. 10", ("image", "image"): "Eq. 11"}),
    ],
    title="which blocks of R each attention type of LXMERT writes",
)
_ = figures.save_figure(fig, "03_rule_blocks")

# %% [markdown]
# **What to notice.** A self-attention layer never writes the other stream's rows; only the two
# cross-attentions let relevance cross between the streams. Before the first co-attention block
# $R^{ti} = 0$, so the self-attention of the text stream (Eq. 7, $\bar A R^{ti}$) adds nothing to it
# either: the question's `[CLS]` row over the image starts at the first co-attention block.
#
# *Predict before you run:* at the first co-attention block, $R^{it} = 0$. What does Eq. 11 add to
# $R^{tt}$ there?
#
# ## Eq. 8-11 by hand, on 2 x 2 maps
# Two text tokens (`s`), two regions (`q`). The text stream's self-attention has added
# $\hat R^{ss} = \begin{pmatrix}0.2 & 0.2\\ 0 & 0\end{pmatrix}$ (token 0 drew on itself and on token 1;
# token 1 was never touched); the image stream is untouched ($R^{qq} = I$); an earlier block left
# $R^{qs} = \begin{pmatrix}0.2 & 0\\ 0 & 0.4\end{pmatrix}$; and the cross-attention's Eq. 5 map has
# gradient only in the `[CLS]` row, $\bar A = \begin{pmatrix}0.1 & 0.3\\ 0 & 0\end{pmatrix}$.
#
# - Eq. 8-9: row 0 of $\hat R^{ss}$ sums to 0.4, so it becomes $(0.5, 0.5)$; row 1 sums to 0 and stays
#   0. $\bar R^{ss} = \begin{pmatrix}1.5 & 0.5\\ 0 & 1\end{pmatrix}$, $\bar R^{qq} = I$.
# - Eq. 10: $(\bar R^{ss})^\top \bar A \bar R^{qq} = \begin{pmatrix}1.5 & 0\\ 0.5 & 1\end{pmatrix}
#   \begin{pmatrix}0.1 & 0.3\\ 0 & 0\end{pmatrix} = \begin{pmatrix}0.15 & 0.45\\ 0.05 & 0.15\end{pmatrix}$:
#   the transpose gives token 1 a share (0.5) of the cross-attention of token 0, which drew on it.
# - Eq. 11: $\bar A R^{qs} = \begin{pmatrix}0.1\cdot0.2 & 0.3\cdot0.4\\ 0 & 0\end{pmatrix} =
#   \begin{pmatrix}0.02 & 0.12\\ 0 & 0\end{pmatrix}$.
#
# The library's rules (`gae_utils.rules`) must give the same numbers, and our own 4-line `rbar` must
# match its Eq. 8-9:

# %%
R_ss = torch.tensor([[1.2, 0.2], [0.0, 1.0]])  # I + Rhat_ss
R_qq = torch.eye(2)
R_qs = torch.tensor([[0.2, 0.0], [0.0, 0.4]])
R_sq = torch.zeros(2, 2)
A_bar = torch.tensor([[0.1, 0.3], [0.0, 0.0]])  # (Ns, Nq): only the [CLS] row has gradient


def rbar(R: torch.Tensor) -> torch.Tensor:
    """Eq. 8-9: subtract I, rescale each row's context part to sum 1 (rows summing to 0 stay 0), add I."""
    eye = torch.eye(R.shape[-1])
    context = R - eye  # Eq. 8
    total = context.sum(-1, keepdim=True)
    return torch.where(total == 0, context, context / total) + eye  # Eq. 9


delta_sq, delta_ss = rules.cross_attention_update(R_sq, R_ss, R_qq, R_qs, A_bar)
print("Rbar_ss =", rbar(R_ss).tolist())
print("Eq. 10 adds", delta_sq.tolist(), "\nEq. 11 adds", delta_ss.tolist())
assert torch.allclose(rbar(R_ss), torch.tensor([[1.5, 0.5], [0.0, 1.0]]))
assert torch.allclose(rbar(R_ss), rules.normalize_self_relevancy(R_ss))
assert torch.allclose(delta_sq, torch.tensor([[0.15, 0.45], [0.05, 0.15]]))
assert torch.allclose(delta_ss, torch.tensor([[0.02, 0.12], [0.0, 0.0]]))
# why Eq. 8-9: a self map whose context part is 10 times larger normalises to the same Rbar ...
R_big = torch.eye(2) + 10 * (R_ss - torch.eye(2))
assert torch.allclose(rbar(R_big), rbar(R_ss))
quiz = torch.eye(3) + torch.tensor([[0.1, 0.3, 0.1], [0, 0, 0], [0, 0, 0]])  # quiz question 3
assert torch.allclose(rbar(quiz)[0], torch.tensor([1.2, 0.6, 0.2])) and torch.allclose(
    rbar(10 * quiz - 9 * torch.eye(3)), rbar(quiz)
)
# ... while without it Eq. 10's addition changes with that scale
no_norm, _ = rules.cross_attention_update(R_sq, R_big, R_qq, R_qs, A_bar, normalize=False)
print("without Eq. 8-9, the x10 self map gives", no_norm.tolist())

# %% [markdown]
# ## The model and its held-out answer accuracy
# One question per held-out scene, 1,000 scenes, measured at the end of training.

# %%
vqa = zoo.load("shapes-vqa")
vqa.card.training["heldout"]

# %% [markdown]
# ## The rules as a loop over the recording, checked against the library
# `gu.record` runs one forward and one backward pass and keeps, per attention layer, its kind
# (`self`/`cross`), its query and key streams, its co-attention block (`group`), and with
# `keep_heads=True` the per-head attention `attn` `(B, H, Nq, Nk)` and gradient `grad`
# `(B, K, H, Nq, Nk)`. The loop below is all of GAE on this model: Eq. 5, then Eq. 6-7 or Eq. 10-11,
# the two directions of a co-attention block computed from the same maps.

# %%
vocab = Vocabulary.questions()
world = ShapesWorld(seed=123)
scene = next(s for s in world.scenes(200) if len(s.objects) == 3 and len({o.shape for o in s.objects}) == 3)
by_kind = {}
for q in questions(scene):
    if q.kind not in by_kind or (q.kind == "exists" and q.answer == "yes"):
        by_kind[q.kind] = q
chosen = list(by_kind.values())  # one question of each kind about this scene
batch = ShapesBatch.from_scenes([scene] * len(chosen))
image = batch.images
x = vqa_inputs(image, chosen, vocab)
rec = gu.record(vqa, x, keep_heads=True)  # explains each question's predicted answer (its logit)

streams = {"text": x["input_ids"].shape[1], "image": x["visual_feats"].shape[1]}
B, K = len(chosen), 1
R = {
    (a, b): torch.eye(n).repeat(B, K, 1, 1) if a == b else torch.zeros(B, K, n, streams[b])
    for a, n in streams.items()
    for b in streams
}
for _, block in groupby(rec.layers, key=lambda layer: layer.group or layer.name):  # a co-attention block = 2 layers
    additions = []
    for layer in block:
        A_bar = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(2)  # Eq. 5: (B, K, Nq, Nk)
        s, q = layer.query, layer.key
        if layer.kind == "self":
            additions += [((s, other), A_bar @ R[s, other]) for other in streams]  # Eq. 6, 7
        else:
            additions.append(((s, q), rbar(R[s, s]).mT @ A_bar @ rbar(R[q, q])))  # Eq. 10 (Eq. 8-9 inside)
            additions.append(((s, s), A_bar @ R[q, s]))  # Eq. 11
    for key, value in additions:
        R[key] = R[key] + value

exp = rec.explanation("gae")  # one target per question: its maps are (B, Na, Nb), without the K axis
for key, value in R.items():
    assert torch.allclose(value[:, 0], exp.maps[key], atol=1e-6), key
cls_image = R["text", "image"][:, 0, 0]  # (B, I): the [CLS] row of R[t, i]
assert torch.allclose(cls_image, exp.relevance["image"], atol=1e-6)
print("the loop reproduces gu's four maps; the [CLS] row of R[t, i] is exp.relevance['image']", tuple(cls_image.shape))

# %% [markdown]
# From here on we use the one-line API: `gu.explain(model, inputs)` (or `rec.explanation("gae")` on a
# recording), which runs exactly this loop.
#
# ## A failure case: one image, several questions
# Each question refers to different objects, so each should get its own image map (the `[CLS]` row
# of $R^{ti}$). The dashed outline marks the objects the question refers to. The first row explains
# each predicted answer's **logit**, as the paper does.

# %%
truth = torch.stack(
    [batch.masks[k, [scene.objects[o].label for o in q.referents]].any(0) for k, q in enumerate(chosen)]
)  # (Q, H, W) the objects each question refers to ("how many ..." may refer to none)
rec_lp = gu.record(vqa, x, target=lambda logits: logits.log_softmax(-1).max(-1).values)
rows = {
    "GAE, logit target": exp.relevance["image"],
    "GAE, log-prob. target": rec_lp.explanation("gae").relevance["image"],
    "rollout": rec.explanation("rollout").relevance["image"],
}
predicted = [ANSWERS[k] for k in exp.target.tolist()]
titles = [f"{q.text}?\n-> {p} (truth: {q.answer})" for q, p in zip(chosen, predicted)]
fig = figures.plot_region_maps(image[0], rows, titles, truth=truth)
_ = figures.save_figure(fig, "03_vqa_image_per_question")
regions = masks_to_grid(truth, (4, 4))  # (Q, 4, 4) regions holding pixels of a referred object
for label, relevance in rows.items():  # the evaluation's pointing game, per question (None: nothing referred)
    hit = pointing_game(relevance.reshape(-1, 4, 4), regions).tolist()
    print(f"{label:24s} argmax region on a referred object:", [h if t.any() else None for h, t in zip(hit, truth)])
# the claims below, checked on these numbers
referred = [k for k, t in enumerate(truth) if t.any()]  # "how many circles" refers to none
hits = {label: pointing_game(r.reshape(-1, 4, 4), regions)[referred] for label, r in rows.items()}
assert not hits["GAE, logit target"].any() and hits["GAE, log-prob. target"].all()
maxima = torch.cat([r.amax(-1) for r in rows.values()])  # each panel's raw maximum
print(f"panel maxima range from {float(maxima.min()):.1e} to {float(maxima.max()):.1e}")
assert maxima.max() / maxima.min() > 100  # orders of magnitude between the panels

# %% [markdown]
# **What to notice.**
#
# - With the logit target, GAE's maps **miss the object** for every question that refers to one (the
#   printed line, asserted in the cell): for "what colour is the square?" and "is there a yellow
#   square?" its most relevant region lies on the triangle. This scene is a bad case, but not a rare
#   one: the evaluation below counts how often GAE's logit maps miss over 300 questions.
# - The cause is the explained scalar. The logit of "yellow" is raised by anything that makes the
#   model answer *some* colour; the log-probability (logit minus the log-sum-exp over all answers)
#   only by what favours "yellow" over the other answers. With it, the same questions point at the
#   right objects (second row).
# - The panels' raw maxima span orders of magnitude (each panel's own maximum is printed under it,
#   their range in the last printed line): each panel is min-max normalised, so compare shapes
#   within a row, and magnitudes only through the printed values.
# - "how many circles are there?" (answer 0) refers to no object: there is no outline to hit.
#
# The word strips below are the `[CLS]` row of $R^{tt}$ for the same questions (`[CLS]` zeroed,
# `[SEP]` and padding left out), min-max normalised per strip.

# %%
strips = {"logit": exp.relevance["text"], "log-probability": rec_lp.explanation("gae").relevance["text"]}  # (Q, T)
fig = figures.plot_word_strips(strips, [q.words for q in chosen])
_ = figures.save_figure(fig, "03_vqa_words_per_question")

# %% [markdown]
# **What to notice.** The word that names the question's kind ("colour", "shape", "many") tends to
# come first with the logit target: it raises every answer of that kind. The section *Why GAE's words
# are not the key words* measures this.
#
# ## How relevance flows between the streams
# The four maps for the first question after the single-stream layers, after each co-attention block
# (its two cross-attentions applied together) and at the end, in raw values: the self maps minus their
# identity start, one colour scale per column.

# %%
fig = figures.plot_coattention_flow(rec, ["[CLS]", *chosen[0].words, "[SEP]"], example=0)  # rec.history() inside
_ = figures.save_figure(fig, "03_vqa_flow")
history = rec.history()  # the maps after every step; the claims below, checked
first_block = next(i for i, step in enumerate(gu.propagation.layer_steps(rec.layers)) if len(step) == 2)
before, after = history[first_block - 1], history[first_block]
assert not before["text", "image"].any() and not before["image", "text"].any()
assert torch.equal(before["text", "text"], after["text", "text"])
final = history[-1]
increments = {k: float((final[k, k] - torch.eye(final[k, k].shape[-1])).abs().max()) for k in ("text", "image")}
print("largest increment of the self maps over their identity start:", {k: f"{v:.3f}" for k, v in increments.items()})
assert max(increments.values()) < 1  # "small next to the identity", below

# %% [markdown]
# **What to notice.**
#
# - $R^{ti}$ and $R^{it}$ are exactly zero in the first row: no layer before the first co-attention
#   block connects the streams.
# - $R^{tt}$ does not change at the first co-attention block: Eq. 11 adds $\bar A R^{it}$, and
#   $R^{it}$ was still 0 (the answer to the prediction above).
# - The self maps' increments are small next to the identity they start from (their colour bars end
#   well below 1, the identity's value): most of $R^{ti}$ comes from the cross-attentions.
#
# ## Perturbation tests and ground truth
# Remove image regions (or question words; `[CLS]` and `[SEP]` stay) most relevant first (positive:
# accuracy should fall fast, lower AUC is better) or least relevant first (negative: it should hold,
# higher is better), at the LXMERT steps of the paper. Ground truth: do the image maps point at the
# objects the question refers to (`pointing`, `mass`), and is a key word of the question (the shape in
# "what colour is the triangle") the most relevant word (`text_top1`, `key_rank`)? The workbook scores
# 300 held-out questions; `python -m gae_workbook.evaluate --model shapes-vqa` runs the same code.
#
# Two rows are not methods of the paper: **random** (uniform random maps, the floor every method must
# beat) and **GAE without Eq. 8-9** (the normalisation ablation). **Rollout** on a two-stream model is
# not Abnar & Zuidema's rollout, which has no cross-attention rule: here it is this workbook's hybrid,
# Eq. 6-11 applied to the head-averaged attention with no gradients. **Attention Grad-CAM** weighs the
# heads of the last cross-attention by their mean gradient and keeps the positive part; when those
# weights are negative its map is all zero, which is why it sits near the random floor.

# %%
n_eval = 40 if SMOKE else 300
results, curves = cached_results(
    RESULTS / "03_vqa_logit.json", lambda: evaluate_vqa(vqa, n=n_eval, seed=7), RECOMPUTE, save=not SMOKE
)
print(format_table(results))
best = {column: max(results, key=lambda m: results[m][column]) for column in ("pointing", "text_top1")}
print("best pointing:", best["pointing"], "| best text_top1:", best["text_top1"])
# the sentence below, checked
assert results["gae"]["pointing"] < min(results["raw_attention"]["pointing"], results["rollout"]["pointing"])
assert results["rollout"]["text_top1"] > 2 * results["gae"]["text_top1"]

# %% [markdown]
# With the logit target GAE does not win here: raw attention and rollout point at the objects more
# often, and rollout finds the key words far more often. The same evaluation with the log-probability
# target:

# %%
results_lp, _ = cached_results(
    RESULTS / "03_vqa_log_prob.json",
    lambda: evaluate_vqa(vqa, n=n_eval, seed=7, score="log_prob"),
    RECOMPUTE,
    save=not SMOKE,
)
print(format_table(results_lp))
for label, table in (("logit", results), ("log-probability", results_lp)):
    miss = 1 - table["gae"]["pointing"]
    print(f"GAE, {label} target: the most relevant region misses the referred objects for {miss:.0%} of questions")
changed = [m for m in results if m != "random" and results[m] != results_lp[m]]
unchanged = [m for m in results if results[m] == results_lp[m]]
print("rows that change with the explained scalar:", changed, "| rows that do not:", unchanged)
# the paragraph below, checked
assert {"raw_attention", "rollout"} <= set(unchanged)
assert all(results_lp["gae"][k] > results["gae"][k] for k in ("pointing", "mass"))

# %% [markdown]
# **What to notice.** Compare the `gae` rows of the two tables: explaining the log-probability moves
# GAE's image maps closer to the objects (`pointing`, `mass`), near raw attention and rollout: the
# lesson of the failure case above at the scale of 300 questions. Raw attention and rollout use no
# gradients, so their rows do not change; every method that uses the gradient changes with it (the
# printed line lists them: GAE, its two ablations and attention Grad-CAM). The perturbation curves
# of the logit target:

# %%
panels = [  # (title, AUC column of the table, x axis) per test, in the order of the curves
    ("image tokens removed, positive order", "image_pos_auc", "fraction of regions removed"),
    ("image tokens removed, negative order", "image_neg_auc", "fraction of regions removed"),
    ("text tokens removed, positive order", "text_pos_auc", "fraction of words removed"),
    ("text tokens removed, negative order", "text_neg_auc", "fraction of words removed"),
]
fig = figures.plot_perturbation_panels(
    curves, results, VQA_STEPS, panels, ylabel="answer accuracy", legend_loc="lower left", legend_fontsize=7
)
_ = figures.save_figure(fig, "03_vqa_perturbation")
methods = [m for m in results if m != "random"]
winners = {
    column: (min if "pos" in column else max)(methods, key=lambda m: results[m][column]) for _, column, _ in panels
}
print(f"{sum(w == 'rollout' for w in winners.values())} of {len(panels)} panels won by rollout:", winners)
assert set(winners.values()) == {"rollout"}
assert all(abs(results["gae"][c] - results["gae_no_norm"][c]) < 1 for c in ("text_pos_auc", "text_neg_auc"))

# %% [markdown]
# **What to notice.** In the positive panels the lowest curve wins (the removed tokens mattered); in
# the negative panels the highest. The printed line names each panel's winner (here rollout, in all
# four, asserted); GAE and its no-normalisation ablation nearly coincide on the text panels. With 16
# regions and about 6 words, each step removes several tokens at once, so the curves are coarse: read
# the AUCs in the legend, not small gaps between curves.
#
# ## Why GAE's words are not the key words (*optional*)
# Two effects, both measured on the same 300 questions:
#
# - **Which word comes first.** When GAE misses the key word, its first word is often the one that
#   names the question's kind ("colour", "shape", "many"), or the article "a" for yes/no questions
#   (printed below with their shares). A kind word raises the logit of *every* answer of its kind,
#   so it is what the logit depends on most.
# - **How large the gradients are.** GAE starts from `R = I` and adds $\bar A R$ at every layer. Here
#   the `[CLS]` row of Eq. 5's $\bar A$ sums to a few hundredths in the language layers (printed below),
#   next to the identity's 1, so `R` is close to $I + \sum_l \bar A_l$: relevance that reaches `[CLS]`
#   through another word (a product of two layers' maps) is second order. Rollout's self-attention
#   steps mix the attention half-and-half with the identity whatever the gradients. Explaining the
#   same scalar times a constant (`Recording.scaled`, exact: Eq. 5 is linear in the gradient's scale)
#   lets those paths count.

# %%
ranks, tops = cached_results(
    RESULTS / "03_vqa_word_study.json",
    lambda: vqa_word_study(vqa, n=60 if SMOKE else 300, seed=7),
    RECOMPUTE,
    save=not SMOKE,
)
print(format_table(ranks))
print(f"[CLS] row sum of Eq. 5's map, mean over the language layers: {ranks['gae logit x1']['cam_row_sum']:.3f}")
for label in ("gae logit x1", "gae log_prob x1000", "rollout"):
    firsts = {kind: max(shares, key=shares.get) for kind, shares in sorted(tops[label].items())}
    print(f"{label:20s} most frequent first word:", {k: f"{w} ({tops[label][k][w]:.0%})" for k, w in firsts.items()})
fig = figures.plot_target_scale(ranks)
_ = figures.save_figure(fig, "03_vqa_target_scale")
# the claims around this cell, checked
assert 0.01 <= ranks["gae logit x1"]["cam_row_sum"] < 0.1  # "a few hundredths"
scaled = [ranks[f"gae logit x{f}"]["key_rank"] for f in (1, 10, 100, 1000)]
assert scaled == sorted(scaled, reverse=True), scaled  # the key-word rank improves with the scale

# %% [markdown]
# **What to notice.** Multiplying the explained scalar by 10, 100, 1000 changes nothing in the model
# and nothing in the *direction* of any gradient, yet GAE's key-word rank improves: GAE is not
# invariant to the scale of the explained scalar, because `I` has a fixed size and $\bar A$ does not.
# Rollout has no gradients, so it has no such knob.
#
# ## Explore
# Pick a question, an answer to explain, a map and its row token, then walk through the propagation
# steps, or look at one head's `(dA * A)+` at one layer.

# %%
tokens = [["[CLS]", *q.words, "[SEP]"] + ["[PAD]"] * (x["input_ids"].shape[1] - len(q.words) - 2) for q in chosen]
top = rec.logits.topk(3, dim=-1).indices  # (B, 3): the three most likely answers of each question
explore = gu.record(vqa, x, target=top, keep_heads=True)
widgets.coattention_explorer(explore, image, tokens, target_names=[f"answer #{k + 1}" for k in range(3)])

# %% [markdown]
# ## Single-stream models (*optional*)
# ViLT and VisualBERT concatenate words and image tokens into one stream; GAE then keeps a single map
# over the joint sequence with the self-attention rule only, and reads its blocks: the `[CLS]` row over
# the words ($R^{tt}$) and over the image tokens ($R^{ti}$). ViLT feeds its patches in a random order;
# the adapter puts the relevance back on the patch grid. With network access the pretrained ViLT VQA
# model runs on a photo:

# %%
try:
    from transformers import ViltForQuestionAnswering, ViltProcessor

    with zoo.offline_unless_reachable():
        vilt = ViltForQuestionAnswering.from_pretrained("dandelin/vilt-b32-finetuned-vqa").eval()
        processor = ViltProcessor.from_pretrained("dandelin/vilt-b32-finetuned-vqa")
except OSError as err:
    print("pretrained ViLT not available (no network access or no cached weights):", str(err)[:160])
else:
    from gae_workbook.models.photos import load_photos

    photo = load_photos(["chelsea"], size=384)
    inputs = processor(images=list(photo), text=["what animal is this?"], return_tensors="pt", do_rescale=False)
    vexp = gu.explain(vilt, dict(inputs))
    answer = vilt.config.id2label[int(vexp.target[0])]
    fig = figures.plot_panels(photo, vexp.heatmap(384)[:, None], [[f"what animal is this? -> {answer}"]])
    _ = figures.save_figure(fig, "03_vilt_photo")

# %% [markdown]
# ## Check yourself
#
# **1.** Which maps are still exactly zero just before the first co-attention block?
# (a) $R^{tt}$ and $R^{ii}$; (b) $R^{ti}$ and $R^{it}$; (c) only $R^{ti}$; (d) none, every layer
# writes every map.
#
# <details><summary>Answer</summary>
#
# (b). Self-attention layers only update their own stream's rows, and Eq. 7 multiplies the still-zero
# cross maps; only a cross-attention connects the streams (first row of the flow figure).
#
# </details>
#
# **2.** What does Eq. 11, $R^{tt} \mathrel{+}= \bar A\, R^{it}$, add to $R^{tt}$ at the *first*
# co-attention block?
# (a) nothing, because $R^{it}$ is still 0 there; (b) the identity; (c) the image map's CLS row; (d)
# $\bar A$ itself.
#
# <details><summary>Answer</summary>
#
# (a). Both directions of a block are computed from the maps as they were before it, and $R^{it}$ was
# 0 then, so $R^{tt}$ does not change at the first block (the flow figure shows it).
#
# </details>
#
# **3.** Token 0's row of a self map $R^{ss}$ over three tokens is $(1.1, 0.3, 0.1)$. What is its row of
# $\bar R^{ss}$ (Eq. 8-9)? And what if the context part were 10 times larger?
# (a) $(1.1, 0.3, 0.1)$, both times; (b) $(0.2, 0.6, 0.2)$; (c) $(1, 0, 0)$; (d) $(1.2, 0.6, 0.2)$, both
# times.
#
# <details><summary>Answer</summary>
#
# (d). Eq. 8 leaves the context $(0.1, 0.3, 0.1)$, which sums to 0.5; Eq. 9 rescales it to
# $(0.2, 0.6, 0.2)$ and adds the identity row back. Ten times the context rescales to the same row: the
# scale cancels, which is why the normalisation exists (the 2 x 2 cell asserts it).
#
# </details>
#
# **4.** With the logit target, GAE's maps of "what colour is the square?" point at the triangle. What
# makes the same questions point at the right objects in this notebook?
# (a) more co-attention blocks; (b) removing Eq. 8-9; (c) explaining the log-probability of the answer
# instead of its logit; (d) bilinear upsampling of the region map.
#
# <details><summary>Answer</summary>
#
# (c). The logit is raised by anything that favours *some* answer of that kind; the log-probability
# only by what favours this answer over the others (second row of the failure-case figure, and the
# two evaluation tables).
#
# </details>

# %% [markdown]
# ## Exercises
# - `03_vqa_ex_01.py` (20 min): explain 20 colour and 20 shape questions with the logit and the
#   log-probability target and count, per kind, how often the map points at the referred object.
# - `03_vqa_ex_02.py` (25 min): at the *second* co-attention block, predict and compute what Eq. 11
#   adds now, then leave out Eq. 8-9 and say why Eq. 10's addition shrinks.
#
# Solutions: `03_vqa_sol_01.py`, `03_vqa_sol_02.py`.
#
# ## Take-aways
# - A two-stream model has four relevancy maps; self-attention updates its own stream's rows (Eq. 6-7),
#   cross-attention writes $R^{sq}$ (Eq. 10) and $R^{ss}$ (Eq. 11), and nothing connects the streams
#   before the first co-attention block.
# - Eq. 8-9 make Eq. 10 independent of the scale of the self maps: "the token itself plus its context,
#   each weighing 1".
# - GAE on a co-attention model is a dozen lines over `rec.layers`; the library runs the same loop.
# - What you explain matters: on this model the logit target points at the wrong objects, the
#   log-probability target at the right ones. Always check an explanation against something you know.
