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
# # 06 · Decoder-only language models: which words of the prompt gave the answer?
#
# **Learning objectives.** After this notebook you can
#
# 1. state GAE's rule for a causal language model with the shapes of every matrix, and say why the
#    causal mask makes every $\bar A$ (and so $R$) lower triangular;
# 2. say which row of $R$ explains the next token, and why the identity is subtracted before reading it;
# 3. re-implement GAE on a Hugging Face `LlamaForCausalLM` as a loop over the recorded layers and check
#    it against `gu.explain`;
# 4. score token explanations against ground truth (pointing at the word that determines the answer)
#    and with a deletion test, and read the table.
#
# **Estimated time:** 45 minutes, exercises included. Prerequisite: notebook 01 (Eq. 5-6).
#
# `shapes-lm` is a tiny Hugging Face `LlamaForCausalLM` (2 layers, 4 query heads sharing 2 key/value
# heads, a 24-word vocabulary) trained by this repository to read a ShapesWorld scene description and
# answer a question about it:
#
# > the cross is red . the triangle is green . Q: what colour is the cross ? A: **red**
#
# The answer is a copy of one description word (here the first `red`), so every explanation can be
# checked against the word that determines the answer. The model never sees a Llama-specific line of
# this library: `gu.explain` captures any Hugging Face model that routes its attention through the
# attention interface. Set `GAE_SMOKE=1` for a quick run.

# %%
import os
from pathlib import Path

import numpy as np
import torch
from IPython.display import HTML, display

import gae_utils as gu
from gae_utils.plotting import token_html
from gae_workbook.evaluate import cached_results, evaluate_lm, format_table
from gae_workbook.evaluation.metrics import PERTURBATION_STEPS
from gae_workbook.exploration import figures
from gae_workbook.models import zoo
from shapesworld.stories import draw_stories, encode_stories, story_vocabulary, word_positions

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"
# The evaluation cell loads committed results (notebooks/results/); set RECOMPUTE = True (or
# GAE_RECOMPUTE=1) to recompute them: about 2 minutes on 2 cores.
RECOMPUTE = os.environ.get("GAE_RECOMPUTE", "0") == "1"
RESULTS = Path("results")
figures.set_style()

# %% [markdown]
# ## The model, its tokenizer and its held-out accuracy
# The tokenizer is the story vocabulary (one id per word); a prompt is `[BOS]` followed by the words,
# and the model's next token after `A:` is its answer. The card records how it was trained and its
# answer accuracy on stories of scenes it never saw.

# %%
lm = zoo.load("shapes-lm")
vocab = story_vocabulary()
print(vocab.tokens)
lm.card.training["heldout"]

# %%
stories = draw_stories(seed=2024, n=4, rng=np.random.default_rng(0))
inputs = encode_stories(stories, vocab)  # {"input_ids": (B, L), "attention_mask": (B, L)}, right-padded
with torch.no_grad():
    logits = lm(**inputs).logits  # (B, L, V)
last = inputs["attention_mask"].sum(1) - 1  # (B,) the last real token: "A:"
for story, answer in zip(stories, logits[torch.arange(len(stories)), last].argmax(-1)):
    print(f"{story.text} -> {vocab.tokens[answer]}   (truth: {story.answer})")

# %% [markdown]
# ## The rule for a causal language model, with shapes
# Write $L$ for the prompt's length, $H$ for the number of query heads and $p$ for the position of the
# last real token (`A:`), whose next-token logit $y_t$ for token $t$ is explained. For every layer
# $l = 1 \dots N$, in forward order, with $A_l \in \mathbb{R}^{H \times L \times L}$ its attention
# probabilities (row = query token, column = key token):
#
# $$\bar A_l = \mathbb{E}_h\Big[\big(\nabla A_l \odot A_l\big)^+\Big] \in \mathbb{R}^{L\times L},
#   \qquad \nabla A_l = \frac{\partial y_t}{\partial A_l} \qquad \text{(Eq. 5)}$$
#
# $$R_0 = I_L, \qquad R_l = R_{l-1} + \bar A_l\, R_{l-1} \qquad \text{(Eq. 6)},
#   \qquad\text{so}\qquad R_N = (I + \bar A_N)\cdots(I + \bar A_1).$$
#
# - **Causal mask.** Token $i$ attends only to tokens $j \le i$, so $A_l[h, i, j] = 0$ for $j > i$:
#   every $A_l$, every $\bar A_l$, and the product $R_N$ are **lower triangular**. Row $p$ of $R$ can
#   only draw on tokens $0 \dots p$; the rows below $p$ (padding) never matter.
# - **Grouped-query attention.** Two query heads share one key/value head, but each query head has its
#   own probabilities $A_l[h]$, so the mean over $h$ is over the 4 query heads.
# - **Readout.** The explanation is row $p$ of $R_N - I$, over the columns $0 \dots L-1$. The
#   identity only says that $p$ is relevant to itself (it is 1 for every prompt and would drown the
#   rest); $R_N - I$ keeps what the layers added. Padding columns are 0.
#
# *Predict before you run the next cell:* in the last layer, which rows of $\bar A$ can be non-zero?
# Write your answer down; the cell prints, per layer, how many rows have a non-zero entry.

