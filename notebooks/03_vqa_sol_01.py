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

import gae_utils as gu
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
relevance_logit = gu.explain(vqa, x).relevance["image"]  # (N, 16)
relevance_log_prob = gu.explain(vqa, x, target=log_prob).relevance["image"]  # (N, 16)


def hits(relevance: torch.Tensor) -> torch.Tensor:
    """(N,) whether each question's most relevant region holds pixels of a referred object."""
    return regions.gather(1, relevance.argmax(1, keepdim=True))[:, 0]


hits_logit, hits_log_prob = hits(relevance_logit), hits(relevance_log_prob)
print(f"pointing, logit target:           {hits_logit.float().mean():.0%}")
print(f"pointing, log-probability target: {hits_log_prob.float().mean():.0%}")

# %% [markdown]
# The log-probability target points at the referred objects more often (on these 40 questions, about 97 %
# against 88 %; notebook 03's scene was one of the misses). The logit of an answer is
# raised by anything that makes the model answer *some* answer of the question's kind (any colour, any
# shape): that evidence is shared with the competing answers. The log-probability subtracts the
# log-sum-exp over all answers, so what is shared cancels and what favours *this* answer remains. The
# explained scalar is part of the explanation.

# %%
assert hits_logit.shape == hits_log_prob.shape == (len(asked),)
assert hits_log_prob.float().mean() > hits_logit.float().mean(), (
    hits_logit.float().mean(),
    hits_log_prob.float().mean(),
)
