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
# # 00 · Prerequisites, notation and the course map
#
# **Estimated time: 30 minutes** (15 for the prerequisites, 15 for the notation and the map). Read
# this notebook once before 01 and come back to it when a symbol is unclear. It runs in a few seconds.
#
# **Learning objectives.** After this notebook you can
# - compute softmax attention by hand for 3 tokens, and say what a head, the CLS token and a residual
#   connection do;
# - name every symbol the course uses (`A`, `∇A`, `Ā`, `R`, `R̄`, `I`) and give its shape;
# - say what a row and what a column of a relevancy map `R[s, q]` mean;
# - place each notebook on the course map and say which rule it introduces or applies.
#
# **Prerequisites.** Matrix products, the softmax function, and what a gradient is. The first part
# of this notebook teaches the minimum of attention and of the vision transformer the course relies
# on; for more, read Vaswani et al. 2017, "Attention Is All You Need" (Sec. 3.2, scaled dot-product
# and multi-head attention), Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (Sec. 3.1, the
# ViT and its CLS token), and He et al. 2016, "Deep Residual Learning" (residual connections). The
# rules are stated precisely, with shapes, in [`docs/rules.md`](../docs/rules.md); the metrics in
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


# %% [markdown]
# ## Prerequisites in four 3-token examples
#
# Every example below uses the same three tokens: `[CLS]` (index 0) and two image patches `p1`, `p2`,
# each a vector of $d = 2$ numbers. The cells compute every number; check a few by hand.
#
# ### 1. Softmax attention
# A layer turns each token into a **query** $q_i$, a **key** $k_j$ and a **value** $v_j$ (three learned
# linear maps). Token $i$ scores every token $j$ with $q_i \cdot k_j / \sqrt d$, and a softmax over
# each row turns the scores into **attention probabilities**:
# $$A = \mathrm{softmax}_\text{row}\big(Q K^\top / \sqrt d\big) \in \mathbb{R}^{N\times N},
#   \qquad \text{output}_i = \sum_j A_{ij}\, v_j .$$
# Row $i$ of $A$ sums to 1: it says how token $i$ mixes the values of all tokens. This $A$ is what GAE
# records at every layer.

# %%
import torch

from gae_workbook.exploration import figures

tokens = ["[CLS]", "p1", "p2"]
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (N=3, d=2) queries
K = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (N, d) keys
V = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # (N, d) values
scores = Q @ K.T / 2**0.5  # (N, N)
A = scores.softmax(dim=-1)  # (N, N), each row sums to 1
out = A @ V  # (N, d): each token's mix of the values
print("scores:\n", scores.round(decimals=3), "\nA:\n", A.round(decimals=3), "\noutput:\n", out.round(decimals=3))
# by hand, row 0: scores (0.707, 0, 0.707); exp gives (2.028, 1, 2.028), sum 5.056
assert torch.allclose(A[0], torch.tensor([2.028, 1.0, 2.028]) / 5.056, atol=1e-3)
assert torch.allclose(A.sum(-1), torch.ones(3))

# %% [markdown]
# ### 2. Heads
# A layer runs $H$ attentions side by side, each with its own $Q$, $K$, $V$ maps: the **heads**. Each
# head has its own $A_h$; their outputs are concatenated and projected back to the token's width. So a
# recorded layer has shape $(B, H, N, N)$, and GAE averages over $h$ (Eq. 5). A second head on the same
# tokens, with other query weights, attends differently:

# %%
Q2 = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])  # (N, d) head 2's queries (same keys)
A2 = (Q2 @ K.T / 2**0.5).softmax(dim=-1)  # (N, N)
heads = torch.stack([A, A2])  # (H=2, N, N), one map per head
print("head 2's A:\n", A2.round(decimals=3), "\nmean over the two heads:\n", heads.mean(0).round(decimals=3))
assert A[0].argmax() != A2[0].argmax()  # the two heads' CLS rows favour different tokens
assert torch.allclose(A2[2], torch.full((3,), 1 / 3))  # a zero query scores every key 0: a uniform row
assert A2[0, 1:].min() > 0.4 > A2[0, 0] and A[0, [0, 2]].min() > 0.4 > A[0, 1]  # the note under the figure

# %% [markdown]
# ### 3. The CLS token
# A vision transformer cuts the image into patches, embeds each as a token, and prepends one extra
# learned token, **`[CLS]`**. After the last layer the classifier reads only `[CLS]`'s state: a class
# logit is $y = w \cdot \text{state}_0$. So row 0 of the last layer's $A$ says how much of each
# token's value reaches the logit, and the gradient $\partial y / \partial A_{0j} = w \cdot v_j$ says
# whether token $j$'s value pushes $y$ up or down. This is why the course reads the CLS row, and a
# preview of Eq. 5 (attention times gradient, positive part):

# %%
w = torch.tensor([1.0, -1.0])  # (d,) the classifier's weights for one class
grad_row = V @ w  # (N,) dy/dA[0, j] = w . v_j
contribution = (grad_row * A[0]).clamp(min=0)  # (N,) Eq. 5's row 0, for one head
print("CLS row of A:", A[0].round(decimals=3).tolist(), "| dy/dA[0]:", grad_row.tolist())
print("(dA * A)+ of the CLS row:", contribution.round(decimals=3).tolist())
assert grad_row.tolist() == [1.0, -1.0, 0.0] and contribution.argmax() == 0 and contribution[1:].sum() == 0

