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
# # 📃 Solution of exercise 06-2: a deletion test by hand
#
# A token explanation makes a testable claim: deleting the token it ranks first should hurt the
# answer more than deleting a token at random.

# %%
import numpy as np
import torch

import gae_utils as gu
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


# %%
relevance = gu.explain(lm, inputs, target=answers).relevance["text"]  # (40, L)
first = relevance.masked_fill(~description, float("-inf")).argmax(1)  # (40,) GAE's first description token
gen = torch.Generator().manual_seed(0)
chance = (
    torch.rand(description.shape, generator=gen).masked_fill(~description, -1.0).argmax(1)
)  # (40,) uniform over each story's description


def without(position: torch.Tensor) -> list[list[int]]:
    """Each prompt with the token at ``position[b]`` deleted, unpadded."""
    prompts = []
    for b in range(len(stories)):
        ids = inputs["input_ids"][b, : int(inputs["attention_mask"][b].sum())].tolist()
        prompts.append(ids[: int(position[b])] + ids[int(position[b]) + 1 :])
    return prompts


full = [inputs["input_ids"][b, : int(inputs["attention_mask"][b].sum())].tolist() for b in range(len(stories))]
before = answered(full).float().mean().item()
gae_lost = 1 - answered(without(first)).float().mean().item()
random_lost = 1 - answered(without(chance)).float().mean().item()
print(
    f"answered before: {before:.0%} | lost after deleting GAE's first token: {gae_lost:.0%} "
    f"| after deleting a random one: {random_lost:.0%}"
)

# %% [markdown]
# A random description token is the answer's word about one time in 15 (3.5 sentences of 5 tokens on
# average), and most other deletions leave the model able to answer, so `random_lost` is small. GAE's
# first token is, in most stories, either the determining word or the word that locates its sentence
# (the cue word, the word the question names; notebook 06's `pointing_pair`). Without the first the answer cannot
# be copied; without the second the model cannot find the sentence.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your prediction for
# random_lost with the solution's reasoning.

# %%
# your code defines: before, gae_lost, random_lost (shares between 0 and 1)
assert 0 <= random_lost <= 1 and 0 <= gae_lost <= 1, "shares of the 40 stories, between 0 and 1"
assert before >= 0.95, "before: the share answered with nothing deleted (the shipped model answers almost all)"
assert gae_lost > random_lost + 0.3, "deleting GAE's first token must hurt far more than deleting a random one"
print(f"✓ right: GAE's first token deleted -> {gae_lost:.0%} lost; a random one -> {random_lost:.0%}")
