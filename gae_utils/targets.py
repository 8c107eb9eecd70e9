"""What is explained: target objects that pick each example's scalar(s) and the row(s) they read.

Chefer et al. ICCV 2021, Sec. 3: one explained scalar per example (a class logit, a detection, a
generated token, a pair's similarity), whose gradient Eq. 5 takes. :meth:`Target.select` returns
the ``(B, K)`` scores and the layout saying which row each target reads; how their gradients are
taken is decided in one place, :meth:`~gae_utils.capture.AttentionRecorder.differentiate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from .capture import Gradients
from .layout import TokenLayout

__all__ = [
    "Selection",
    "Target",
    "ClassTarget",
    "ScoreTarget",
    "NextTokenTarget",
    "QueryTarget",
    "TokenTarget",
    "PairSimilarity",
    "SplitPairSimilarity",
    "class_target",
    "generation_target",
]

TargetLike = int | str | Sequence[int] | Sequence[str] | Tensor | Callable[[Any], Tensor] | None


@dataclass
class Selection:
    """The explained scalars of one batch.

    Attributes:
        scores: ``(B, K)`` the scalars, still attached to the graph.
        index: ``(B, K)`` the explained ids (classes, tokens), or None.
        multi_target: the caller asked for K targets per example (results keep the K dimension).
        layout: the token layout, with per-(example, target) row weights where targets read their
            own rows.
        extra: JSON-ready facts for the result (DETR: the explained queries).
        gradients: which layers explain which scores, when not every layer explains ``scores``
            (dual encoders: each tower explains its own view of the pair matrix); empty: one
            :class:`~gae_utils.capture.Gradients` of ``scores`` for every layer.
    """

    scores: Tensor
    index: Tensor | None
    multi_target: bool
    layout: TokenLayout
    extra: dict = field(default_factory=dict)
    gradients: tuple[Gradients, ...] = ()

    def parts(self) -> tuple[Gradients, ...]:
        """What the recorder differentiates (:attr:`gradients`, by default ``scores``
        everywhere)."""
        return self.gradients or (Gradients(self.scores),)


class Target:
    """Base class: what to explain in a model's output (the scores and the rows they read)."""

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        """The explained scalars of this batch, from the model's ``output`` and the adapter's
        reading of it, ``logits`` (None without a head), and ``layout`` of the inputs (gradients
        enabled)."""
        raise NotImplementedError


def _as_index(target: Any, batch: int, device: torch.device, what: str) -> Tensor:
    """An int, a sequence or a tensor of integer ids as ``(B,)`` or ``(B, K)``."""
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    if isinstance(target, str):
        raise ValueError(f"target must hold {what} indices (integers), got the string {target!r}")
    index = torch.as_tensor(target, device=device)
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"target must hold {what} indices (integers), got dtype {index.dtype}")
    index = index.long()
    return index.expand(batch) if index.ndim == 0 else index


def _label_ids(model: Module, target: str | Sequence[str], what: str) -> int | list[int]:
    """Class names -> indices through ``model.config.id2label`` (case-insensitive)."""
    if what == "token":
        raise ValueError(
            f"target={target!r} is a string, but a language model's target is a vocabulary token "
            "id: pass tokenizer(' red', add_special_tokens=False).input_ids[0], or a callable of "
            "the next-token logits (B, V)"
        )
    labels = getattr(getattr(model, "config", None), "id2label", None) or {}
    index = {str(name).lower(): int(i) for i, name in labels.items()}
    names = [target] if isinstance(target, str) else list(target)
    missing = [n for n in names if n.lower() not in index]
    if missing:
        known = (
            f"model.config.id2label has {len(index)} labels, e.g. {list(labels.values())[:5]}"
            if index
            else f"{type(model).__name__} has no label names (model.config.id2label)"
        )
        raise ValueError(
            f"target {missing[0]!r} is not a class name: {known}. Pass a label of id2label, a "
            "class index (int), a (B,) or (B, K) tensor of indices, or a callable of the logits"
        )
    ids = [index[n.lower()] for n in names]
    return ids[0] if isinstance(target, str) else ids