# %% [markdown]
# ### 4. The residual connection
# A transformer layer *adds* its attention output to its input: $x_i \leftarrow x_i + \text{output}_i$.
# So after a layer each token is still itself plus what it mixed in. Written as a mixing matrix over
# tokens this is $I + A$: the identity is the token itself, $A$ what it read. GAE starts from $R = I$
# and adds $\bar A R$ at every layer for exactly this reason; rollout (a baseline) uses
# $0.5\,A + 0.5\,I$. The figure shows the four matrices of this section.

# %%
residual = torch.eye(3) + heads.mean(0)  # (N, N) I + mean over heads of A
x = V  # take the values as the tokens' states, for the example
print(
    "x + A x for [CLS]:",
    (x + A @ x)[0].round(decimals=3).tolist(),
    "| row 0 of I + A:",
    residual[0].round(decimals=3).tolist(),
)
assert torch.allclose((torch.eye(3) + A) @ x, x + A @ x)  # the residual is the identity in the mixing matrix
assert torch.allclose(residual.sum(-1), torch.full((3,), 2.0))  # the token itself (1) plus its attention (1)
fig = figures.plot_small_matrices(
    {
        "head 1: A = softmax(QKᵀ/√d)": A,
        "head 2: A₂": A2,
        "mean over heads": heads.mean(0),
        "residual: I + mean": residual,
    },
    tokens,
    title="three tokens: rows attend to columns; every row of A sums to 1",
)
_ = figures.save_figure(fig, "00_prerequisites")

# %% [markdown]
# **What to notice.** Each row of each $A$ sums to 1, the heads differ (head 2 sends `[CLS]` to `p1` and
# `p2`, head 1 to itself and `p2`), and the residual matrix has the 1s of the identity on its diagonal:
# each token stays mostly itself. In a trained ViT the same holds with $N = 65$ tokens, 4 heads and 4
# layers (notebook 01).

# %% [markdown]
# ## The course map

# %%
import gae_utils as gu

fig = figures.course_map()
_ = figures.save_figure(fig, "00_course_map")

# %% [markdown]
# **What to notice.** Two notebooks introduce rules: 01 the self-attention rule (Eq. 5-6), 03 the
# rules of two streams (Eq. 7, and the cross-attention rules with their normalisation, Eq. 8-11). The
# others apply them to new models: 02 runs Eq. 5-6 in each tower of a dual encoder; 04 and 05 reuse
# Eq. 6-11 on encoder-decoder models (object queries reading an image, a decoder reading a source
# sentence); 06 returns to a single stream, a causal language model, and reads the last real token's
# row of $R - I$.
#
# | notebook | model | attention types | time |
# |---|---|---|---|
# | 00 prerequisites, notation | - | - | 30 min |
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
# ## Check yourself
# Answer before you open the answer; questions 1 and 4 need a small computation.
#
# **1.** One attention row has scores $(0, \ln 2, \ln 2)$ (already divided by $\sqrt d$). What are
# its attention probabilities?
# (a) $(0, 0.5, 0.5)$; (b) $(0.2, 0.4, 0.4)$; (c) $(1/3, 1/3, 1/3)$; (d) $(0, 0.69, 0.69)$.
#
# <details><summary>Answer</summary>
#
# (b). The softmax exponentiates, $e^0 = 1$ and $e^{\ln 2} = 2$, and divides by the sum $1 + 2 + 2 = 5$:
# $(0.2, 0.4, 0.4)$; a score of 0 does not give a probability of 0.
#
# </details>
#
# **2.** A ViT's classifier reads only the CLS token. Which row of the last layer's attention can
# change the class logit?
# (a) every row; (b) row 0, the CLS row; (c) the patch rows; (d) the last row.
#
# <details><summary>Answer</summary>
#
# (b). Only the CLS token's final state reaches the logit, and row 0 of the last layer's $A$ is the only
# row that mixes into it; notebook 01 shows the other rows' gradients are exactly 0.
#
# </details>
#
# **3.** Why does GAE start its relevancy map from $R = I$?
# (a) to make $R$ invertible; (b) the residual connection: after a layer each token is still itself plus
# what it mixed in; (c) attention rows sum to 1; (d) to normalise the gradients.
#
# <details><summary>Answer</summary>
#
# (b). A layer adds its attention output to its input, so the mixing matrix of a layer is $I + A$; the
# identity carries each token's own contribution.
#
# </details>
#
# **4.** A batch of $B = 2$ images, $K = 3$ targets each, through a layer with $H = 4$ heads and $N = 65$
# tokens. What is the shape of $\bar A$ (Eq. 5) for that layer?
# (a) $(2, 4, 65, 65)$; (b) $(2, 3, 4, 65, 65)$; (c) $(2, 3, 65, 65)$; (d) $(3, 65, 65)$.
#
# <details><summary>Answer</summary>
#
# (c). The gradient $\nabla A$ has one copy per target, $(B, K, H, N, N)$, and Eq. 5 averages over the
# heads, leaving $(B, K, N, N)$ (see the notation table).
#
# </details>

# %% [markdown]
# ## Take-aways
#
# - Attention: each row of $A = \mathrm{softmax}(QK^\top/\sqrt d)$ sums to 1 and mixes the tokens'
#   values; a layer has one $A$ per head, and a ViT's classifier reads the CLS token.
# - `R` starts as the identity (the residual connection) and every attention layer adds to it; its
#   explained row is the explanation.
# - `Ā` is gradient-weighted attention: the same attention explains different classes differently.
# - Every quantity here has a shape; when a cell fails, print the shapes first.