# %%
rec = gu.record(lm, inputs, keep_heads=True)  # the predicted next token of each prompt
print([f"{layer.name}: A {tuple(layer.attn.shape)}, dA {tuple(layer.grad.shape)}" for layer in rec.layers])
B, L = inputs["input_ids"].shape
R = torch.eye(L).repeat(B, 1, 1)  # (B, L, L), R_0 = I
for layer in rec.layers:
    A = layer.attn  # (B, H, L, L) attention probabilities, H query heads
    dA = layer.grad[:, 0]  # (B, H, L, L) their gradients for the explained token (target 0)
    attn_bar = (dA * A).clamp(min=0).mean(dim=1)  # (B, L, L), Eq. 5
    print(
        f"{layer.name}: largest entry above the diagonal {float(attn_bar.triu(1).abs().max()):.1e}, "
        f"rows with a non-zero entry: {int((attn_bar[0].abs().sum(-1) > 0).sum())} of {L}"
    )
    nonzero_rows = (attn_bar.abs().sum(-1) > 0).sum(-1)  # (B,) rows with a non-zero entry, per prompt
    R = R + attn_bar @ R  # (B, L, L), Eq. 6
# the sentence after this cell, checked: the last layer has one non-zero row per prompt, the first several
assert (nonzero_rows == 1).all() and float(
    torch.stack([lay.attn_bar.triu(1).abs().max() for lay in rec.layers]).max()
) == 0
mine = (R - torch.eye(L))[torch.arange(B), last] * inputs["attention_mask"]  # (B, L): row p of R - I, 0 at padding
library = gu.explain(lm, inputs).relevance["text"]  # (B, L)
print("largest difference from gu.explain:", float((mine - library).abs().max()))
assert torch.allclose(mine, library, atol=1e-6)

# %% [markdown]
# The last layer's $\bar A$ has one non-zero row (the answer's, $p$: the logit is read there, and in the
# last layer nothing flows from another row to $p$), the first layer's several: the rows of the tokens
# whose outputs the last layer read. Everything above the diagonal is exactly 0 (both asserted).
#
# ## Token heatmaps
# Each token shaded by its GAE relevance (min-max over the prompt; the raw value is the tooltip). Above
# each map: the explained answer and the question's kind. On the strip, the word that determines the
# answer is marked `▸like this◂`, and the **cue word** (the description word the question names: the
# shape in "what colour is the cross", the colour in "what shape is the blue object") `·like this·`.

# %%
exp = gu.explain(lm, inputs, tokenizer=vocab.tokens)  # exp.tokens["text"]: each prompt's tokens, padding removed
facts = word_positions(stories, L)  # "key": the determining word; "subject": the cue word (the data's name)


def marked(tokens: list[str], key: int, cue: int) -> list[str]:
    """The tokens with the determining word marked ▸ ◂ and the cue word · ·."""
    return [f"▸{t}◂" if i == key else f"·{t}·" if i == cue else t for i, t in enumerate(tokens)]


top = exp.relevance["text"].masked_fill(~facts["description"], float("-inf")).argmax(1)  # (B,) first description token
for b, story in enumerate(stories):
    tokens, answer = exp.tokens["text"][b], exp.target_tokens[b][0]  # the prompt's tokens, the explained answer
    n = len(tokens)
    lands = (
        "determining word" if top[b] == facts["key"][b] else "cue word" if top[b] == facts["subject"][b] else "other"
    )
    head = (
        f"<b>{story.kind} question, answer {answer}</b>; brightest description token: {tokens[int(top[b])]!r} ({lands})"
    )
    display(
        HTML(head),
        token_html(marked(tokens, int(facts["key"][b]), int(facts["subject"][b])), exp.relevance["text"][b, :n]),
    )
