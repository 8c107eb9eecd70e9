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
# # 05 · Encoder-decoders: which source words produced each generated word?
#
# A translation model has two token groups: the source (encoder self-attention) and the target
# (causal decoder self-attention), joined by the decoder's cross-attention. GAE keeps one
# relevancy map per pair (Eq. 6-7 for self-attention, Eq. 8-11 for cross-attention). Generated
# token `t` is explained by the gradient of its logit at step `t` (the generation fed back,
# teacher forcing): row `t` of `R[target, source]` says which source words it comes from, row `t`
# of `R[target, target]` which earlier target words it used. Every token needs its own gradient;
# `explain_generation` gets all of them from one forward pass and one vectorised backward pass.
#
# `shapes-translate` is a tiny Hugging Face `MarianMTModel` trained by this repository to translate
# ShapesWorld captions into a toy language with a known word alignment: articles are dropped,
# adjectives follow their noun (reordering) and two-word relations become one word (many-to-one).
# Set `GAE_SMOKE=1` for a quick run.

# %%
import os

import matplotlib.pyplot as plt

import gae_utils as gu
from gae_utils.generation import explain_generation, record_generation
from gae_utils.methods import method_label
from gae_workbook import figures, widgets, zoo
from gae_workbook.evaluate import evaluate_translate, format_table
from gae_workbook.models import greedy_decode
from shapesworld.inputs import encode_sources, translate_vocabulary
from shapesworld.language import caption, translate
from shapesworld.scenes import ShapesWorld

SMOKE = os.environ.get("GAE_SMOKE", "0") == "1"

# %% [markdown]
# ## The model and its held-out exact match
# Greedy decoding of one caption per scene of a ShapesWorld seed never used in training;
# `unseen_exact_match` counts only captions whose text never occurred in training.

# %%
model = zoo.load("shapes-translate")
model.card.training["heldout"]

# %% [markdown]
# ## One translation, token by token
# Each row is one generated word, each column a source word; a row is that word's own
# explanation (min-max normalised per row for display). The framed row is the relation word, whose
# aligned source words are the two words of the relation phrase. Raw cross-attention (last decoder
# layer, mean over heads) is shown beside it.

# %%
vocab = translate_vocabulary()
scene = next(s for s in ShapesWorld(seed=99).scenes(50) if len(s.objects) >= 2)
cap = caption(scene)
reference = translate(cap)
inputs = encode_sources([cap], vocab, length=None)
generated = greedy_decode(model, inputs, vocab.bos_id, vocab.eos_id, vocab.pad_id)
source_tokens = [*cap.words, "</s>"]
target_tokens = vocab.decode(generated[0, 1:], skip_special=False)
print(cap.text, "->", " ".join(target_tokens), "| reference:", " ".join(reference.target))
rec = record_generation(model, inputs, generated, keep_heads=True)
fig = widgets.render_translation(rec, source_tokens, target_tokens, method="gae", step=2)
figures.save_figure(fig, "05_translation_tokens")

# %% [markdown]
# `explain_generation` returns the same rows as an `Explanation`: `relevance["source"]` is
# `(B, T, S)`, `relevance["target"]` is `(B, T, T)` (zero after each token: the decoder is causal).

# %%
exp = explain_generation(model, inputs, generated)
{name: tuple(value.shape) for name, value in exp.relevance.items()}

# %% [markdown]
# ## Every method on the same recording
# Rollout has no rule of its own for cross-attention; here it is the propagation rules applied to
# the head-averaged attention of every layer, with no gradients.

# %%
methods = gu.method_names()
fig, axes = plt.subplots(1, len(methods), figsize=(figures.PANEL * 1.9 * len(methods), figures.PANEL * 1.6))
for ax, method in zip(axes, methods):
    rows = rec.explanation(method).relevance["source"][0]  # (T, S)
    figures.plot_alignment(ax, rows, source_tokens, target_tokens, method_label(method))
fig.tight_layout()
figures.save_figure(fig, "05_translation_methods")

# %% [markdown]
# ## Alignment accuracy against the known word alignment
# For each generated word: is the argmax of its source relevance one of its aligned source words?

# %%
results = evaluate_translate(model, n=20 if SMOKE else 300, batch_size=20 if SMOKE else 50, progress=False)
print(format_table(results))

# %% [markdown]
# GAE explains the generated token's *logit* (method.md). In a softmax classifier a logit can be
# raised by evidence shared with its competitors (attending to any shape word raises every shape
# logit), and Eq. 5 keeps only the positive part of `dA * A`. Explaining the token's log-probability
# instead (the logit minus the log-sum-exp over the vocabulary: what raises this token against the
# others) removes the shared part; compare the two on the same captions.

# %%
results_lp = evaluate_translate(
    model, n=20 if SMOKE else 300, batch_size=20 if SMOKE else 50, progress=False, score="log_prob"
)
print(format_table(results_lp))
rec_lp = record_generation(model, inputs, generated, score="log_prob", keep_heads=True)
fig = widgets.render_translation(rec_lp, source_tokens, target_tokens, method="gae", step=2)
fig.suptitle("target: log-probability of each generated token")
figures.save_figure(fig, "05_translation_tokens_log_prob")

# %% [markdown]
# ## Explorer
# Generated token, method, cross-attention layer and head; each control calls a pure function of
# `gae_workbook.widgets` (`render_translation`, `render_translation_layer`).

# %%
fig = widgets.render_translation_layer(rec, source_tokens, target_tokens, step=2, layer=-1, head=0)
figures.save_figure(fig, "05_translation_layer_head")
if not SMOKE:
    display(widgets.translation_explorer(model, inputs, generated, source_tokens, target_tokens))  # noqa: F821

# %% [markdown]
# ## A real translation model (when pretrained weights can be downloaded)
# Helsinki-NLP's opus-mt-en-de is a Marian model with 6 encoder and 6 decoder layers.

# %%
try:
    from gae_workbook.zoo import load_marian

    marian, tokenizer = load_marian()
except zoo.PretrainedUnavailableError as err:
    print("pretrained Marian unavailable offline:", str(err)[:160])
else:
    batch = tokenizer(["The small dog is sleeping under the red table."], return_tensors="pt")
    out = marian.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=32)
    real = record_generation(marian, batch, out)
    src = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    tgt = tokenizer.convert_ids_to_tokens(out[0, 1:])
    fig = widgets.render_translation(real, src, tgt, method="gae", step=1)
    figures.save_figure(fig, "05_marian_en_de")
