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
# # 00 · Notation, glossary and the course map
#
# **Estimated time: 15 minutes.** Read this notebook once before 01 and come back to it when a
# symbol is unclear. It runs in a few seconds.
#
# **Learning objectives.** After this notebook you can
# - name every symbol the course uses (`A`, `∇A`, `Ā`, `R`, `R̄`, `I`) and give its shape;
# - say what a row and what a column of a relevancy map `R[s, q]` mean;
# - place each notebook on the course map and say which attention type it adds.
#
# **Prerequisites.** Scaled dot-product attention and multi-head attention, the vision
# transformer (an image cut into patches plus a CLS token), and what a gradient is. The rules
# are stated precisely, with shapes, in [`docs/rules.md`](../docs/rules.md); the metrics in
# [`docs/evaluation.md`](../docs/evaluation.md).

# %% [markdown]
# ## What the course is about
#
# A transformer decides through attention: every layer mixes each token with the tokens it
# attends to. Generic Attention-model Explainability (GAE; Chefer, Gur & Wolf, ICCV 2021) turns
# the attention maps of a trained model, weighted by the gradient of what we want explained, into
# a **relevancy map**: which input tokens (image patches, words) the decision drew on. It needs
# no change to the model, and one rule per attention type covers
#
# - **self-attention** (a token attends to tokens of its own stream: ViT, BERT, GPT),
# - **co-attention** in two-stream models (text attends to image and image to text: LXMERT-style VQA),
# - **encoder-decoder cross-attention** (object queries attend to the image: DETR; a decoder attends to
#   its source sentence: translation).
#
# Every model in the course is small, trained by this repository on **ShapesWorld**, a world of
# coloured shapes where every object's mask, every answer and every word alignment is known. So
# an explanation can be *checked*, not only looked at.

# %%
import gae_utils as gu
from gae_workbook import figures

fig = figures.course_map()
_ = figures.save_figure(fig, "00_course_map")

# %% [markdown]
# **What to notice.** The order follows the paper: each notebook adds one attention type and
# the rule for it. 01 and 02 use only the self-attention rule (Eq. 5-6); 03 adds the cross-
# attention rules (Eq. 7-11), which 04 and 05 reuse on encoder-decoder models; 06 returns to a
# single stream, a language model, where the question becomes cost at long prompts.
#
# | notebook | model | attention types | time |
# |---|---|---|---|
# | 00 notation | - | - | 15 min |
# | 01 vision transformer | `shapes-vit` (timm ViT) | self | 45 min |
# | 02 dual encoders | `shapes-clip` (Hugging Face CLIP) | self, in two separate towers | 30 min |
# | 03 VQA co-attention | `shapes-vqa` (two-stream, LXMERT-style) | self + co-attention | 60-75 min |
# | 04 DETR | `shapes-detr` | encoder self, decoder self + cross | 45 min |
# | 05 seq2seq | `shapes-translate` (Marian-style) | encoder self, decoder self + cross | 45 min |
# | 06 causal LM | a small decoder-only LM | self (causal) | 45 min |
#
# Each notebook has exercises beside it, `NN_topic_ex_KK.py`, with worked solutions in
# `NN_topic_sol_KK.py` (open them as notebooks, as the README explains).

