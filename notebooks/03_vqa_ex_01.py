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
# **About 20 minutes.** Notebook 03 showed, on one scene, GAE's image maps pointing at the wrong
# object when the predicted answer's **logit** is explained, and at the right one for its
# **log-probability** (the logit minus the log-sum-exp over all answers). One scene is an anecdote;
# here you measure it on 40 questions, one per scene: 20 colour questions ("what colour is the
# square?") and 20 shape questions ("what shape is the red object?"), the two kinds that name one
# object. (The notebook's 300 questions also hold yes/no and counting questions, so its overall rates
# are not comparable with these; compare per kind.)
#
# Setup (run it): the model, the questions, and for each question the regions of the 4 x 4 grid that
# hold pixels of the objects it refers to.

# %%
import torch

import gae_utils as gu  # noqa: F401 (for your code)
from gae_workbook.models import zoo
from shapesworld.inputs import vqa_inputs
from shapesworld.language import Vocabulary, questions
from shapesworld.scenes import ShapesBatch, ShapesWorld

vqa = zoo.load("shapes-vqa")
vocab = Vocabulary.questions()
pairs = []  # (scene, question): one question per scene, 20 of each kind
for scene in ShapesWorld(seed=7).scenes(200):
    for kind in ("colour", "shape"):
        if sum(q.kind == kind for _, q in pairs) < 20:
            asked_here = [q for q in questions(scene) if q.kind == kind and q.referents]
            if asked_here:
                pairs.append((scene, asked_here[0]))
                break
scenes, asked = [s for s, _ in pairs], [q for _, q in pairs]
kinds = [q.kind for q in asked]
batch = ShapesBatch.from_scenes(scenes)
x = vqa_inputs(batch.images, asked, vocab)
truth = torch.stack(
    [batch.masks[b, [s.objects[o].label for o in q.referents]].any(0) for b, (s, q) in enumerate(pairs)]
)  # (N, 64, 64) the referred objects
regions = truth.reshape(-1, 4, 16, 4, 16).any(-1).any(-2).flatten(1)  # (N, 16) regions holding object pixels


def log_prob(logits) -> torch.Tensor:
    """The predicted answer's log-probability from the (B, A) answer logits: a target for gu.record / gu.explain."""
    return logits.log_softmax(-1).max(-1).values  # (B,)


print(len(asked), "questions:", {k: kinds.count(k) for k in sorted(set(kinds))}, "e.g.", [q.text for q in asked[:2]])

# %% [markdown]
# **Predict first:** which target will point at the referred object more often, and on which kind of
# question will the gap be larger?
#
# **Your task.**
#
# 1. Explain every question's predicted answer with GAE twice: `relevance_logit` with the default
#    target (the logit), `relevance_log_prob` with `target=log_prob`. Both are `(N, 16)`: the `[CLS]` row
#    of `R[text, image]`, `.relevance["image"]` of the explanation.
# 2. `hits_logit` and `hits_log_prob`: `(N,)` booleans, True where the most relevant region is one of
#    `regions`.
# 3. Print both hit rates, overall and per kind. Which target points at the objects more often, and why
#    (think of what raises the logit of "yellow" in "what colour is the square?")?

# %%
# Write your code here.

# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your "why" with the
# solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
assert relevance_logit.shape == relevance_log_prob.shape == (len(asked), 16), "one row of 16 regions per question"
assert torch.allclose(relevance_logit, gu.explain(vqa, x).relevance["image"]), "relevance_logit: the default target"
assert torch.allclose(relevance_log_prob, gu.explain(vqa, x, target=log_prob).relevance["image"]), "target=log_prob"
expected = {
    name: regions.gather(1, r.argmax(1, keepdim=True))[:, 0]
    for name, r in (("logit", relevance_logit), ("log_prob", relevance_log_prob))
}
assert torch.equal(hits_logit, expected["logit"]), "hits_logit: is the argmax region one of the question's regions?"
assert torch.equal(hits_log_prob, expected["log_prob"]), "hits_log_prob: the same for the log-probability"
assert hits_log_prob.float().mean() > hits_logit.float().mean(), "the log-probability should point better"
print(
    f"✓ right: pointing {hits_logit.float().mean():.0%} (logit) against {hits_log_prob.float().mean():.0%} (log-prob.)"
)
