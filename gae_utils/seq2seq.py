"""Encoder-decoder transformers: every generated token explained from one forward and one backward.

Chefer et al. ICCV 2021, Sec. 3 (Eq. 5-11) and method.md: an encoder-decoder has two modalities,
``"source"`` (encoder self-attention, Eq. 6) and ``"target"`` (causal decoder self-attention,
Eq. 6-7), joined by the decoder's cross-attention target -> source (Eq. 8-11). For generated token
``t`` the target is its logit at step ``t`` with the generation fed back (teacher forcing); its
explanation is row ``t`` of ``R[target, source]`` (source relevance) and of ``R[target, target]``
(prefix relevance).

:func:`explain_generation` explains all T generated tokens of a batch at once. ``Abar`` (Eq. 5)
depends on each token's own gradient ``dA``, so T gradients are needed; they come from *one*
vectorised backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) over the T
one-hot selections of the ``(B, T)`` token scores, exact like T separate ``.backward()`` calls.
Each token then reads its own row of the ``(B, T, Na, Nb)`` maps (per-target row weights of
:class:`~gae_utils.layout.TokenLayout`).

Supported families are listed in :data:`gae_utils.adapters.SEQ2SEQ_ADAPTERS` (Hugging Face
Marian, BART, T5, and models built around ``torch.nn.Transformer`` such as
:class:`TransformerTranslator`). This module also holds the ``shapes-translate`` task helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .explainer import Recording, _check_finite
from .explanation import Explanation
from .layout import TokenLayout
from .recorder import AttentionCaptureError, AttentionRecorder, evaluating

__all__ = [
    "TransformerTranslator",
    "explain_generation",
    "record_generation",
    "generation_steps",
    "greedy_decode",
    "load_marian",
    "translate_vocabulary",
    "encode_sources",
    "encode_targets",
    "alignment_hits",
    "MARIAN_EN_DE",
]

MARIAN_EN_DE = "Helsinki-NLP/opus-mt-en-de"
SCORES = ("logit", "log_prob")


def _seq2seq_adapter(model: nn.Module, adapter: Adapter | None) -> Adapter:
    adapter = adapter or find_adapter(model)
    if adapter.token_logits is None:
        raise ValueError(
            f"{type(model).__name__} (adapter {adapter.name!r}) is not an encoder-decoder; explain it with "
            "gae_utils.explain. Encoder-decoders: Hugging Face Marian/BART/T5 or a model containing "
            "torch.nn.Transformer."
        )
    return adapter


def _special_id(model: nn.Module, name: str) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, name, None) if config is not None else getattr(model, name, None)
    return int(value) if isinstance(value, int) else None


def generation_steps(generated: Tensor, eos_id: int | None = None, pad_id: int | None = None) -> Tensor:
    """Which steps of a generation produced a real token: ``(B, T)`` bool for ``generated`` ``(B, 1 + T)``.

    Step ``t`` predicts ``generated[:, t + 1]``; it is real up to and including the first
    ``eos_id`` (later steps are padding of a finished sequence). Without ``eos_id``, steps
    whose token is ``pad_id`` are padding.
    """
    labels = generated[:, 1:]  # (B, T)
    if eos_id is not None:
        ended = (labels == eos_id).long().cumsum(dim=1)  # (B, T), >= 1 from the first EOS on
        return (ended - (labels == eos_id).long()) == 0
    if pad_id is not None:
        return labels != pad_id
    return torch.ones_like(labels, dtype=torch.bool)


def _check_generation(inputs: Any, generated: Any, steps: Sequence[int] | None) -> list[int]:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError(
            "inputs must be the source tokenizer output, a dict with 'input_ids' (B, S) and 'attention_mask' (B, S)"
        )
    if not isinstance(generated, Tensor) or generated.dtype.is_floating_point:
        raise TypeError(
            "generated must be a (B, 1 + T) tensor of token ids (e.g. model.generate(...)), got "
            f"{type(generated).__name__}"
        )
    if generated.ndim != 2 or generated.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"generated must be (B, 1 + T) for the batch of {inputs['input_ids'].shape[0]} sources, got "
            f"{tuple(generated.shape)}; add a batch dimension with generated[None]"
        )
    n = generated.shape[1] - 1
    if n < 1:
        raise ValueError(
            "generated holds no token after the decoder start token (shape "
            f"{tuple(generated.shape)}): nothing was generated to explain; pass the sequence including its start token"
        )
    steps = list(range(n)) if steps is None else [int(s) for s in steps]
    if not steps:
        raise ValueError("steps is empty; pass None for every generated token or a list of step indices")
    bad = [s for s in steps if not 0 <= s < n]
    if bad:
        raise ValueError(f"steps {bad} are out of range: the generation has {n} tokens (steps 0..{n - 1})")
    return steps


def record_generation(
    model: nn.Module,
    inputs: Mapping,
    generated: Tensor,
    steps: Sequence[int] | None = None,
    *,
    score: str = "logit",
    adapter: Adapter | None = None,
    keep_heads: bool = False,
    eval_mode: bool = True,
) -> Recording:
    """Record a teacher-forced forward pass and the gradient of every explained token's logit.

    Args:
        model: an encoder-decoder served by a seq2seq adapter.
        inputs: the source batch, ``{"input_ids": (B, S), "attention_mask": (B, S)}``.
        generated: ``(B, 1 + T)`` the decoder start token then the generated tokens (as
            ``generate()`` returns them; finished sequences padded after their EOS).
        steps: the generated positions to explain (default: all T). Step ``t`` is the logit of
            ``generated[:, t + 1]`` given ``generated[:, : t + 1]``.
        score: the explained scalar of each token: ``"logit"`` (method.md: its logit at step ``t``)
            or ``"log_prob"`` (its log-softmax, i.e. the logit minus the log-sum-exp of all logits
            at that step: what raises this token *against the other tokens*).
        adapter: overrides the adapter lookup.
        keep_heads: keep per-head ``A`` and ``dA`` of every layer (the explorer's head slider).
        eval_mode: explain in eval mode (restored afterwards).

    Returns:
        A :class:`~gae_utils.explainer.Recording` with K = len(steps) targets per example whose
        layout reads row ``steps[k]`` for target ``k``; ``target`` holds the explained token ids
        ``(B, K)``, ``scores`` their logits, ``logits`` the ``(B, T, V)`` teacher-forced logits.
    """
    adapter = _seq2seq_adapter(model, adapter)
    steps = _check_generation(inputs, generated, steps)
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
    full = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])),
        "decoder_input_ids": generated[:, :-1],  # (B, T) teacher forcing
    }
    _check_finite(full)
    adapter.check(model, full)
    labels = generated[:, 1:]  # (B, T) the token each step produced
    base = adapter.layout(model, full)
    batch, n = labels.shape
    k = len(steps)
    rows = F.one_hot(torch.tensor(steps, device=labels.device), n).to(torch.float32)  # (K, T)
    rows = rows.expand(batch, -1, -1)  # (B, K, T): target k reads row steps[k]
    layout = TokenLayout(base.segments, base.readouts, {r.name: rows for r in base.readouts})
    with AttentionRecorder(model, adapter, keep_heads=keep_heads, eval_mode=eval_mode) as rec:
        with torch.enable_grad():
            output = adapter.call(model, full)
            logits = adapter.token_logits(output)  # (B, T, V)
            if logits.ndim != 3 or logits.shape[:2] != labels.shape:
                raise AttentionCaptureError(
                    f"the model returned logits of shape {tuple(logits.shape)}, expected (B, T, V) = ({batch}, {n}, V)"
                )
            if labels.min() < 0 or labels.max() >= logits.shape[-1]:
                raise ValueError(f"generated holds ids outside the model's {logits.shape[-1]} output tokens")
            if not torch.isfinite(logits).all():
                raise ValueError("the model produced NaN or Inf logits for these inputs; check the inputs and weights.")
            scored = logits.log_softmax(dim=-1) if score == "log_prob" else logits  # (B, T, V)
            scores = scored.gather(-1, labels[..., None])[..., 0]  # (B, T) score of each generated token
            # target k selects column steps[k] of every example: K backward passes as one vectorised pass
            select = torch.zeros(k, batch, n, dtype=scores.dtype, device=scores.device)  # (K, B, T)
            select[torch.arange(k), :, torch.tensor(steps)] = 1
            rec.batched_backward(scores, select, None)
        layers = rec.complete_records()
    index = torch.tensor(steps, device=labels.device)
    return Recording(
        layers=layers,
        layout=layout,
        logits=logits.detach(),
        output=None,
        target=labels[:, index],  # (B, K)
        scores=scores.detach()[:, index],  # (B, K)
        multi_target=True,
        model_name=type(model).__name__,
    )


def explain_generation(
    model: nn.Module,
    inputs: Mapping,
    generated: Tensor,
    method: str = "gae",
    start_layer: int = 0,
    steps: Sequence[int] | None = None,
    *,
    score: str = "logit",
    adapter: Adapter | None = None,
    eval_mode: bool = True,
) -> Explanation:
    """Explain every generated token of a batch of translations (or any seq2seq generation).

    Args:
        model: Hugging Face ``MarianMTModel``/``BartForConditionalGeneration``/
            ``T5ForConditionalGeneration`` (any attention implementation; switched to eager for
            the call) or a model containing ``torch.nn.Transformer`` that follows the call
            convention ``model(input_ids, decoder_input_ids, attention_mask=None) -> (B, T, V)``.
        inputs: the source batch, ``{"input_ids": (B, S), "attention_mask": (B, S)}``.
        generated: ``(B, 1 + T)`` decoder start token + generated tokens (e.g. ``model.generate``).
        method: ``gae`` or a baseline of :data:`gae_utils.engine.METHODS` (``rollout`` applies the
            rules to the head-mean attention, with no gradients).
        start_layer: first aggregated layer (forward order: encoder layers first).
        steps: generated positions to explain (default all).
        score: ``"logit"`` (default, method.md) or ``"log_prob"`` (see :func:`record_generation`).
        adapter: overrides the adapter lookup.
        eval_mode: explain in eval mode (restored afterwards).

    Returns:
        An :class:`~gae_utils.explanation.Explanation` with ``relevance["source"]`` ``(B, K, S)``:
        row ``t`` of ``R[target, source]`` for each explained step, ``relevance["target"]``
        ``(B, K, T)``: row ``t`` of ``R[target, target]`` (prefix relevance, zero after ``t``),
        ``target`` the explained token ids and ``extra["steps"]`` the explained step indices and
        ``extra["real_steps"]`` how many steps of each example are real tokens (up to its EOS).
    """
    rec = record_generation(model, inputs, generated, steps, score=score, adapter=adapter, eval_mode=eval_mode)
    exp = rec.explanation(method, start_layer)
    real = generation_steps(generated, _special_id(model, "eos_token_id"), _special_id(model, "pad_token_id"))
    exp.extra = {
        "steps": list(steps) if steps is not None else list(range(generated.shape[1] - 1)),
        "real_steps": real.sum(dim=1).tolist(),
    }
    return exp


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    inputs: Mapping,
    start_id: int,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 16,
    adapter: Adapter | None = None,
) -> Tensor:
    """Greedy decoding through the adapter's call (no cache): ``(B, 1 + T)`` ids, padded after EOS.

    Works for every seq2seq adapter (a model built on ``torch.nn.Transformer`` has no ``generate``);
    for Hugging Face models ``model.generate(..., do_sample=False, num_beams=1)`` gives the same ids.
    """
    adapter = _seq2seq_adapter(model, adapter)
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    out = torch.full((ids.shape[0], 1), start_id, dtype=torch.long, device=ids.device)  # (B, 1)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            logits = adapter.token_logits(
                adapter.call(model, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": out})
            )
            nxt = logits[:, -1].argmax(dim=-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if done.all():
                break
    return out


class TransformerTranslator(nn.Module):
    """A translation model around ``torch.nn.Transformer``, following the documented call convention.

    ``forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask (B, S) | None) -> (B, T, V)``;
    the causal mask is applied inside, learned position embeddings, separate source/target
    embeddings. Any model with this forward that contains a ``torch.nn.Transformer`` is explained
    by the ``torch-transformer`` adapter.
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int = 64,
        nhead: int = 4,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        max_len: int = 64,
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
    ):
        super().__init__()
        self.pad_token_id, self.eos_token_id, self.vocab_size = pad_token_id, eos_token_id, max(src_vocab, tgt_vocab)
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.transformer = nn.Transformer(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, batch_first=True
        )
        self.generator = nn.Linear(d_model, tgt_vocab)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        s, t = input_ids.shape[1], decoder_input_ids.shape[1]
        src = self.src_embed(input_ids) + self.position.weight[:s]  # (B, S, D)
        tgt = self.tgt_embed(decoder_input_ids) + self.position.weight[:t]  # (B, T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tgt.device, dtype=tgt.dtype)  # (T, T)
        padding = None if attention_mask is None else ~attention_mask.bool()  # (B, S), True = ignore
        hidden = self.transformer(
            src,
            tgt,
            tgt_mask=causal,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
            tgt_is_causal=True,
        )  # (B, T, D)
        return self.generator(hidden)  # (B, T, V)