# %% [markdown]
# ## Notation
#
# | symbol | in code | shape | meaning |
# |---|---|---|---|
# | $B$ | `B` | | examples in a batch |
# | $K$ | `K` | | targets explained per example (e.g. two classes of one image) |
# | $H$ | `H` | | attention heads of a layer |
# | $L$ | `len(rec.layers)` | | attention layers, in the order they run |
# | $N$, $N_s$, $N_q$ | `N` | | tokens (of modality $s$, of modality $q$) |
# | $A$ | `layer.attn` | $(B, H, N_q, N_k)$ | attention probabilities of a layer, after softmax |
# | $y$ | `rec.scores` | $(B, K)$ | the explained scalar: a class logit, a similarity logit, a token's logit |
# | $\nabla A = \partial y / \partial A$ | `layer.grad` | $(B, K, H, N_q, N_k)$ | gradient of $y$ with respect to $A$ |
# | $\bar A$ | `layer.attn_bar` | $(B, K, N_q, N_k)$ | $\mathbb{E}_h[(\nabla A \odot A)^+]$, Eq. 5 |
# | $I$ | `torch.eye(N)` | $(N, N)$ | the identity: each token is relevant to itself |
# | $R$, $R[s,q]$ | `exp.maps[(s, q)]` | $(B, K, N_s, N_q)$ | relevance of $q$'s tokens (columns) for $s$'s (rows) |
# | $\hat R$, $\bar R$ | `normalize_self_relevancy` | $(B, N, N)$ | $R - I$; rows scaled to sum 1, plus $I$ (Eq. 8-9) |
# | CLS row | `R[..., 0, 1:]` | $(B, K, N-1)$ | the row of the token the classifier reads, without its own column |
# | relevance | `exp.relevance["image"]` | $(B, P)$ or $(B, K, P)$ | the readout: explained row of $R$, $P$ patches |
#
# Rows of $R$ are the tokens being explained; columns are the tokens they draw on. A model with
# two streams has one map per ordered pair of **modalities**, e.g. $s$ = text and $q$ = image:
# $R[t,t]$, $R[t,i]$, $R[i,t]$, $R[i,i]$.

# %% [markdown]
# ## The rules in one screen
#
# Eq. 5, per layer: $\bar A = \mathbb{E}_h\big[(\nabla A \odot A)^+\big]$.
# Eq. 6, self-attention: $R \leftarrow R + \bar A\,R$, starting from $R = I$.
# Notebook 01 derives both, draws them and checks them on numbers you can compute by hand;
# notebook 03 adds the cross-attention rules.

# %%
print("methods of the comparison set:", ", ".join(f"{n} ({gu.methods.method_label(n)})" for n in gu.method_names()))

# %% [markdown]
# ## Glossary
#
# - **attention map** `A`: for each query token, a probability distribution over key tokens (one per head).
# - **gradient-weighted attention** `Ā`: the attention a layer spent *in favour of* the explained
#   score (Eq. 5). Class-specific because of the gradient.
# - **relevancy map** `R`: how much each token's final state draws on each input token, accumulated
#   over the layers (Eq. 6-11).
# - **residual connection**: a transformer layer adds its output to its input; in GAE it is the `I`
#   in `R = I` and in `R + Ā R`.
# - **modality**: a group of tokens with its own role (image patches, words, object queries, source
#   or target tokens). Single-stream models have one.
# - **readout**: the row of `R` that is reported (the CLS row of a ViT, the EOT row of CLIP's text
#   tower, a DETR query's row, a generated token's row) and the columns kept.
# - **target**: what is explained, one scalar per example: a class logit, a pair's similarity
#   logit, a generated token's logit or log-probability. `K` targets per example share one forward pass.
# - **score / explained scalar**: the value of the target, `rec.scores`.
# - **layer vs step**: a layer is one attention module; a step is the unit the rules apply at once
#   (one layer, or the two cross-attentions of one co-attention block).
# - **`start_layer`**: leave the layers before it out of the aggregation.
# - **raw attention, rollout, attention Grad-CAM**: the baselines (see [`docs/rules.md`](../docs/rules.md)).
# - **pointing game**: does the map's maximum fall on the object? Patch level (the most relevant
#   patch holds object pixels) or pixel level (after upsampling).
# - **relevance mass**: share of the map's positive relevance inside the object's mask.
# - **positive / negative perturbation**: remove the most / least relevant input first and watch
#   the model's accuracy; area under the curve lower / higher is better.
# - **teacher forcing**: explaining a generated sentence by feeding the whole output back in one
#   pass, each token predicted from the true prefix.
# - **Otsu's threshold**: a threshold that splits a map's values into two classes with the least
#   within-class variance (DETR's segmentation test).
# - **min-max normalisation**: rescaling a map to [0, 1] for display. It hides the magnitude; the
#   course shows raw values with colour bars where the magnitude matters.

# %% [markdown]
# ## Take-aways
#
# - `R` starts as the identity and every attention layer adds to it; its explained row is the
#   explanation.
# - `Ā` is gradient-weighted attention: the same attention explains different classes differently.
# - Every quantity here has a shape; when a cell fails, print the shapes first.