# the notes below, checked on these four prompts
kinds = [s.kind for s in stories]
assert all(top[b] == facts["key"][b] for b in range(len(stories)) if kinds[b] == "colour")
assert all(top[b] == facts["subject"][b] for b in range(len(stories)) if kinds[b] == "shape")

# %% [markdown]
# The same maps as a figure: `exp.plot()` draws one token strip per prompt (raw relevance, each with
# its colour bar); `exp.token_html(b).save(path)` writes one strip as a standalone HTML page.

# %%
_ = exp.plot()

# %% [markdown]
# **What to notice.** For a colour question ("what colour is the cross") the brightest description token
# is the answer's own colour word in the cross's sentence (the marked determining word). For a shape
# question ("what shape is the blue object") the brightest token is the cue word `blue`, the word the
# question names, not the shape word that is the answer (the line above each strip says where the
# brightest token lands; the cell asserts both): we come back to this in *Where GAE misses*. The
# question's own words (`Q:` to `A:`) also carry relevance: the model must read which object is asked
# about.
#
# The same comparison for every method on one prompt, as a figure:

# %%
b = next(i for i, story in enumerate(stories) if story.kind == "colour")  # the first colour question
tokens = vocab.decode(inputs["input_ids"][b, : int(inputs["attention_mask"][b].sum())], skip_special=False)
title = f"{stories[b].text} -> {stories[b].answer}   (framed: the determining word)"
fig = figures.plot_token_methods(rec, gu.method_names(), b, tokens, frame=int(facts["key"][b]), title=title)
_ = figures.save_figure(fig, "06_lm_tokens_methods")
gradcam = rec.explanation("attn_gradcam").relevance["text"][b, : len(tokens) - 1]  # without the explained position
print(
    f"attention Grad-CAM on this prompt: max {float(gradcam.max()):.3f}, "
    f"{int((gradcam == 0).sum())} of {len(gradcam)} tokens exactly 0"
)

# %% [markdown]
# **What to notice.** Every strip is the same readout, row $p$ over the tokens before `A:` (the hatched
# explained position is left out of each scale), in raw values with its own colour bar. Raw attention
# and rollout do not depend on the explained token; GAE and attention Grad-CAM do. Attention Grad-CAM
# keeps only the last layer's heads whose mean gradient is positive, and here it keeps little: its
# values are a few hundredths at most and mostly exactly 0 (printed), and it sits near the random floor
# in the table below.
#
# ## Ground truth and deletion, on 300 held-out stories
# For each story the ground truth is the description word that determines the answer. Metrics, all
# over the description tokens (`[BOS]` and the question excluded):
#
# - `pointing`: the most relevant description token is that word; `pointing_pair`: it is that word or
#   the cue word of its sentence (the word the question names); `key_rank`: the word's rank (1 = first);
# - `pos_auc`, `neg_auc`: **deletion test**. Description tokens are deleted (not masked: the model never
#   saw a mask token), most relevant first (positive: the answer should go quickly, lower is better)
#   or least relevant first (negative: it should stay, higher is better), 0 % to 90 % of them in steps
#   of 10 %; the curve is the share of prompts still answered correctly, AUC = trapezoid x 100;
# - `pos_prob_auc`, `neg_prob_auc`: the same with the answer's probability.
#
# `random` (uniform random relevance) is the floor every method must beat.
# `python -m gae_workbook.evaluate --model shapes-lm` runs the same code.

# %%
n_eval = 30 if SMOKE else 300
results, curves = cached_results(
    RESULTS / "06_language_model.json",
    lambda: evaluate_lm(lm, n=n_eval, seed=7, progress=False),
    RECOMPUTE,
    save=not SMOKE,
)
print(format_table(results))
columns = ["pointing", "pointing_pair", "key_rank", "pos_auc", "neg_auc", "pos_prob_auc", "neg_prob_auc"]
lower = {"key_rank", "pos_auc", "pos_prob_auc"}
methods = [m for m in results if m != "random"]
best = {c: (min if c in lower else max)(methods, key=lambda m: results[m][c]) for c in columns}
print("best per column:", best)
# the notes below, checked
assert {c for c, m in best.items() if m == "gae"} == {"pointing_pair", "key_rank", "pos_auc", "pos_prob_auc"}
assert best["pointing"] == best["neg_auc"] == "rollout" and len(set(best.values())) > 1
assert abs(results["attn_gradcam"]["pos_auc"] - results["random"]["pos_auc"]) < 10