def load_marian(name: str = MARIAN_EN_DE) -> tuple[nn.Module, Any]:
    """A pretrained Hugging Face Marian model (eager attention, eval mode) and its tokenizer.

    Raises:
        PretrainedUnavailableError: no network and no local cache (fails at once offline).
    """
    from transformers import MarianMTModel, MarianTokenizer

    from .zoo import PretrainedUnavailableError, offline_unless_reachable

    try:
        with offline_unless_reachable():
            tokenizer = MarianTokenizer.from_pretrained(name)
            model = MarianMTModel.from_pretrained(name, attn_implementation="eager")
    except Exception as err:  # network, hub or cache errors all mean: no weights here
        raise PretrainedUnavailableError(
            f"could not load pretrained {name!r} ({type(err).__name__}: {str(err)[:200]}). Offline, use the "
            "embedded translation model: gae_utils.zoo.load('shapes-translate')."
        ) from err
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- shapes-translate task

SOURCE_LENGTH = 9  # at most 8 caption words + [EOS]
TARGET_LENGTH = 7  # [BOS] + at most 5 toy words + [EOS]


def translate_vocabulary():
    """One vocabulary for captions and toy words (Marian shares its embeddings between both sides)."""
    from .language import TOY_LEXICON, Vocabulary

    return Vocabulary([*Vocabulary.captions().tokens[6:], *TOY_LEXICON.values()])


