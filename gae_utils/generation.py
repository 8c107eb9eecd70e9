"""Generated tokens explained from one teacher-forced forward and one vectorised backward
(:class:`~gae_utils.targets.TokenTarget`). Encoder-decoders: token ``t`` reads row ``t`` of
``R[target, source]`` and ``R[target, target]`` (Eq. 5-11); decoder-only LMs: one sequence, prompt
then continuation, token ``t`` reads its position's row of ``R - I``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import Adapter, find_adapter
from .explainer import Recording, record
from .explanation import Explanation
from .targets import TokenTarget

__all__ = ["explain_generation", "record_generation", "generation_steps"]

SERVES = ("generate", "causal_lm")  # adapter tasks explained here (``causal_lm``: prompt first)


def _generation_adapter(model: nn.Module, adapter: Adapter | None) -> Adapter:
    adapter = adapter or find_adapter(model)
    if adapter.task not in SERVES:
        raise ValueError(
            f"{type(model).__name__} (adapter {adapter.name!r}) is neither an encoder-decoder nor "
            "a causal LM; explain it with gae_utils.explain. Encoder-decoders: Hugging Face "
            "Marian/BART/T5 or a model containing torch.nn.Transformer; causal LMs: Hugging Face "
            "models routed through the attention interface."
        )
    return adapter


def _special_id(model: nn.Module, name: str) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, name, None) if config is not None else getattr(model, name, None)
    return int(value) if isinstance(value, int) else None


def generation_steps(
    generated: Tensor, eos_id: int | None = None, pad_id: int | None = None
) -> Tensor:
    """Which steps of a generation produced a real token: ``(B, T)`` bool for ``generated``
    ``(B, 1 + T)``.

    Step ``t`` predicts ``generated[:, t + 1]``; it is real up to and including the first ``eos_id``
    (later steps pad a finished sequence), or, without ``eos_id``, when its token is not ``pad_id``.
    """
    labels = generated[:, 1:]  # (B, T)
    if eos_id is not None:
        ended = (labels == eos_id).long().cumsum(dim=1)  # (B, T), >= 1 from the first EOS on
        return (ended - (labels == eos_id).long()) == 0
    if pad_id is not None:
        return labels != pad_id
    return torch.ones_like(labels, dtype=torch.bool)


def _checked_steps(
    adapter: Adapter, inputs: Any, generated: Any, steps: Sequence[int] | None
) -> tuple[int, list[int]]:
    """The prompt length ``P`` and the checked steps of ``generated``: ``(B, P + T)`` prompt then
    continuation (causal LM), ``(B, 1 + T)`` decoder start token then T tokens (encoder-decoder,
    ``P = 0``)."""
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError(
            "inputs must be the source tokenizer output, a dict with 'input_ids' (B, S) and "
            "'attention_mask' (B, S)"
        )
    if not isinstance(generated, Tensor) or generated.dtype.is_floating_point:
        raise TypeError(
            "generated must be a (B, 1 + T) tensor of token ids (e.g. model.generate(...)), got "
            f"{type(generated).__name__}"
        )
    if generated.ndim != 2 or generated.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"generated must be (B, 1 + T) for the batch of {inputs['input_ids'].shape[0]} "
            f"sources, got {tuple(generated.shape)}; add a batch dimension with generated[None]"
        )
    prompt = inputs["input_ids"].shape[1] if adapter.task == "causal_lm" else 0
    if prompt and generated.shape[1] <= prompt:
        raise ValueError(
            f"generated has {generated.shape[1]} columns, no more than the {prompt}-token prompt: "
            "for a causal LM it must be the prompt followed by the continuation, as "
            "model.generate(**inputs) returns it"
        )
    same = generated[:, :prompt] == inputs["input_ids"][:, :prompt].to(generated)  # (B, P)
    if not same.all():
        row, column = (~same).nonzero()[0].tolist()
        raise ValueError(
            f"generated does not start with the prompt: row {row} differs from "
            f"inputs['input_ids'] at column {column}. For a causal LM it must be the prompt "
            "followed by the continuation, as model.generate(**inputs) returns it (same prompts, "
            "same padding)"
        )
    mask = inputs.get("attention_mask")  # (B, P): a right-padded prompt is continued after pads
    if prompt and mask is not None and not bool(mask[:, -1].all()):
        row = int((mask[:, -1] == 0).nonzero()[0])
        raise ValueError(
            f"the prompt of row {row} ends in padding (right-padded), so its continuation follows "
            "the pads; pad prompts on the left as model.generate wants (tokenizer.padding_side = "
            "'left'), then generate and explain"
        )
    n = generated.shape[1] - max(prompt, 1)  # generated tokens
    if n < 1:
        raise ValueError(
            "generated holds no token after the decoder start token (shape "
            f"{tuple(generated.shape)}): nothing was generated to explain; pass the sequence "
            "including its start token"
        )
    steps = list(range(n)) if steps is None else [int(s) for s in steps]
    if not steps:
        raise ValueError(
            "steps is empty; pass None for every generated token or a list of step indices"
        )
    bad = [s for s in steps if not 0 <= s < n]
    if bad:
        raise ValueError(
            f"steps {bad} are out of range: the generation has {n} tokens (steps 0..{n - 1})"
        )
    return prompt, steps


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
    """The recording behind :func:`explain_generation` (same arguments; ``keep_heads`` keeps the
    per-head ``A`` and ``dA`` of every layer for the explorers).

    Returns:
        A :class:`~gae_utils.explainer.Recording` with K = len(steps) targets per example, target
        ``k`` reading step ``steps[k]``'s row; ``target``/``scores``: the tokens' ids and scores
        ``(B, K)``, ``logits`` ``(B, L, V)``.
    """
    adapter = _generation_adapter(model, adapter)
    inputs = adapter.inputs_of(model, inputs)
    prompt, steps = _checked_steps(adapter, inputs, generated, steps)
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    if prompt:  # causal LM: one sequence, prompt then continuation (real up to its first EOS)
        eos = _special_id(model, "eos_token_id")
        real = generation_steps(generated[:, prompt - 1 :], eos)  # (B, T)
        full = {
            "input_ids": generated[:, :-1],  # (B, P + T - 1) teacher forcing
            "attention_mask": torch.cat([mask.to(real.device), real.long()], dim=1)[:, :-1],
        }
    else:
        full = {
            "input_ids": inputs["input_ids"],
            "attention_mask": mask,
            "decoder_input_ids": generated[:, :-1],
        }
    # labels (B, L): the token each position produced; step t is read at position prompt - 1 + t
    target = TokenTarget(generated[:, 1:], [max(prompt - 1, 0) + s for s in steps], score)
    return record(model, full, target, adapter=adapter, keep_heads=keep_heads, eval_mode=eval_mode)


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
    tokenizer: Any = None,
) -> Explanation:
    """Explain every generated token of a batch: translations, summaries, LM continuations.

    Args:
        model: an encoder-decoder (Hugging Face Marian/BART/T5, a model containing
            ``torch.nn.Transformer``) or a Hugging Face causal LM routed through the attention
            interface.
        inputs: the source batch (encoder-decoder) or the prompt batch (causal LM, left-padded as
            ``generate`` wants it): ``{"input_ids": (B, S), "attention_mask": (B, S)}``.
        generated: what ``model.generate(**inputs)`` returns: ``(B, 1 + T)`` decoder start token
            then T tokens (encoder-decoder), ``(B, S + T)`` prompt then T tokens (causal LM);
            finished sequences padded after their EOS.
        method: ``gae`` or a baseline of :data:`gae_utils.methods.METHODS`.
        start_layer: first aggregated layer (forward order: encoder layers first).
        steps: the generated tokens to explain (default all T); step ``t`` is token ``t`` given
            everything before it (teacher forcing).
        score: ``"logit"`` or ``"log_prob"`` (see :class:`~gae_utils.targets.TokenTarget`).
        adapter: overrides the adapter lookup.
        eval_mode: explain in eval mode (restored afterwards).
        tokenizer: fills ``exp.tokens`` (per example, padding and the steps after its EOS
            removed) and ``exp.target_tokens`` (the explained tokens); without it only the ids are
            kept (``exp.token_ids``), see :meth:`~gae_utils.explanation.Explanation.with_tokens`.

    Returns:
        An :class:`~gae_utils.explanation.Explanation` with K = len(steps) targets per example.
        With prompt length ``P`` (0 for an encoder-decoder) and ``T`` generated tokens, step
        ``t`` produces ``generated[:, P + t]`` from position ``P - 1 + t`` and sees the columns
        ``0 .. P - 1 + t`` of ``generated[:, :-1]`` (the prompt and the tokens before it);
        ``exp.plot()`` draws these rows as a steps x tokens matrix.
        Encoder-decoder: ``relevance["source"]`` ``(B, K, S)`` (row ``t`` of ``R[target, source]``)
        and ``relevance["target"]`` ``(B, K, T)`` (prefix relevance). Causal LM:
        ``relevance["text"]`` ``(B, K, P + T - 1)`` (the step's row of ``R - I``, 0 after it).
        ``extra["steps"]``: the explained steps; ``extra["real_steps"]``: how many steps of each
        example are real tokens (up to its EOS); ``extra["prompt_length"]``: ``P``.
        ``token_ids``: ``"text"`` (causal LM) or ``"source"`` and ``"target"``.
    """
    adapter = _generation_adapter(model, adapter)
    rec = record_generation(
        model, inputs, generated, steps, score=score, adapter=adapter, eval_mode=eval_mode
    )
    exp = rec.explanation(method, start_layer)
    prompt, explained = _checked_steps(adapter, inputs, generated, steps)
    continuation = generated[:, max(prompt - 1, 0) :]  # (B, 1 + T)
    real = generation_steps(
        continuation, _special_id(model, "eos_token_id"), _special_id(model, "pad_token_id")
    )
    exp.extra = {
        "steps": explained,
        "real_steps": real.sum(dim=1).tolist(),
        "prompt_length": prompt,
        "target_is_token": True,
    }
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).to(real.device)
    before = torch.cat([mask.new_ones(mask.shape[0], max(1 - prompt, 0)), real.long()], dim=1)
    decoded = torch.cat([mask[:, :prompt], before], dim=1)[:, :-1]  # (B, P + T - 1) or (B, T)
    if prompt:  # causal LM: one sequence, the columns of generated[:, :-1]
        return exp.with_token_ids(generated[:, :-1], decoded, tokenizer)
    exp = exp.with_token_ids(inputs["input_ids"], mask, name="source")
    return exp.with_token_ids(generated[:, :-1], decoded, tokenizer, name="target")