class ClassTarget(Target):
    """A class logit per example: ``None`` (the predicted class), an ``int``, a label of
    ``model.config.id2label`` (or a list of B labels), a ``(B,)`` tensor, or a ``(B, K)`` tensor
    for K classes per example from one forward pass; ``what``: ``"class"`` or ``"token"`` (a
    language model's vocabulary), as errors name them."""

    def __init__(self, target: TargetLike = None, what: str = "class"):
        self.target, self.what = target, what

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        if logits is None:
            raise ValueError(
                f"{type(model).__name__} has no class logits (an encoder or a feature extractor "
                "without a classification head): pass target=callable(output) -> (B,) scores, "
                "e.g. a similarity or a projection of its features, or use "
                "gae_utils.explain_similarity for sentence pairs."
            )
        if logits.ndim != 2:
            raise ValueError(
                f"class targets need (B, C) logits, but the model returned {tuple(logits.shape)}"
            )
        batch, num_classes = logits.shape
        target = self.target
        if isinstance(target, str) or (
            isinstance(target, (list, tuple)) and target and isinstance(target[0], str)
        ):
            target = _label_ids(model, target, self.what)
        index = (
            logits.argmax(dim=-1)
            if target is None
            else _as_index(target, batch, logits.device, self.what)
        )
        multi = index.ndim == 2
        if index.ndim not in (1, 2) or index.shape[0] != batch:
            raise ValueError(
                f"target of shape {tuple(index.shape)} does not fit a batch of {batch}: pass an "
                f"int, a ({batch},) tensor, or a ({batch}, K) tensor for K targets per example."
            )
        if index.numel() and (index.min() < 0 or index.max() >= num_classes):
            bad = int(index.max() if index.max() >= num_classes else index.min())
            owner, unit = ("model", "classes") if self.what == "class" else ("vocabulary", "tokens")
            raise ValueError(
                f"target {self.what} {bad} is out of range: the {owner} has {num_classes} {unit} "
                f"(0..{num_classes - 1})."
            )
        index = index if multi else index[:, None]  # (B, K)
        return Selection(logits.gather(1, index), index, multi, layout)


class ScoreTarget(Target):
    """Any score of the logits of what is explained: ``fn(logits) -> (B,)`` or ``(B, K)``.

    One contract in every family, ``logits`` being the adapter's reading of the output: image
    classifiers (timm, HF): ``(B, C)``; VQA (LXMERT, ViLT, VisualBERT): ``(B, A)`` answers; causal
    LMs, VLMs: next-token ``(B, V)``; encoder-decoders: ``(B, T, V)``; headless timm: ``(B, D)``
    features. Models without logits (HF ``ViTModel``, text encoders): ``fn`` gets the output."""

    def __init__(self, fn: Callable[[Any], Tensor]):
        self.fn = fn

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        received = output if logits is None else logits
        try:
            scores = self.fn(received)
        except (AttributeError, TypeError, KeyError) as err:
            fix = (
                f"it receives the {tuple(received.shape)} logits of what is explained, not the "
                "model's output object: e.g. target=lambda logits: logits[:, 3] - logits[:, 7]"
                if isinstance(received, Tensor)
                else f"{type(received).__name__}: the model has no logits, so it receives its "
                "output: score one of its fields, e.g. target=lambda out: out.pooler_output @ w"
            )
            raise TypeError(f"the callable target failed ({err}): {fix}.") from err
        batch = logits.shape[0] if logits is not None else getattr(scores, "shape", (None,))[0]
        if not isinstance(scores, Tensor) or scores.ndim not in (1, 2) or scores.shape[0] != batch:
            raise ValueError(
                f"a callable target must return one score per example, shape (B,) or (B, K); got "
                f"{getattr(scores, 'shape', type(scores).__name__)}"
            )
        return Selection(
            scores if scores.ndim == 2 else scores[:, None], None, scores.ndim == 2, layout
        )


class NextTokenTarget(Target):
    """The next token of a decoder-only language model, after each example's chosen position.

    Args:
        target: as :class:`ClassTarget`'s over the next-token logits, or a callable
            ``next_logits (B, V) -> (B,)`` or ``(B, K)`` (e.g. ``lambda z: z[:, yes] - z[:, no]``).
        position_of: ``inputs -> (B,)`` the position whose next token is explained.
    """

    def __init__(self, target: Any, position_of: Callable[[Any], Tensor]):
        self.target, self.position_of = target, position_of

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        if logits is None or logits.ndim != 3:
            raise ValueError(f"{type(model).__name__} returned no (B, L, V) next-token logits")
        position = self.position_of(inputs).to(logits.device)  # (B,)
        rows = torch.arange(logits.shape[0], device=logits.device)  # (B,)
        next_logits = logits[rows, position]  # (B, V)
        if callable(self.target):
            return ScoreTarget(self.target).select(model, inputs, next_logits, next_logits, layout)
        return ClassTarget(self.target, "token").select(model, inputs, output, next_logits, layout)