def encode_sources(captions, vocab, length: int | None = SOURCE_LENGTH) -> dict[str, Tensor]:
    """Captions -> ``{"input_ids": (N, S), "attention_mask": (N, S)}``, ``words [EOS]`` (Marian style)."""
    ids, mask = vocab.encode_batch(
        [c.words for c in captions], cls_token=False, sep_token=False, eos_token=True, length=length
    )
    return {"input_ids": ids, "attention_mask": mask.long()}


def encode_targets(translations, vocab, length: int | None = TARGET_LENGTH) -> Tensor:
    """Translations -> ``(N, T + 1)`` ids ``[BOS] words [EOS] [PAD]..``.

    Decoder inputs are ``[:, :-1]``, labels ``[:, 1:]``."""
    ids, _ = vocab.encode_batch(
        [t.target for t in translations],
        cls_token=False,
        sep_token=False,
        bos_token=True,
        eos_token=True,
        length=length,
    )
    return ids


def alignment_hits(relevance: Tensor, translations: Sequence, steps: Sequence[int] | None = None) -> Tensor:
    """Whether the most relevant source word of each generated word is one of its aligned words.

    Args:
        relevance: ``(B, K, S)`` source relevance of K explained steps (``words [EOS] [PAD]..`` columns).
        translations: the B reference :class:`~gae_utils.language.Translation` (the generation
            must equal them word for word for the alignment to apply).
        steps: the step of each of the K columns (default ``0..K-1``); step ``t`` is target word ``t``.

    Returns:
        ``(P,)`` bool, one entry per (example, target word) pair that was explained.
    """
    steps = list(range(relevance.shape[1])) if steps is None else list(steps)
    hits = []
    for b, tr in enumerate(translations):
        n_words = len(tr.source)
        for k, t in enumerate(steps):
            if t >= len(tr.target):
                continue  # the EOS step has no aligned word
            best = int(relevance[b, k, :n_words].argmax())  # words only: EOS and padding excluded
            hits.append(best in tr.alignment[t])
    return torch.tensor(hits, dtype=torch.bool)
