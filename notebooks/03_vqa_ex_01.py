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
# # Exercise 03.01 · Which scalar do you explain? The logit against the log-probability
#
# Notebook 03 showed, on one scene, GAE's image maps pointing at the wrong object when the predicted
# answer's **logit** is explained, and at the right one for its **log-probability** (the logit minus
# the log-sum-exp over all answers). One scene is an anecdote; here you measure it on 40 questions,
# one per scene, each referring to at least one object.
#
# Setup (run it): the model, the questions, and for each question the regions of the 4 x 4 grid that
# hold pixels of the objects it refers to.

# %%
import torch

import gae_utils as gu  # noqa: F401 (for your code)
from gae_workbook import zoo
from shapesworld.inputs import vqa_inputs
from shapesworld.language import Vocabulary, questions
from shapesworld.scenes import ShapesBatch, ShapesWorld

vqa = zoo.load("shapes-vqa")
vocab = Vocabulary.questions()
pairs = [(s, q) for s in ShapesWorld(seed=7).scenes(60) for q in questions(s)[:1] if q.referents][:40]
scenes, asked = [s for s, _ in pairs], [q for _, q in pairs]
batch = ShapesBatch.from_scenes(scenes)
x = vqa_inputs(batch.images, asked, vocab)
truth = torch.stack(
    [batch.masks[b, [s.objects[o].label for o in q.referents]].any(0) for b, (s, q) in enumerate(pairs)]
)  # (N, 64, 64) the referred objects
regions = truth.reshape(-1, 4, 16, 4, 16).any(-1).any(-2).flatten(1)  # (N, 16) regions holding object pixels


def log_prob(output) -> torch.Tensor:
    """The predicted answer's log-probability, one scalar per question: a target for gu.record / gu.explain."""
    return output.question_answering_score.log_softmax(-1).max(-1).values  # (B,)


print(len(asked), "questions, e.g.", [q.text for q in asked[:3]])

# %% [markdown]
# **Your task.**
#
# 1. Explain every question's predicted answer with GAE twice: `relevance_logit` with the default
#    target (the logit), `relevance_log_prob` with `target=log_prob`. Both are `(N, 16)`: the `[CLS]` row
#    of `R[text, image]`, `.relevance["image"]` of the explanation.
# 2. `hits_logit` and `hits_log_prob`: `(N,)` booleans, True where the most relevant region is one of
#    `regions`.
# 3. Print both hit rates. Which target points at the objects more often, and why (think of what raises
#    the logit of "yellow" in "what colour is the square?")?

# %%
# Write your code here.