# %%
panels = [  # (title, AUC column of the table, x axis) per test, in the order of the curves
    ("description tokens deleted, positive order", "pos_auc", "fraction of description tokens deleted"),
    ("description tokens deleted, negative order", "neg_auc", "fraction of description tokens deleted"),
]
fig = figures.plot_perturbation_panels(
    curves, results, PERTURBATION_STEPS, panels, ylabel="answer still predicted", legend_fontsize=7
)
_ = figures.save_figure(fig, "06_lm_deletion")

# %% [markdown]
# **What to notice.** In the positive panel the lowest curve wins: deleting the one determining word
# (or the word that locates its sentence) is enough to lose the answer, so a method that ranks them
# first drops the curve at the first step. In the negative panel the highest curve wins. GAE has the
# best key rank, `pointing_pair` and positive AUCs; rollout points at the determining word itself more
# often and holds the answer longest in the negative test. No method wins every column (the printed
# line gives each column's best; the cell asserts this paragraph).
#
# ## Where GAE misses: shape questions
# How often is GAE's first description token the determining word, per question kind, and when it
# misses, does it land on the cue word (the colour word that a shape question names)? The cell prints
# the shares on held-out stories.

# %%
misses = draw_stories(seed=7, n=60 if SMOKE else 300, rng=np.random.default_rng(7))
batch = encode_stories(misses, vocab)
facts_m = word_positions(misses, batch["input_ids"].shape[1])
rec_m = gu.record(lm, batch, keep_heads=True)  # per-head attention kept for the 'Why' below


def first_token_hits(recording: gu.Recording) -> dict[str, str]:
    """Share of stories, per question kind, whose first description token is the determining word / the cue word."""
    relevance = recording.explanation("gae").relevance["text"]  # (N, L)
    top = relevance.masked_fill(~facts_m["description"], float("-inf")).argmax(1)  # (N,)
    out = {}
    for kind in ("colour", "shape"):
        rows = torch.tensor([s.kind == kind for s in misses])
        key = (top == facts_m["key"])[rows].float().mean()
        cue = (top == facts_m["subject"])[rows].float().mean()
        out[kind] = f"determining word {key:.0%}, cue word {cue:.0%} (n={int(rows.sum())})"
    return out


first_token_hits(rec_m)

# %%
i = next(i for i, s in enumerate(misses) if s.kind == "shape")
n = int(batch["attention_mask"][i].sum())
tokens = vocab.decode(batch["input_ids"][i, :n], skip_special=False)
display(
    HTML(f"<b>{misses[i].text} {misses[i].answer}</b> (determining word ▸ ◂, cue word · ·)"),
    token_html(
        marked(tokens, int(facts_m["key"][i]), int(facts_m["subject"][i])),
        rec_m.explanation("gae").relevance["text"][i, :n],
    ),
)

# %%
# what the 'Why' below says about the model's attention, measured on the shape questions
shape_rows = torch.tensor([s.kind == "shape" for s in misses])
p_m = batch["attention_mask"].sum(1) - 1  # (N,) the position of A:
last_heads = rec_m.layers[-1].attn[torch.arange(len(misses)), :, p_m]  # (N, H, L) attention of A:, per head
on_cue = last_heads.masked_fill(~facts_m["description"][:, None], -1).argmax(-1) == facts_m["subject"][:, None]
share = on_cue[shape_rows].float().mean(0)  # (H,) per head: share of shape questions whose top token is the cue
head = int(share.argmax())
first = rec_m.layers[0].attn.mean(1)[torch.arange(len(misses)), facts_m["subject"], facts_m["key"]]  # (N,)
print(f"last layer, head {head}: A: attends most to the cue word in {float(share[head]):.0%} of shape questions")
print(f"first layer, head mean: the cue word's attention to the shape word, mean {float(first[shape_rows].mean()):.2f}")
assert share[head] > 0.9 and first[shape_rows].mean() > 0.2  # the paragraph below, checked

# %% [markdown]
# **Why.** To answer "what shape is the blue object", one head of the model's *last* layer attends from
# `A:` to the token `blue` in the description (it matches the question's word; the printed head and
# share), and reads there the shape that its *first* layer had moved into `blue`'s position from two
# tokens earlier (the printed mean attention of the cue word to the shape word). In GAE's product
# $R = (I + \bar A_2)(I + \bar A_1)$, row $p$ reaches the shape word only through the term
# $\bar A_2[p, \text{blue}]\,\bar A_1[\text{blue}, \text{square}]$, a product of two small numbers,
# next to the first-order term $\bar A_2[p, \text{blue}]$. The same diagnostic as notebook 03: explain
# the same logit times a constant (`Recording.scaled`, exact, since Eq. 5 is linear in the gradient) so
# that the paths through intermediate tokens count:

