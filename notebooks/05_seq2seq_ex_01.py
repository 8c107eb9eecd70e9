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
# # Exercise 05.01 · Does each generated word point at its source words?
#
# **About 20 minutes.**
#
# The toy language has a known word alignment: each target word translates one source word, or both
# words of a relation ("left of" -> "oskev"). A good explanation of a generated word should put its
# largest source relevance on one of its aligned words. You score that yourself for three explanations:
# GAE with the logit target, GAE with the log-probability target, and raw cross-attention.
#
# Setup (run it): 30 captions of two-object scenes, their greedy translations, kept where the model
# translated correctly (so that the reference alignment applies to what was generated).

# %%
import torch  # noqa: F401 (for your code)

from gae_utils.generation import record_generation  # noqa: F401 (for your code)
from gae_workbook.evaluate import alignment_hits  # noqa: F401 (for your code)
from gae_workbook.models import zoo
from gae_workbook.models.translator import greedy_decode
from shapesworld.inputs import encode_sources, translate_vocabulary
from shapesworld.language import caption, translate
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-translate")
vocab = translate_vocabulary()
captions = [caption(s) for s in ShapesWorld(seed=5).scenes(60) if len(s.objects) >= 2][:30]
inputs = encode_sources(captions, vocab)  # (B, S) words, </s>, padding
generated = greedy_decode(model, inputs, vocab.bos_id, vocab.eos_id, vocab.pad_id)  # (B, 1 + T)
correct = [b for b, c in enumerate(captions) if vocab.decode(generated[b, 1:]) == list(translate(c).target)]
inputs = {k: v[correct] for k, v in inputs.items()}
generated = generated[correct]
translations = [translate(captions[b]) for b in correct]  # .source words, .target words, .alignment
print(
    f"{len(correct)} of {len(captions)} translated correctly; e.g.",
    translations[0].source,
    "->",
    translations[0].target,
)
print("alignment of the first:", translations[0].alignment)

# %% [markdown]
# **Your task.**
#
# 1. Record the generation twice with `record_generation(model, inputs, generated, score=...)`,
#    `score="logit"` and `score="log_prob"`. The source relevance of every generated word is
#    `rec.explanation(method).relevance["source"]`, `(B, T, S)`: row `t` explains generated word `t`.
# 2. Write `hits(relevance)`: for every example `b` and every target word `t` of `translations[b]` (the
#    final `</s>` step has no aligned word), is the argmax of `relevance[b, t]` over the source *words*
#    (the first `len(translations[b].source)` columns) one of `translations[b].alignment[t]`? Return a
#    flat bool tensor.
# 3. Compute the hit rate of GAE (logit), GAE (log-probability) and `raw_attention` (logit recording).
#    Check that your `hits` agrees with the workbook's `alignment_hits(relevance, translations)`.
# 4. Which explanation aligns best here? Which target should you explain with GAE on this model?

# %%
# Write your code here.


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right. Compare your answer to question 4
# with the solution's.

# %%
# ruff: noqa: F821 (the names below are the ones your code defines)
# your code defines: hits, rates ({"GAE, logit": ..., "GAE, log-probability": ..., "raw attention": ...})
for rec_, method in ((rec_logit, "gae"), (rec_log_prob, "gae"), (rec_logit, "raw_attention")):
    relevance_ = rec_.explanation(method).relevance["source"]
    assert torch.equal(hits(relevance_), alignment_hits(relevance_, translations)), "hits: argmax over the words only"
expected = {
    "GAE, logit": alignment_hits(rec_logit.explanation("gae").relevance["source"], translations),
    "GAE, log-probability": alignment_hits(rec_log_prob.explanation("gae").relevance["source"], translations),
    "raw attention": alignment_hits(rec_logit.explanation("raw_attention").relevance["source"], translations),
}
for label, value in expected.items():
    assert abs(rates[label] - value.float().mean().item()) < 1e-6, f"rates[{label!r}]: the share of hits"
assert rates["GAE, log-probability"] > rates["GAE, logit"]
print("✓ right:", {label: f"{rate:.0%}" for label, rate in rates.items()})