@dataclass(eq=False)
class QueryTarget(Target):
    """Detected objects of a set-prediction detector (DETR): each target is one object query, its
    score the logit of the query's most probable real class, its row that query's row of
    ``R[query, image]`` (Chefer et al. ICCV 2021, Sec. 4).

    Args:
        target: ``None`` (every detection whose best real-class probability is above ``threshold``),
            an ``int`` query for every image, a ``(B,)``/``(B, K)`` tensor of query indices, or a
            list of B lists (images may differ in length; shorter ones are padded).
        class_probabilities: ``(B, Q, C')`` logits -> ``(B, Q, C)`` probabilities of the real
            classes.
        layout_of: ``(model, inputs, output) -> TokenLayout`` (the feature grid is known after the
            forward pass), whose readouts read query rows through per-target weights.
        threshold: confidence of a detection.
    """

    target: Any
    class_probabilities: Callable[[Tensor], Tensor]
    layout_of: Callable[[Module, Any, Any], TokenLayout]
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if callable(self.target):
            raise TypeError(
                "detector targets are query indices (int, tensor or list of lists); a callable "
                "target has no explained row of R[query, image]."
            )

    def queries(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``queries (B, K)`` (-1 in padding slots) and ``classes (B, K)`` (their best real class,
        -1 padded)."""
        batch, n_queries = logits.shape[:2]
        best, classes = self.class_probabilities(logits.detach()).max(-1)  # (B, Q) each
        if self.target is None:
            lists = [(best[b] > self.threshold).nonzero().flatten().tolist() for b in range(batch)]
            if not any(lists):
                raise ValueError(
                    f"no object query of any image has a class probability above {self.threshold}; "
                    "pass target=<query index> (or a list of query indices per image) to explain "
                    "chosen queries."
                )
        elif isinstance(self.target, (list, tuple)) and all(
            isinstance(row, (list, tuple)) for row in self.target
        ):
            if len(self.target) != batch:
                raise ValueError(
                    f"a list target must hold one list of query indices per image ({batch} lists)"
                )
            lists = [[int(q) for q in row] for row in self.target]
        else:
            index = _as_index(self.target, batch, logits.device, "query")
            index = index[:, None] if index.ndim == 1 else index  # one query per image
            if index.ndim != 2 or index.shape[0] != batch:
                raise ValueError(
                    f"target of shape {tuple(index.shape)} does not fit a batch of {batch}: pass "
                    f"an int query, a ({batch},) or ({batch}, K) tensor of query indices, or a "
                    f"list of {batch} lists."
                )
            lists = [[int(q) for q in row if int(q) >= 0] for row in index.tolist()]
        bad = [q for row in lists for q in row if not 0 <= q < n_queries]
        if bad:
            raise ValueError(
                f"query index {bad[0]} is out of range: the model has {n_queries} object queries"
            )
        k = max(1, max(len(row) for row in lists))
        queries = torch.tensor(
            [row + [-1] * (k - len(row)) for row in lists], dtype=torch.long, device=logits.device
        )
        picked = classes.gather(1, queries.clamp_min(0))  # (B, K)
        return queries, torch.where(queries >= 0, picked, torch.full_like(picked, -1))

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        if logits is None:
            raise ValueError(
                f"{type(model).__name__} returned no (B, Q, C') class logits for its object queries"
            )
        queries, classes = self.queries(logits)
        valid = queries >= 0  # (B, K)
        per_query = logits.gather(
            1, queries.clamp_min(0)[..., None].expand(-1, -1, logits.shape[-1])
        )  # (B, K, C')
        scores = per_query.gather(2, classes.clamp_min(0)[..., None]).squeeze(-1)  # (B, K)
        scores = torch.where(valid, scores, scores * 0)  # padding: a constant, its gradient is zero
        # (B, K, Q): target k reads query row queries[:, k]
        rows = F.one_hot(queries.clamp_min(0), logits.shape[1]).to(logits.dtype) * valid[..., None]
        layout = _reading(self.layout_of(model, inputs, output), rows)
        return Selection(scores, classes, True, layout, {"queries": queries.tolist()})


def _reading(layout: TokenLayout, rows: Tensor) -> TokenLayout:
    """``layout`` whose readouts weigh the rows of target ``k`` by ``rows[:, k]`` ``(B, N)``."""
    return replace(layout, weights={r.name: rows for r in layout.readouts})


SCORES = ("logit", "log_prob")


class TokenTarget(Target):
    """Generated tokens under teacher forcing: target ``k`` is the score of token
    ``labels[:, steps[k]]`` at step ``steps[k]``, read at row ``steps[k]``; the K gradients come
    from one vectorised backward.

    Args:
        labels: ``(B, T)`` the token each step produced.
        steps: the explained steps.
        score: ``"logit"`` or ``"log_prob"`` (the logit minus the step's log-sum-exp: what raises
            this token *against the other tokens*).
    """

    def __init__(self, labels: Tensor, steps: Sequence[int], score: str = "logit"):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
        self.labels, self.steps, self.score = labels, list(steps), score

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        batch, n = self.labels.shape
        if logits is None or logits.ndim != 3 or logits.shape[:2] != self.labels.shape:
            shape = None if logits is None else tuple(logits.shape)
            raise ValueError(
                f"{type(model).__name__} returned logits of shape {shape}, expected (B, T, V) = "
                f"({batch}, {n}, V): explain_generation needs an encoder-decoder's next-token "
                "logits"
            )
        if self.labels.min() < 0 or self.labels.max() >= logits.shape[-1]:
            raise ValueError(
                f"generated holds ids outside the model's {logits.shape[-1]} output tokens"
            )
        scored = logits.log_softmax(dim=-1) if self.score == "log_prob" else logits  # (B, T, V)
        steps = torch.tensor(self.steps, device=logits.device)
        labels = self.labels.to(logits.device)[:, steps]  # (B, K)
        scores = scored[:, steps].gather(-1, labels[..., None])[..., 0]  # (B, K)
        # (B, K, T): target k reads row steps[k]
        rows = F.one_hot(steps, n).to(torch.float32).expand(batch, -1, -1)
        vectorised = (Gradients(scores, vectorised=True),)
        return Selection(scores, labels, True, _reading(layout, rows), gradients=vectorised)


class PairSimilarity(Target):
    """Every (image, text) pair of a dual encoder's batch, each tower explained on its own.

    ``pairs="all"``: image ``i`` for text ``j`` is ``sum_i s[i, j]`` through the image tower (one
    vectorised pass over the texts), text ``j`` for image ``i`` is ``sum_j s[i, j]`` through the
    text tower. ``pairs="diagonal"``: one pass of ``sum_i s[i, i]`` serves both towers.
    """

    def __init__(self, pairs: str = "all"):
        if pairs not in ("all", "diagonal"):
            raise ValueError(f"pairs must be 'all' or 'diagonal', got {pairs!r}")
        self.pairs = pairs

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        if logits is None or logits.ndim != 2:
            raise ValueError(
                f"{type(model).__name__} returned no (B_images, B_texts) similarity logits"
            )
        n_images, n_texts = logits.shape
        if self.pairs == "diagonal":
            if n_images != n_texts:
                raise ValueError(
                    f"pairs='diagonal' needs as many images as texts, got {n_images} and {n_texts}"
                )
            return Selection(logits.diagonal()[:, None], None, False, layout)  # (B, 1)
        towers = (
            Gradients(logits, "image", vectorised=True),  # image i for text j: column j
            Gradients(logits.T, "text"),  # (B_t, B_i) text j for image i: column i
        )
        return Selection(logits, None, True, layout, gradients=towers)  # (B_i, B_t)


class SplitPairSimilarity(Target):
    """Pairs embedded in one batch, first members then second members: target ``i`` is the cosine
    similarity of ``embed(output, inputs)`` ``(2B, D)`` rows ``i`` and ``B + i``. One backward pass
    of the summed similarities serves every pair exactly (sentence ``i`` influences only
    ``sim_i``)."""

    def __init__(self, embed: Callable[[Any, Any], Tensor]):
        self.embed = embed

    def select(
        self, model: Module, inputs: Any, output: Any, logits: Tensor | None, layout: TokenLayout
    ) -> Selection:
        pooled = self.embed(output, inputs)  # (2B, D)
        if pooled.shape[0] % 2:
            raise ValueError(
                f"expected first and second members stacked (2B rows), got {pooled.shape[0]} rows"
            )
        half = pooled.shape[0] // 2
        similarity = F.cosine_similarity(pooled[:half], pooled[half:], dim=-1)  # (B,)
        # the 2B sentences' column: pair i's similarity on row i, 0 on row B + i; its sum is the sum
        # of the similarities, whose one backward pass serves both members of every pair
        both = torch.cat([similarity, torch.zeros_like(similarity)])[:, None]  # (2B, 1)
        return Selection(similarity[:, None], None, False, layout, gradients=(Gradients(both),))


def class_target(model: Module, target: TargetLike) -> Target:
    """How classifiers read ``target=``: a callable ``logits -> (B,)`` or ``(B, K)`` is a
    :class:`ScoreTarget`, anything else a :class:`ClassTarget`."""
    return ScoreTarget(target) if callable(target) else ClassTarget(target)


def generation_target(model: Module, target: TargetLike) -> Target:
    """Encoder-decoders are explained per generated token; ``explain`` takes only a callable
    target, which receives the ``(B, T, V)`` decoder logits (:class:`ScoreTarget`)."""
    if callable(target):
        return ScoreTarget(target)
    raise ValueError(
        f"{type(model).__name__} is an encoder-decoder: explain its generated tokens with "
        "gae_utils.explain_generation(model, source_inputs, generated), or pass "
        "target=callable(logits (B, T, V)) -> (B,)."
    )
