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
# # 📝 Exercise 06-2: a deletion test by hand
#
# **About 15 minutes.** A token explanation makes a testable claim: deleting the token it ranks first
# should hurt the answer more than deleting a token at random. Test that claim for GAE on 40 held-out
# stories, one token at a time.
#
# `word_positions(stories, L)["description"]` is a `(B, L)` boolean mask of the description tokens:
# only those may be deleted (`[BOS]` and the question stay).

# %%
import numpy as np
import torch

import gae_utils as gu  # noqa: F401 (you will need it)
from gae_workbook.models import zoo
from shapesworld.stories import draw_stories, encode_stories, story_vocabulary, word_positions

lm = zoo.load("shapes-lm")
vocab = story_vocabulary()
stories = draw_stories(seed=77, n=40, rng=np.random.default_rng(0))
inputs = encode_stories(stories, vocab)  # right-padded: (40, L)
answers = torch.tensor([vocab.tokens.index(s.answer) for s in stories])  # (40,) token ids of the answers
description = word_positions(stories, inputs["input_ids"].shape[1])["description"]  # (40, L) bool


def answered(input_ids: list[list[int]]) -> torch.Tensor:
    """Whether the model's next token after each (unpadded) prompt is its story's answer: (40,) bool."""
    batch = {"input_ids": torch.zeros(len(input_ids), max(map(len, input_ids)), dtype=torch.long)}
    batch["attention_mask"] = torch.zeros_like(batch["input_ids"])
    for b, ids in enumerate(input_ids):
        batch["input_ids"][b, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][b, : len(ids)] = 1
    with torch.no_grad():
        logits = lm(**batch).logits  # (B, L, V)
    last = batch["attention_mask"].sum(1) - 1
    return logits[torch.arange(len(input_ids)), last].argmax(-1) == answers


# %% [markdown]
# **Task.**
#
# 1. Explain the answer token of every story with GAE (`target=answers`).
# 2. For each story, delete the description token GAE ranks first (remove it from the prompt: the
#    kept tokens keep their order) and compute `gae_lost`, the share of stories no longer answered.
# 3. Do the same with one description token per story drawn at random, `random_lost`. Draw it so
#    that every description token of a story is equally likely and the draw is repeatable: a uniform
#    random number per token from `torch.rand(description.shape, generator=torch.Generator().manual_seed(0))`,
#    set to -1 outside the description (`masked_fill(~description, -1.0)`), and the argmax of each row.
#
# Before running it: what do you expect for `random_lost`, knowing that a story has 2 to 5 sentences
# of 5 tokens and only one token is the answer's word?

# %%
# Write your code here.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your prediction for
# random_lost with the solution's reasoning.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: before, gae_lost, random_lost (shares between 0 and 1)
assert 0 <= random_lost <= 1 and 0 <= gae_lost <= 1, "shares of the 40 stories, between 0 and 1"
assert before >= 0.95, "before: the share answered with nothing deleted (the shipped model answers almost all)"
assert gae_lost > random_lost + 0.3, "deleting GAE's first token must hurt far more than deleting a random one"
print(f"✓ right: GAE's first token deleted -> {gae_lost:.0%} lost; a random one -> {random_lost:.0%}")