# %%
scaled_hits = {factor: first_token_hits(rec_m.scaled(factor)) for factor in (1, 10, 100)}
for factor, shares in scaled_hits.items():
    print(f"x{factor:<4}", " | ".join(f"{kind}: {share}" for kind, share in shares.items()))

# %% [markdown]
# **What to notice.** Compare the shape rows of the three scales: scaling the gradients moves GAE's first
# token on shape questions from the cue word to the determining shape word, and the colour rows show
# what it costs there. GAE's answer depends on the scale of the
# explained scalar; the ground truth here lets you see it. The map is not wrong about the model: the
# last layer does read the answer at the colour word's position. It is a two-step route that the
# first-order reading of $R$ shows only weakly.

# %% [markdown]
# ## Check yourself
#
# **1.** In a two-layer model, $R = (I + \bar A_2)(I + \bar A_1)$. Say $\bar A_2[p, \text{blue}] = 0.3$,
# $\bar A_1[\text{blue}, \text{square}] = 0.2$, and every other entry of row $p$ of $\bar A_2$, of row
# `blue` of $\bar A_1$ and of row $p$ of $\bar A_1$ is 0. What is $R[p, \text{square}]$?
# (a) 0.5; (b) 0.06; (c) 0.3; (d) 0.2.
#
# <details><summary>Answer</summary>
#
# (b). Expand the product: $R = I + \bar A_2 + \bar A_1 + \bar A_2 \bar A_1$. Only the last term reaches
# `square` from $p$, through `blue`: $0.3 \times 0.2 = 0.06$, a second-order path, which is why GAE
# misses shape questions (*Where GAE misses*).
#
# </details>
#
# **2.** Why is every $\bar A$, and so $R$, lower triangular?
# (a) the causal mask: token $i$ attends only to tokens $j \le i$; (b) grouped-query attention; (c)
# the positive part in Eq. 5; (d) right padding.
#
# <details><summary>Answer</summary>
#
# (a). $A[h, i, j] = 0$ for $j > i$, so $\nabla A \odot A$ is 0 there, and a product of
# lower-triangular matrices is lower triangular.
#
# </details>
#
# **3.** Why is the explanation row $p$ of $R - I$ rather than of $R$?
# (a) to make the row sum to 1; (b) $R$ is not defined at $p$; (c) the identity is 1 at $p$ for every
# prompt and would drown what the layers added; (d) to remove the padding.
#
# <details><summary>Answer</summary>
#
# (c). $I$ only says that $p$ is relevant to itself; $R - I$ keeps the relevance the layers added.
#
# </details>
#
# **4.** On shape questions ("what shape is the blue object?"), where does GAE's most relevant
# description token usually fall?
# (a) on the shape word that is the answer; (b) on the question mark; (c) on `[BOS]`; (d) on the
# colour word the question names (the cue word), because the shape reaches `A:` only through a
# second-order path.
#
# <details><summary>Answer</summary>
#
# (d). The last layer reads the answer at the colour word's position, where the first layer had moved
# the shape; that path is a product of two small $\bar A$ entries. Scaling the explained scalar moves
# the first token towards the shape word (the printed shares of the scaled rows).
#
# </details>

# %% [markdown]
# ## Take-aways
#
# - For a causal LM, GAE is Eq. 5-6 unchanged: $\bar A_l$ and $R$ are lower triangular because of
#   the causal mask, and the explanation of the next token is row $p$ (the last real token) of $R - I$.
# - The same loop you wrote for a ViT explains a Hugging Face Llama with grouped-query attention: the
#   attention interface gives the library every layer's probabilities without model-specific code.
# - Ground truth turns heatmaps into numbers: pointing at the determining word, and a deletion test
#   that removes tokens (not pixels) in relevance order.
# - A token the model reads *through* another token (a two-layer route) gets only second-order
#   relevance: check shape questions before trusting a single top-1 number.
#
# **Exercises.** `06_language_model_ex_01.py`: carry one row vector through the layers instead of the
# full matrix, and predict what it saves (the one place the course touches long prompts).
# `06_language_model_ex_02.py`: a deletion test by hand, GAE's first token against a random one.
