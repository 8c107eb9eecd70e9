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
# # Exercise 05.02 · The encoder-decoder rules as a loop
#
# **About 25 minutes.**
#
# Notebook 05 stated the rules of an encoder-decoder: encoder self-attention (Eq. 6-7 on the source
# rows), decoder self-attention (Eq. 6-7 on the target rows) and decoder cross-attention (Eq. 10-11,
# with the normalisation of Eq. 8-9). Here you implement them as a loop over the recorded layers and
# check your maps against the library's.
#
# Setup (run it): one caption, its greedy translation, and a recording that explains every generated
# token (K = T targets) with per-head attention and gradients kept.

# %%
import torch

from gae_utils.generation import record_generation
from gae_workbook.models import zoo
from gae_workbook.models.translator import greedy_decode
from shapesworld.inputs import encode_sources, translate_vocabulary
from shapesworld.language import caption
from shapesworld.scenes import ShapesWorld

model = zoo.load("shapes-translate")
vocab = translate_vocabulary()
scene = next(s for s in ShapesWorld(seed=99).scenes(200) if len(s.objects) >= 2 and "right" in caption(s).words)
inputs = encode_sources([caption(scene)], vocab, length=None)
generated = greedy_decode(model, inputs, vocab.bos_id, vocab.eos_id, vocab.pad_id)
rec = record_generation(model, inputs, generated, keep_heads=True)
for layer in rec.layers:
    print(
        f"{layer.kind:5s} {layer.query} -> {layer.key}: attn {tuple(layer.attn.shape)}, grad {tuple(layer.grad.shape)}"
    )
library = rec.explanation("gae")  # library.maps[(a, b)]: (B, K, Na, Nb); library.relevance["source"]: (B, T, S)

# %% [markdown]
# **Your task.**
#
# 1. Start from `R[source, source] = I`, `R[target, target] = I`, and zeros for `R[source, target]` and
#    `R[target, source]`, each of shape `(B, K, Na, Nb)`.
# 2. For each layer in `rec.layers`: Eq. 5, `A_bar = mean over heads of (grad * attn)^+`; then for a
#    self-attention layer of modality `s`, Eq. 6-7 (`R[s, x] += A_bar @ R[s, x]` for both `x`); for the
#    cross-attention (queries `s = "target"`, keys `q = "source"`), Eq. 10 and Eq. 11, computed from the
#    maps before the layer, with `Rbar` of Eq. 8-9 (write it, or use `gae_utils.rules.normalize_self_relevancy`).
# 3. Check your four maps against `library.maps`.
# 4. Generated token `t` is explained by target `k = t`. Show that `library.relevance["source"][:, t]` is
#    row `t` of your `R[target, source]` for target `t`.


# %%
def rbar(R: torch.Tensor) -> torch.Tensor:
    """Eq. 8-9: subtract I, rescale each row's context part to sum 1 (rows summing to 0 stay 0), add I."""
    eye = torch.eye(R.shape[-1])
    context = R - eye
    total = context.sum(-1, keepdim=True)
    return torch.where(total == 0, context, context / total) + eye


B, K = rec.layers[0].grad.shape[:2]
sizes = {"source": inputs["input_ids"].shape[1], "target": generated.shape[1] - 1}
R = {
    (a, b): torch.eye(n).repeat(B, K, 1, 1) if a == b else torch.zeros(B, K, n, sizes[b])
    for a, n in sizes.items()
    for b in sizes
}
for layer in rec.layers:
    A_bar = (layer.grad * layer.attn[:, None]).clamp(min=0).mean(2)  # Eq. 5: (B, K, Nq, Nk)
    s, q = layer.query, layer.key
    if layer.kind == "self":
        additions = [((s, x), A_bar @ R[s, x]) for x in sizes]  # Eq. 6, 7
    else:
        additions = [((s, q), rbar(R[s, s]).mT @ A_bar @ rbar(R[q, q])), ((s, s), A_bar @ R[q, s])]  # Eq. 10, 11
    for key, value in additions:
        R[key] = R[key] + value

for key in R:
    gap = (R[key] - library.maps[key]).abs().max()
    print(f"R[{key[0]}, {key[1]}] {tuple(R[key].shape)} max |mine - library| = {gap:.1e}")
steps = torch.arange(K)
rows = R["target", "source"][:, steps, steps]  # (B, T, S): row t of target t's map
print("R[source, target] stays 0:", bool(torch.count_nonzero(R["source", "target"]) == 0))


# %% [markdown]
# ## Check your answer
# Run this cell: it says which part is wrong, or that all is right.

# %%
# your code defines: R (a dict of four maps), rows (B, T, S)
assert set(R) == set(library.maps), "R: the four maps, keyed ('source', 'source'), ('source', 'target'), ..."
for key in R:
    assert torch.allclose(R[key], library.maps[key], atol=1e-6), f"R[{key}] differs from the library's"
assert torch.allclose(rows, library.relevance["source"], atol=1e-6), "rows: row t of target t's R[target, source]"
print("✓ right: your loop reproduces the library's four maps and its source relevance")
