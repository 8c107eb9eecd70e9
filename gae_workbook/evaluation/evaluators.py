"""Evaluate every explanation method against ShapesWorld ground truth.

    python -m gae_workbook.evaluate --model shapes-vit --n 300 --seed 7 --json results.json

Class-specific: every class present in a scene is explained (up to three per scene, as K targets
of one forward pass), and its map is scored against that object's mask:

- ``pointing``: pointing game at the map's own resolution (the ViT's patch grid): the most
  relevant patch holds pixels of the object;
- ``pointing_pixel``: the same after bilinear upsampling to pixels: the argmax pixel lies on the
  object's mask. An 8x8-pixel patch is coarser than the thin parts of a shape (a cross's arms, a
  triangle's apex), so every method scores lower here; both are reported;
- ``mass``: share of positive relevance on the object;
- ``pixel_accuracy``, ``miou``, ``map``: weakly supervised segmentation, foreground = map above
  its mean (docs/evaluation.md);
- ``pos_auc``, ``neg_auc``: perturbation tests as the authors compute them (docs/evaluation.md): the
  fraction x of pixels with the highest (positive) / lowest (negative) relevance is set to 0 for
  x in 0, 0.1, ..., 0.9; "accuracy" is whether the explained class is still detected (its logit
  stays > 0, the multi-label analogue of top-1 correctness); AUC = trapezoid x 100.
  Positive: lower is better; negative: higher is better.

A ``random`` row (uniform random patch maps, seeded) is printed as a floor. The JSON file holds
``{method: {metric: value}}``.

Every evaluator here runs the one protocol of :mod:`.protocol` (batches -> record -> relevance per
row -> score); what differs is its batches, its rows' reading of a recording and its scores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from gae_utils import explain_dual, method_names, record, record_generation
from shapesworld.inputs import (
    detr_pixels,
    encode_captions,
    encode_questions,
    encode_sources,
    encode_targets,
    normalize_pixels,
    translate_vocabulary,
    vqa_inputs,
)
from shapesworld.language import ANSWERS, SPECIAL_TOKENS, Vocabulary, caption, sample_question, translate
from shapesworld.scenes import ShapesWorld

from ..models.detection import box_matched_queries, detections, match_to_objects
from ..models.translator import greedy_decode
from ..models.zoo import load
from .flow import flow_grid
from .metrics import (
    PERTURBATION_STEPS,
    masks_to_grid,
    perturbation_auc,
    perturbation_curve,
    pointing_game,
    relevance_mass,
    segmentation_scores,
    upsample_maps,
)
from .peers import PEERS, Peer
from .protocol import Row, chunks, cost_clock, cost_note, explain_batches, method_rows, score_rows, warm_up

__all__ = [
    "evaluate_vit",
    "evaluate_clip",
    "evaluate_vqa",
    "vqa_word_study",
    "key_word_rank",
    "evaluate_translate",
    "evaluate_detr",
    "evaluate_lm",
    "cached_results",
    "alignment_hits",
    "format_table",
    "HIGHER_IS_BETTER",
    "VQA_STEPS",
    "EVALUATORS",
    "main",
]

HIGHER_IS_BETTER = {
    "pointing_pixel": True,
    "content_mass": True,
    "content_share": True,
    "pointing": True,
    "mass": True,
    "pixel_accuracy": True,
    "miou": True,
    "map": True,
    "pos_auc": False,
    "neg_auc": True,
    "text_top1": True,
    "key_rank": False,
    "image_pos_auc": False,
    "image_neg_auc": True,
    "text_pos_auc": False,
    "text_neg_auc": True,
    "alignment_accuracy": True,
    "exact_match": True,
    "ms_per_pair": False,
}


def _localisation(grid_maps: Tensor, pixel_maps: Tensor, masks: Tensor) -> dict[str, float]:
    """Pointing at the map's own grid and at pixels, and relevance mass, against ``masks`` ``(P, H, W)``.

    Args:
        grid_maps: ``(P, h, w)`` maps at the token grid.
        pixel_maps: ``(P, H, W)`` the same maps upsampled to the masks.
        masks: ``(P, H, W)`` bool ground truth.
    """
    return {
        "pointing": pointing_game(grid_maps, masks_to_grid(masks, tuple(grid_maps.shape[-2:]))).float().mean().item(),
        "pointing_pixel": pointing_game(pixel_maps, masks).float().mean().item(),
        "mass": relevance_mass(pixel_maps, masks).mean().item(),
    }


def _class_targets(labels: Tensor, k: int = 3) -> tuple[Tensor, Tensor]:
    """Present classes per scene, padded to ``k`` by repeating the first: ``(B, k)`` and a valid mask."""
    targets = torch.zeros(labels.shape[0], k, dtype=torch.long)
    valid = torch.zeros(labels.shape[0], k, dtype=torch.bool)
    for b, row in enumerate(labels):
        present = row.nonzero().flatten()[:k]
        targets[b, : len(present)] = present
        targets[b, len(present) :] = present[0]
        valid[b, : len(present)] = True
    return targets, valid


class _Setup(NamedTuple):
    """What every evaluation starts from (:func:`_setup`)."""

    methods: list[str]
    world: ShapesWorld
    rng: np.random.Generator
    gen: torch.Generator
    device: torch.device


def _setup(model: nn.Module, methods: list[str] | None, seed: int, ablations: bool = False) -> _Setup:
    """The start every evaluation shares.

    Returns:
        The methods to score (default: every method of :func:`method_names`, with the ablations if
        ``ablations``), the world of fresh scenes ``ShapesWorld(seed=seed)``, a numpy generator (captions,
        questions, stories) and a torch generator (the ``random`` row), both seeded with ``seed``, and
        the model's device.
    """
    return _Setup(
        methods or method_names(ablations=ablations),
        ShapesWorld(seed=seed),
        np.random.default_rng(seed),
        torch.Generator().manual_seed(seed),
        next(model.parameters()).device,
    )


class _Pairs(NamedTuple):
    """A batch of scenes and the (scene, class) pairs explained in it."""

    images: Tensor  # (B, 3, H, W)
    targets: Tensor  # (B, K) classes, padded by repeating the first
    valid: Tensor  # (B, K) the real pairs
    pair_images: Tensor  # (P, 3, H, W)
    pair_masks: Tensor  # (P, H, W) the explained object's mask


def _scene_pairs(world: ShapesWorld, start: int, size: int) -> _Pairs:
    """Scenes ``start..start+size`` of ``world`` with every present class as a target (three at most)."""
    batch = world.batch(size, start=start)
    targets, valid = _class_targets(batch.labels)  # (B, K)
    pair_images = batch.images[:, None].expand(-1, targets.shape[1], -1, -1, -1)[valid]  # (P, 3, H, W)
    hw = tuple(batch.images.shape[-2:])
    pair_masks = batch.masks.gather(1, targets[:, :, None, None].expand(-1, -1, *hw))[valid]  # (P, H, W)
    return _Pairs(batch.images, targets, valid, pair_images, pair_masks)


def _vit_rows(
    model: nn.Module, methods: list[str], start_layer: int, peers: Mapping[str, Peer], flow: bool, gen: torch.Generator
) -> tuple[dict[str, Row], dict[str, Row]]:
    """The rows of :func:`evaluate_vit`, each reading ``(grid maps (P, h, w), pixel maps (P, H, W))`` of a batch.

    Returns:
        ``(rows in table order, the rows tried on a first batch: attention flow and the peers)``.
    """
    device = next(model.parameters()).device

    def method(rec, b: _Pairs, name: str) -> tuple[Tensor, Tensor]:
        relevance = rec.explanation(name, start_layer).grid_relevance().float().cpu()  # (B, K, h, w)
        return relevance[b.valid], upsample_maps(relevance, tuple(b.images.shape[-2:]))[b.valid]

    def attention_flow(rec, b: _Pairs) -> tuple[Tensor, Tensor]:
        image = rec.layout.segment("image")
        flows = flow_grid(rec.layers, image.grid, prefix=image.prefix)  # (B, h, w)
        flows = flows[:, None].expand(-1, b.targets.shape[1], -1, -1)[b.valid]  # (P, h, w): class-agnostic
        return flows, upsample_maps(flows, tuple(b.images.shape[-2:]))

    def peer_row(peer: Peer) -> Row:
        def relevance(rec, b: _Pairs) -> tuple[Tensor, Tensor]:
            size, grid = tuple(b.images.shape[-2:]), rec.layout.segment("image").grid
            maps = peer(model, b.pair_images.to(device), b.targets[b.valid].to(device)).float().cpu()
            pixel = maps if tuple(maps.shape[-2:]) == size else upsample_maps(maps, size)  # (P, H, W)
            return torch.nn.functional.adaptive_avg_pool2d(pixel[:, None], grid)[:, 0], pixel  # (P, h, w)

        return Row(relevance)

    def random(rec, b: _Pairs) -> tuple[Tensor, Tensor]:
        grid = torch.rand(int(b.valid.sum()), *rec.layout.segment("image").grid, generator=gen)  # (P, h, w)
        return grid, upsample_maps(grid, tuple(b.images.shape[-2:]))

    tried = {"attention_flow": Row(attention_flow, cost="recording")} if flow else {}
    tried |= {name: peer_row(peer) for name, peer in peers.items()}
    return {**method_rows(methods, method), **tried, "random": Row(random)}, tried


def evaluate_vit(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 50,
    methods: list[str] | None = None,
    start_layer: int = 0,
    progress: bool = True,
    peers: Mapping[str, Peer] | None = None,
    flow: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Score every method on ``n`` fresh scenes of ``ShapesWorld(seed=seed)``.

    ``ms_per_pair`` is each method's cost per explained (scene, class) pair (:func:`.protocol.cost_clock`:
    process CPU time on the CPU): for the library's methods and attention flow, the shared
    :func:`record` (one forward, one backward for the K <= 3 targets of a scene) plus the method's own
    computation; for a peer, its calls on the pairs.

    Args:
        model: a ShapesWorld multi-label classifier served by an adapter.
        n: number of scenes.
        seed: world seed (use one the model was not trained on).
        batch_size: scenes per forward pass.
        methods: methods to score (default: all).
        start_layer: passed to ``gae`` and ``rollout``.
        progress: tqdm bars.
        peers: extra rows ``{name: (model, images (P, 3, H, W), target (P,)) -> (P, h, w)}``
            (:data:`gae_workbook.evaluation.peers.PEERS`); pixel-resolution maps are average-pooled to the
            patch grid for ``pointing``. A peer that raises
            :class:`~gae_workbook.evaluation.peers.PeerUnavailableError` on the first scene is left out
            with a warning saying why.
        flow: add ``attention_flow`` (Abnar & Zuidema 2020, :mod:`gae_workbook.evaluation.flow`) from
            the same recording.

    Returns:
        ``({method: {metric: value}}, {method: (2, S) positive/negative perturbation curves})``.
    """
    methods, world, _, gen, device = _setup(model, methods, seed)
    rows, tried = _vit_rows(model, methods, start_layer, dict(peers or {}), flow, gen)

    def record_pairs(b: _Pairs):
        return record(model, b.images.to(device), b.targets.to(device))

    kept = warm_up(_scene_pairs(world, 0, 1), record_pairs, tried)  # untimed first calls
    rows = {name: row for name, row in rows.items() if name not in tried or name in kept}
    batches = (_scene_pairs(world, start, size) for start, size in chunks(n, batch_size, progress))
    done = explain_batches(batches, record_pairs, rows, cost_clock(device))
    images = torch.cat([b.pair_images for b in done.batches])  # (P, 3, H, W)
    masks = torch.cat([b.pair_masks for b in done.batches])  # (P, H, W)
    targets = torch.cat([b.targets[b.valid] for b in done.batches])  # (P,)

    @torch.no_grad()
    def still_detected(x: Tensor, t: Tensor) -> Tensor:
        logits = model(x.to(device)).cpu()
        return logits.gather(1, t[:, None])[:, 0] > 0  # (n,)

    def score(name: str) -> tuple[dict[str, float], Tensor]:
        g = torch.cat([grid for grid, _ in done.relevance[name]])  # (P, h, w)
        m = torch.cat([pixel for _, pixel in done.relevance[name]])  # (P, H, W)
        seg = segmentation_scores(m, masks)
        pos = perturbation_curve(still_detected, images, m, targets, positive=True, batch_size=256)
        neg = perturbation_curve(still_detected, images, m, targets, positive=False, batch_size=256)
        return {
            **_localisation(g, m, masks),
            "pixel_accuracy": seg["pixel_accuracy"],
            "miou": seg["miou"],
            "map": seg["map"],
            "pos_auc": perturbation_auc(pos),
            "neg_auc": perturbation_auc(neg),
            "ms_per_pair": 1000 * done.seconds[name] / m.shape[0],
            "pairs": float(m.shape[0]),
        }, torch.stack([pos, neg])

    return score_rows(rows, score, progress)


class _Captions(NamedTuple):
    """A batch of scenes with one true caption each."""

    images: Tensor  # (B, 3, H, W)
    texts: dict  # input_ids, attention_mask (B, L)
    masks: Tensor  # (B, H, W) the joint mask of the objects each caption names
    words: Tensor  # (B, L) the caption's words (special tokens and padding excluded)
    content: Tensor  # (B, L) its content words ("a" and "of" excluded)


def _caption_batch(world: ShapesWorld, rng: np.random.Generator, vocab: Vocabulary, start: int, size: int) -> _Captions:
    """Scenes ``start..start+size`` of ``world``, each with one caption drawn with ``rng``."""
    batch = world.batch(size, start=start)
    caps = [caption(scene, rng) for scene in batch.scenes]
    ids, mask = encode_captions(caps, vocab)
    masks = torch.stack(
        [batch.masks[b, [batch.scenes[b].objects[o].label for o in c.objects]].any(0) for b, c in enumerate(caps)]
    )
    content = torch.zeros(ids.shape, dtype=torch.bool)  # (B, L): content words, specials and "a"/"of" excluded
    for b, c in enumerate(caps):
        for w, word in enumerate(c.words):
            content[b, 1 + w] = word not in ("a", "of")
    words = (ids != vocab.pad_id) & (ids != vocab.bos_id) & (ids != vocab.eos_id)  # (B, L)
    return _Captions(batch.images, {"input_ids": ids, "attention_mask": mask}, masks, words, content)


def evaluate_clip(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 50,
    methods: list[str] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Score every method on ``n`` fresh (scene, true caption) pairs of a ShapesWorld dual encoder.

    Image side: the caption names one or two objects; their joint mask is the ground truth
    (``pointing`` at the patch grid, ``pointing_pixel``, ``mass``). Text side: ``content_mass`` is
    the share of the caption's positive relevance (special tokens excluded) on the words that say
    what and where (colours, shapes, relations) rather than on "a" and "of"; a uniform map gets the
    share of content words (``content_share``, about 0.6).

    Every method is its own :func:`gae_utils.explain_dual` call (one recording per method).
    """
    methods, world, rng, gen, device = _setup(model, methods, seed)
    vocab = Vocabulary.captions()

    def inputs(b: _Captions) -> tuple[Tensor, dict]:
        return normalize_pixels(b.images).to(device), {k: v.to(device) for k, v in b.texts.items()}

    def content_mass(text: Tensor, b: _Captions) -> Tensor:
        """``(B,)`` share of the caption's positive relevance ``text`` ``(B, L)`` on its content words."""
        rel = text.clamp(min=0) * b.words  # (B, L)
        return (rel * b.content).sum(1) / rel.sum(1).clamp_min(1e-12)

    def method(_, b: _Captions, name: str) -> tuple[Tensor, Tensor]:
        dual = explain_dual(model, *inputs(b), method=name, pairs="diagonal")
        return dual.image.grid_relevance().float().cpu(), content_mass(dual.text.relevance["text"].float().cpu(), b)

    first = _caption_batch(ShapesWorld(seed=seed), np.random.default_rng(seed), vocab, 0, 1)
    grid = tuple(
        explain_dual(model, *inputs(first), method=methods[0], pairs="diagonal").image.grid_relevance().shape[-2:]
    )

    def random(_, b: _Captions) -> tuple[Tensor, Tensor]:
        image = torch.rand(b.images.shape[0], *grid, generator=gen)  # (B, h, w)
        rand = torch.rand(b.words.shape, generator=gen) * b.words  # (B, L)
        return image, (rand * b.content).sum(1) / rand.sum(1)

    rows = {**method_rows(methods, method), "random": Row(random)}
    batches = (_caption_batch(world, rng, vocab, start, size) for start, size in chunks(n, batch_size, progress))
    done = explain_batches(batches, lambda b: None, rows)
    masks = torch.cat([b.masks for b in done.batches])  # (P, H, W)
    content_share = torch.cat([b.content.sum(1).float() / b.words.sum(1) for b in done.batches]).mean().item()

    def score(name: str) -> tuple[dict[str, float], None]:
        g = torch.cat([image for image, _ in done.relevance[name]])  # (P, h, w)
        up = upsample_maps(g, tuple(masks.shape[-2:]))
        return {
            **_localisation(g, up, masks),
            "content_mass": torch.cat([mass for _, mass in done.relevance[name]]).mean().item(),
            "content_share": content_share,
            "pairs": float(g.shape[0]),
        }, None

    return score_rows(rows, score, progress=False)[0]


VQA_STEPS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
"""Fractions of image regions (or question words) removed in the bi-modal perturbation test (docs/evaluation.md)."""


def _keep_most(scores: Tensor, removed: int, valid: Tensor | None = None) -> Tensor:
    """Boolean ``(B, N)`` keep-mask dropping the ``removed`` highest ``scores`` of each row among ``valid``."""
    scores = scores.masked_fill(~valid, float("-inf")) if valid is not None else scores
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, N)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :removed], False)
    return keep


def _drop_regions(inputs: dict, relevance: Tensor, fraction: float, positive: bool) -> dict:
    """Remove a fraction of the image regions, most (positive) or least (negative) relevant first.

    A model cannot attend over zero regions: with every region removed it sees one blank region
    (zero features, zero box).
    """
    b, r = relevance.shape
    removed = math.floor(round(fraction * r, 6))
    if removed == r:
        blank = inputs["visual_feats"].new_zeros(b, 1, inputs["visual_feats"].shape[-1])
        return {**inputs, "visual_feats": blank, "visual_pos": inputs["visual_pos"].new_zeros(b, 1, 4)}
    keep = _keep_most(relevance if positive else -relevance, removed)  # (B, R), the same count per row
    index = keep.nonzero()[:, 1].reshape(b, r - removed)  # kept regions in their order
    feats, pos = inputs["visual_feats"], inputs["visual_pos"]
    return {
        **inputs,
        "visual_feats": feats.gather(1, index[..., None].expand(-1, -1, feats.shape[-1])),
        "visual_pos": pos.gather(1, index[..., None].expand(-1, -1, pos.shape[-1])),
    }


def _drop_words(inputs: dict, relevance: Tensor, words: Tensor, fraction: float, positive: bool) -> dict:
    """Remove a fraction of each question's words; [CLS], [SEP] stay, kept tokens keep their order.

    ``words`` is the ``(B, L)`` mask of removable tokens. Questions are re-padded to the same length.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows_ids, rows_mask = [], []
    for b in range(ids.shape[0]):
        removed = math.floor(round(fraction * int(words[b].sum()), 6))
        keep = _keep_most((relevance[b] if positive else -relevance[b])[None], removed, words[b][None])[0]
        keep &= mask[b].bool()
        kept = ids[b][keep]
        rows_ids.append(torch.cat([kept, ids.new_zeros(ids.shape[1] - len(kept))]))
        rows_mask.append(torch.cat([mask.new_ones(len(kept)), mask.new_zeros(ids.shape[1] - len(kept))]))
    return {**inputs, "input_ids": torch.stack(rows_ids), "attention_mask": torch.stack(rows_mask)}


def _explains_log_prob(score: str) -> bool:
    """Whether the explained scalar is the log-probability (``"log_prob"``) rather than the logit (``"logit"``)."""
    if score not in ("logit", "log_prob"):
        raise ValueError(f"score must be 'logit' or 'log_prob', got {score!r}")
    return score == "log_prob"


def _answer_score(score: str):
    """The explained scalar of a question-answering model: None (the predicted answer's logit) or
    a callable giving the predicted answer's log-probability."""
    if not _explains_log_prob(score):
        return None

    def log_prob(logits: Tensor) -> Tensor:  # (B, A) answer logits
        return logits.log_softmax(-1).gather(1, logits.argmax(-1, keepdim=True))[:, 0]  # (B,)

    return log_prob


def key_word_rank(text: Tensor, words: Tensor, keys: Tensor) -> Tensor:
    """Rank of the best-ranked key word among a question's words (1 = first), ``(N,)``.

    Args:
        text: ``(N, L)`` word relevance (``[CLS]`` first).
        words: ``(N, L)`` the question's words (special tokens and padding False).
        keys: ``(N, L)`` its key words.

    A non-key word with the same relevance as the best key word counts as ranked before it, so a
    constant map ranks the key word last.
    """
    masked = text.masked_fill(~words, float("-inf"))
    best_key = masked.masked_fill(~keys, float("-inf")).amax(1)  # (N,) relevance of the best key word
    return ((masked >= best_key[:, None]) & words & ~keys).sum(-1) + 1


def _question_batch(world: ShapesWorld, n: int, rng: np.random.Generator, vocab, start: int = 0):
    """``n`` scenes of ``world`` from ``start``, one question each drawn with ``rng``: ``(batch, questions,
    words, keys)``; ``words`` and ``keys`` are ``(n, L)`` masks of the question's words and its key words."""
    batch = world.batch(n, start=start)
    qs = [sample_question(scene, rng) for scene in batch.scenes]
    ids, _ = encode_questions(qs, vocab)
    words = ids >= len(SPECIAL_TOKENS)  # (n, L) the question's words; [CLS], [SEP], [PAD] excluded
    keys = torch.zeros(ids.shape, dtype=torch.bool)  # (n, L) ([CLS] first, so word w is token w + 1)
    for b, q in enumerate(qs):
        keys[b, [1 + w for w in q.key_words]] = True
    return batch, qs, words, keys


def vqa_word_study(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    scales: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Why GAE's word relevance on a ShapesWorld VQA model differs from the key words, in two tables.

    1. For the answer's logit and its log-probability, each times every factor in ``scales``
       (:meth:`~gae_utils.explainer.Recording.scaled`): GAE's key-word top-1 and rank, beside
       rollout's. GAE adds ``Abar @ R`` to ``R = I``; when the gradients are small the identity
       dominates and relevance reaching ``[CLS]`` through another word (a product of two layers'
       maps) is second order.
    2. For each question kind, the share of questions whose most relevant word is each word:
       which word each method puts first when it misses the key word.

    Returns:
        ``({"gae logit x1": {"text_top1", "key_rank", "score", "factor", "cam_row_sum"}, ...,
        "rollout": {"text_top1", "key_rank"}},
        {method label: {kind: {word: share}}})``; ``cam_row_sum`` is the mean row sum of the
        ``[CLS]`` row of Eq. 5's map over the language layers (the size of ``Abar`` next to ``I``).
    """
    from collections import Counter

    from tqdm.auto import tqdm

    vocab = Vocabulary.questions()
    batch, qs, words, keys = _question_batch(ShapesWorld(seed=seed), n, np.random.default_rng(seed), vocab)
    x = vqa_inputs(batch.images, qs, vocab)
    x = {k: v.to(next(model.parameters()).device) for k, v in x.items()}
    ranks: dict[str, dict[str, float]] = {}
    tops: dict[str, dict[str, dict[str, float]]] = {}

    def score_text(label: str, text: Tensor, **facts) -> None:
        rank = key_word_rank(text, words, keys)
        ranks[label] = {"text_top1": (rank == 1).float().mean().item(), "key_rank": rank.float().mean().item(), **facts}
        first = text.masked_fill(~words, float("-inf")).argmax(1) - 1  # (N,) index of the top word
        counts: dict[str, Counter] = {}
        for q, w in zip(qs, first.tolist()):
            counts.setdefault(q.kind, Counter())[q.words[w]] += 1
        tops[label] = {
            kind: {w: c / sum(counter.values()) for w, c in counter.most_common()} for kind, counter in counts.items()
        }

    for score in tqdm(("logit", "log_prob"), desc="targets", disable=not progress):
        rec = record(model, x, target=_answer_score(score))
        language = [layer for layer in rec.layers if layer.query == "text" and layer.key == "text"]
        row_sum = torch.stack([layer.attn_bar[:, 0, 0].sum(-1) for layer in language]).mean().item()  # [CLS] rows
        for factor in scales:
            text = rec.scaled(factor).explanation("gae").relevance["text"].float().cpu()
            score_text(f"gae {score} x{factor:g}", text, score=score, factor=factor, cam_row_sum=row_sum * factor)
        if score == "logit":
            score_text("rollout", rec.explanation("rollout").relevance["text"].float().cpu())
    return ranks, tops


class _Questions(NamedTuple):
    """A batch of scenes with one question each."""

    inputs: dict  # the model's inputs (on its device)
    answers: Tensor  # (B,) true answer indices
    masks: Tensor  # (B, H, W) the union mask of the question's referents (empty without)
    has_ref: Tensor  # (B,) the question refers to objects
    words: Tensor  # (B, L) the question's words
    keys: Tensor  # (B, L) its key words


def evaluate_vqa(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 100,
    methods: list[str] | None = None,
    progress: bool = True,
    score: str = "logit",
    target_scale: float = 1.0,
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Score every method on ``n`` fresh (scene, question) pairs of a ShapesWorld VQA model.

    The predicted answer of each question is explained: its logit (``score="logit"``, as the
    paper) or its log-probability (``score="log_prob"``: the logit minus the log-sum-exp over all
    answers, i.e. what favours this answer over the others). ``target_scale`` explains that scalar
    times a constant (:meth:`~gae_utils.explainer.Recording.scaled`; 1 is the paper's GAE).

    - Image, against the union mask of the objects the question refers to (questions with
      referents): ``pointing`` (the most relevant region holds object pixels), ``pointing_pixel``,
      ``mass``.
    - Text, against the question's key words (the words that determine the answer, e.g. the shape
      in "what colour is the triangle"): ``key_rank``, the rank of the best-ranked key word among
      the question's words (1 = first; a non-key word with equal relevance counts as ranked
      before it), and ``text_top1``, the share of questions where that rank is 1.
    - Perturbation (docs/evaluation.md): image regions, or question words ([CLS] and [SEP] never
      removed), are removed most relevant first (``*_pos_auc``, lower is better) or least relevant
      first (``*_neg_auc``, higher is better) at :data:`VQA_STEPS`; answer accuracy against the
      ground truth at each step; AUC = trapezoid over the fractions x 100.

    Returns:
        ``({method: {metric: value}}, {method: (4, S) curves: image pos, image neg, text pos, text neg})``.
    """
    methods, world, rng, gen, device = _setup(model, methods, seed, ablations=True)
    vocab = Vocabulary.questions()

    def questions(start: int, size: int) -> _Questions:
        batch, qs, words, keys = _question_batch(world, size, rng, vocab, start)
        empty = torch.zeros(batch.images.shape[-2:], dtype=torch.bool)
        referents = [[batch.scenes[b].objects[o].label for o in q.referents] for b, q in enumerate(qs)]
        return _Questions(
            {k: v.to(device) for k, v in vqa_inputs(batch.images, qs, vocab).items()},
            torch.tensor([ANSWERS.index(q.answer) for q in qs]),
            torch.stack([batch.masks[b, labels].any(0) if labels else empty for b, labels in enumerate(referents)]),
            torch.tensor([bool(labels) for labels in referents]),
            words,
            keys,
        )

    def method(rec, _, name: str) -> tuple[Tensor, Tensor]:
        exp = rec.explanation(name)
        return exp.relevance["image"].float().cpu(), exp.relevance["text"].float().cpu()  # (B, R), (B, L)

    def random(rec, b: _Questions) -> tuple[Tensor, Tensor]:
        image = rec.layout.segment("image")
        regions = torch.rand(b.words.shape[0], image.n_tokens - image.prefix, generator=gen)  # (B, R)
        return regions, torch.rand(b.words.shape, generator=gen) * b.words  # [CLS], [SEP], [PAD] never removed

    rows = {**method_rows(methods, method), "random": Row(random)}
    batches = (questions(start, size) for start, size in chunks(n, batch_size, progress))
    done = explain_batches(
        batches, lambda b: record(model, b.inputs, target=_answer_score(score)).scaled(target_scale), rows
    )
    x = {k: torch.cat([b.inputs[k].cpu() for b in done.batches]) for k in done.batches[0].inputs}
    answers, words, keys, has_ref = (
        torch.cat([getattr(b, f) for b in done.batches]) for f in ("answers", "words", "keys", "has_ref")
    )
    masks = torch.cat([b.masks for b in done.batches])[has_ref]  # (P, H, W)

    @torch.no_grad()
    def accuracy(inputs: dict) -> float:
        right = 0
        for i in range(0, answers.shape[0], 500):
            chunk = {k: v[i : i + 500].to(device) for k, v in inputs.items()}
            right += (model(**chunk).question_answering_score.argmax(-1).cpu() == answers[i : i + 500]).sum().item()
        return right / answers.shape[0]

    def score_row(name: str) -> tuple[dict[str, float], Tensor]:
        image = torch.cat([i for i, _ in done.relevance[name]])  # (N, R)
        text = torch.cat([t for _, t in done.relevance[name]])  # (N, L)
        side = math.isqrt(image.shape[-1])
        grid = image[has_ref].reshape(-1, side, side)  # (P, h, w)
        rank = key_word_rank(text, words, keys)  # (N,)
        curve = torch.tensor(
            [[accuracy(_drop_regions(x, image, f, positive)) for f in VQA_STEPS] for positive in (True, False)]
            + [[accuracy(_drop_words(x, text, words, f, positive)) for f in VQA_STEPS] for positive in (True, False)]
        )  # (4, S)
        return {
            **_localisation(grid, upsample_maps(grid, tuple(masks.shape[-2:])), masks),
            "text_top1": (rank == 1).float().mean().item(),
            "key_rank": rank.float().mean().item(),
            "image_pos_auc": perturbation_auc(curve[0], VQA_STEPS),
            "image_neg_auc": perturbation_auc(curve[1], VQA_STEPS),
            "text_pos_auc": perturbation_auc(curve[2], VQA_STEPS),
            "text_neg_auc": perturbation_auc(curve[3], VQA_STEPS),
            "pairs": float(answers.shape[0]),
        }, curve

    return score_rows(rows, score_row, progress)


# ----------------------------------------------------------------------------- seq2seq (shapes-translate)


class _Translations(NamedTuple):
    """The captions of a batch whose greedy translation equals the reference."""

    inputs: dict  # source inputs (b, S), on the model's device
    truth: Tensor  # (b, T + 1) reference target ids
    translations: list  # the b references


def evaluate_translate(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 50,
    methods: list[str] | None = None,
    progress: bool = True,
    score: str = "logit",
    target_scale: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Alignment accuracy of every method on ``n`` fresh captions of ``ShapesWorld(seed=seed)``.

    Each caption is translated greedily; generations equal to the reference translation
    (:func:`shapesworld.language.translate`) are explained token by token in one call
    (:func:`gae_utils.generation.record_generation`), and for each generated word the argmax of its
    source relevance over the caption's words (EOS and padding excluded) is a hit when it is one of
    the word's aligned source words (docs/evaluation.md, "For seq2seq"). ``raw_attention`` is the last
    decoder layer's cross-attention averaged over heads; ``random`` draws uniform maps. ``score``
    is the explained scalar per token: its ``"logit"`` (docs/rules.md) or its ``"log_prob"``;
    ``target_scale`` multiplies it (:meth:`~gae_utils.explainer.Recording.scaled`).

    Returns:
        ``{method: {"alignment_accuracy", "pairs", "exact_match"}}``.
    """
    methods, world, rng, gen, device = _setup(model, methods, seed)
    vocab = translate_vocabulary()
    exact_total = 0

    def exact_translations() -> Iterator[_Translations]:
        """Every batch's exactly translated captions (batches with none are not explained)."""
        nonlocal exact_total
        for start, size in chunks(n, batch_size, progress):
            caps = [caption(scene, rng) for scene in world.scenes(size, start=start)]
            trs = [translate(c) for c in caps]
            inputs = {k: v.to(device) for k, v in encode_sources(caps, vocab).items()}
            truth = encode_targets(trs, vocab).to(device)  # (B, T + 1)
            out = greedy_decode(model, inputs, vocab.bos_id, vocab.eos_id, vocab.pad_id, truth.shape[1] - 1)
            out = torch.nn.functional.pad(out, (0, truth.shape[1] - out.shape[1]), value=vocab.pad_id)
            exact = (out[:, : truth.shape[1]] == truth).all(dim=1)  # (B,) generation equals the reference
            exact_total += int(exact.sum())
            if exact.any():
                keep = exact.nonzero().flatten()
                yield _Translations(
                    {k: v[keep] for k, v in inputs.items()}, truth[keep], [trs[i] for i in keep.tolist()]
                )

    def method(rec, b: _Translations, name: str) -> Tensor:
        return alignment_hits(rec.explanation(name).relevance["source"].float().cpu(), b.translations)  # (b, T, S)

    def random(_, b: _Translations) -> Tensor:
        maps = torch.rand(len(b.translations), b.truth.shape[1] - 1, b.inputs["input_ids"].shape[1], generator=gen)
        return alignment_hits(maps, b.translations)  # maps: (b, T, S)

    def record_translations(b: _Translations):
        return record_generation(model, b.inputs, b.truth, score=score).scaled(target_scale)

    rows = {**method_rows(methods, method), "random": Row(random)}
    done = explain_batches(exact_translations(), record_translations, rows)

    def score_row(name: str) -> tuple[dict[str, float], None]:
        hits = torch.cat(done.relevance[name])
        return {
            "alignment_accuracy": hits.float().mean().item(),
            "exact_match": exact_total / n,
            "pairs": float(hits.numel()),
        }, None

    return score_rows(rows if done.batches else [], score_row, progress=False)[0]


# ----------------------------------------------------------------------------- DETR


class _Detections(NamedTuple):
    """A batch of scenes and the (scene, query) pairs scored in it."""

    pixels: Tensor  # (B, 3, H, W) the model's input
    targets: list  # per scene, the scored queries
    slots: Tensor  # (P, 2): (scene, target slot) of each pair
    masks: Tensor  # (P, H, W) the mask of each pair's object


def evaluate_detr(
    model: nn.Module,
    n: int = 200,
    seed: int = 7,
    batch_size: int = 25,
    methods: list[str] | None = None,
    iou_threshold: float = 0.5,
    progress: bool = True,
    queries: str = "confident",
) -> dict[str, dict[str, float]]:
    """Weakly supervised segmentation of every detected object of a ShapesWorld DETR (ICCV 2021, Sec. 5).

    Every confident detection (probability > 0.5, no-object excluded) of ``n`` fresh scenes is
    explained in one :func:`record` per batch (its query's class logit); its map (row k of
    ``R[query, image]`` on the feature grid, bilinearly upsampled, min-max normalised) is
    thresholded with Otsu's method and compared with the mask of the ground-truth object it
    detected (same class, box IoU >= ``iou_threshold``; unmatched detections are false positives and
    are not scored). Reports ``pixel_accuracy``, ``miou`` (background/foreground, accumulated over
    the set), ``map`` (AP of the soft map), and the pointing game and relevance mass.

    ``queries="matched"`` scores, instead of the confident detections, the query whose box best
    overlaps each ground-truth object (IoU >= ``iou_threshold``) whatever its class confidence
    (:func:`gae_workbook.models.detection.box_matched_queries`): every object is scored once, also for a
    detector that localises well but is not yet confident about the class.

    Returns:
        ``{method: {metric: value}}``.
    """
    if queries not in ("confident", "matched"):
        raise ValueError(f"queries must be 'confident' or 'matched', got {queries!r}")

    methods, world, _, gen, device = _setup(model, methods, seed)
    detected = unmatched = 0

    def scored_queries() -> Iterator[_Detections]:
        """Every batch's scored (scene, query) pairs (batches with none are not explained)."""
        nonlocal detected, unmatched
        for start, size in chunks(n, batch_size, progress):
            batch = world.batch(size, start=start)
            pixels = detr_pixels(batch.images)
            with torch.no_grad():
                out = model(pixel_values=pixels.to(device))
            found = detections(out.logits.cpu(), out.pred_boxes.cpu(), tuple(batch.images.shape[-2:]))
            targets, masks, slots = [], [], []  # per image: scored queries; their objects' masks; (b, k) slots
            matched = box_matched_queries(out.pred_boxes.cpu(), batch.scenes, iou_threshold)
            for b, (det, scene) in enumerate(zip(found, batch.scenes)):
                detected += len(det)
                if queries == "confident":
                    pairs = [(int(det.queries[d]), o) for d, o in match_to_objects(det, scene, iou_threshold)]
                    unmatched += len(det) - len(pairs)
                else:
                    pairs = matched[b]
                    unmatched += len(scene.objects) - len(pairs)  # objects no query localised
                row = []
                for q, o in pairs:
                    slots.append((b, len(row)))
                    row.append(q)
                    masks.append(torch.from_numpy(scene.objects[o].mask.copy()))
                targets.append(row)
            if slots:
                yield _Detections(pixels, targets, torch.tensor(slots), torch.stack(masks))

    def method(rec, b: _Detections, name: str) -> Tensor:
        grid = rec.explanation(name).grid_relevance("image").float().cpu()  # (B, K, h, w)
        return grid[b.slots[:, 0], b.slots[:, 1]]  # (P, h, w)

    def random(rec, b: _Detections) -> Tensor:
        return torch.rand(len(b.slots), *rec.layout.segment("image").grid, generator=gen)  # (P, h, w)

    rows = {**method_rows(methods, method), "random": Row(random)}
    done = explain_batches(scored_queries(), lambda b: record(model, b.pixels.to(device), target=b.targets), rows)
    if not done.batches:
        raise ValueError(f"the model detected no ground-truth object in {n} scenes; is it trained?")
    masks = torch.cat([b.masks for b in done.batches])  # (P, H, W)

    def score_row(name: str) -> tuple[dict[str, float], None]:
        g = torch.cat(done.relevance[name])  # (P, h, w)
        up = upsample_maps(g, tuple(masks.shape[-2:]))  # (P, H, W)
        seg = segmentation_scores(up, masks, threshold="otsu")
        return {
            "pixel_accuracy": seg["pixel_accuracy"],
            "miou": seg["miou"],
            "map": seg["map"],
            **_localisation(g, up, masks),
            "pairs": float(g.shape[0]),
            "detections": float(detected),
            "unmatched": float(unmatched),
        }, None

    return score_rows(rows, score_row, progress=False)[0]


def _to_json(value):
    if isinstance(value, Tensor):
        return {"__tensor__": value.tolist()}
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return torch.tensor(value["__tensor__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def cached_results(path: str | Path, compute, recompute: bool = False, save: bool = True):
    """The results of a slow evaluation: read from the JSON file ``path``, or computed by ``compute()``.

    The notebooks load their committed evaluation results (``notebooks/results/*.json``) so that each
    runs in a lab's time; ``recompute=True`` (or a missing file) calls ``compute`` and, when ``save``,
    writes its result back. Tensors (perturbation curves) round-trip as ``{"__tensor__": nested list}``;
    tuples come back as lists.

    Args:
        path: the JSON file.
        compute: ``compute() -> result`` (nested dicts, lists, tuples, floats, tensors).
        recompute: ignore the file and compute.
        save: write what was computed to ``path`` (False for smoke-size runs, which must not replace
            the full-size results).

    Returns:
        The result, as ``compute`` returned it (tuples as lists).
    """
    path = Path(path)
    if path.exists() and not recompute:
        return _from_json(json.loads(path.read_text()))
    result = compute()
    if save:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_to_json(result), indent=1) + "\n")
    return result


# ----------------------------------------------------------------------------- decoder-only LM (shapes-lm)

HIGHER_IS_BETTER.update({"pointing_pair": True, "pos_prob_auc": False, "neg_prob_auc": True})


def _answer_target(answers: Tensor, score: str):
    """What is explained for each story: the answer token's logit (``(B,)`` token ids) or a callable
    giving its log-probability (``next_logits (B, V) -> (B,)``)."""
    if not _explains_log_prob(score):
        return answers
    return lambda next_logits: next_logits.log_softmax(-1).gather(1, answers[:, None].to(next_logits.device))[:, 0]


class _Stories(NamedTuple):
    """A batch of stories and the facts their scoring reads."""

    inputs: dict  # input_ids, attention_mask (B, L): prompts ending with "A:", right-padded
    answers: Tensor  # (B,) the answer's token id
    facts: dict  # word positions (:func:`shapesworld.stories.word_positions`) and the answer


def evaluate_lm(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 50,
    methods: list[str] | None = None,
    progress: bool = True,
    score: str = "logit",
    steps: Sequence[float] = PERTURBATION_STEPS,
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Score every method on ``n`` fresh stories of a story language model (``shapes-lm``).

    The stories (:func:`shapesworld.stories.draw_stories` on ``story_world(seed)``) end with ``"A:"``;
    the explained scalar is the logit (or, ``score="log_prob"``, the log-probability) of the true
    answer as the next token, every method from one :func:`record` per batch. Each method's text
    relevance (the last real token's row, ``(B, L)``) is scored over the *description* tokens only
    (``[BOS]`` and the question excluded):

    - ``pointing``: the most relevant description token is the word that determines the answer
      (the answer word itself, in the sentence of the object the question names);
    - ``pointing_pair``: it is that word or the sentence's other content word, the one the question
      names (``subject``);
    - ``key_rank``: rank of the determining word among the description tokens (1 = first; ties count
      against it, see :func:`key_word_rank`);
    - ``pos_auc``/``neg_auc``: token-level perturbation test. For each fraction ``x`` in ``steps``,
      ``floor(x * D)`` of the ``D`` description tokens are **deleted** (most relevant first: positive;
      least relevant first: negative); kept tokens keep their order, the prompt is re-padded and the
      position ids are those of the shorter prompt (no mask token: the model never saw one). Accuracy:
      the argmax next token is still the answer. AUC = trapezoid over ``steps`` x 100;
    - ``pos_prob_auc``/``neg_prob_auc``: the same curves for the answer's mean probability.

    Positive AUCs: lower is better; negative: higher is better. A ``random`` row (uniform random
    token relevance, seeded) is the floor.

    Returns:
        ``({method: {metric: value}}, {method: (4, S) curves: positive and negative accuracy, then
        positive and negative answer probability})``.
    """
    from shapesworld.stories import draw_stories, encode_stories, story_vocabulary, word_positions

    methods, _, rng, gen, device = _setup(model, methods, seed)
    vocab = story_vocabulary()
    every = draw_stories(seed, n, rng)

    def stories(start: int, size: int) -> _Stories:
        batch = every[start : start + size]
        inputs = encode_stories(batch, vocab)  # (B, L) prompts ending with "A:", right-padded
        answers = torch.tensor([vocab.tokens.index(s.answer) for s in batch])  # (B,)
        return _Stories(inputs, answers, {**word_positions(batch, inputs["input_ids"].shape[1]), "answer": answers})

    def method(rec, _, name: str) -> Tensor:
        return rec.explanation(name).relevance["text"].float().cpu()  # (B, L)

    def random(_, b: _Stories) -> Tensor:
        return torch.rand(b.inputs["input_ids"].shape, generator=gen)

    def record_stories(b: _Stories):
        return record(model, {k: v.to(device) for k, v in b.inputs.items()}, _answer_target(b.answers, score))

    rows = {**method_rows(methods, method), "random": Row(random)}
    done = explain_batches((stories(s, size) for s, size in chunks(n, batch_size, progress)), record_stories, rows)

    def padded(t: Tensor, length: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]))

    length = max(b.inputs["input_ids"].shape[1] for b in done.batches)
    x = {k: torch.cat([padded(b.inputs[k], length) for b in done.batches]) for k in ("input_ids", "attention_mask")}
    words = torch.cat([padded(b.facts["description"], length) for b in done.batches])  # (N, L) description tokens
    key, subject, answer = (torch.cat([b.facts[k] for b in done.batches]) for k in ("key", "subject", "answer"))  # (N,)
    rows_index = torch.arange(len(key))
    keys = torch.zeros_like(words)
    keys[rows_index, key] = True

    @torch.no_grad()
    def answer_scores(inputs: dict) -> tuple[float, float]:
        hits, probs = [], []
        for b in range(0, len(answer), 256):
            chunk = {k: v[b : b + 256].to(device) for k, v in inputs.items()}
            logits = model(**chunk).logits.float().cpu()  # (b, L, V), right-padded: positions are 0..L-1
            last = chunk["attention_mask"].sum(1).cpu() - 1  # (b,)
            nxt = logits[torch.arange(len(last)), last]  # (b, V)
            hits.append(nxt.argmax(-1) == answer[b : b + 256])
            probs.append(nxt.softmax(-1).gather(1, answer[b : b + 256, None])[:, 0])
        return torch.cat(hits).float().mean().item(), torch.cat(probs).mean().item()

    def score_row(name: str) -> tuple[dict[str, float], Tensor]:
        rel = torch.cat([padded(t, length) for t in done.relevance[name]])  # (N, L)
        top = rel.masked_fill(~words, float("-inf")).argmax(1)  # (N,)
        rank = key_word_rank(rel, words, keys)
        curve = torch.tensor(
            [[answer_scores(_drop_words(x, rel, words, f, positive)) for f in steps] for positive in (True, False)]
        )  # (2, S, 2): positive/negative, step, (accuracy, probability)
        curves = torch.cat([curve[..., 0], curve[..., 1]])  # (4, S)
        return {
            "pointing": (top == key).float().mean().item(),
            "pointing_pair": ((top == key) | (top == subject)).float().mean().item(),
            "key_rank": rank.float().mean().item(),
            "pos_auc": perturbation_auc(curves[0], steps),
            "neg_auc": perturbation_auc(curves[1], steps),
            "pos_prob_auc": perturbation_auc(curves[2], steps),
            "neg_prob_auc": perturbation_auc(curves[3], steps),
            "accuracy": curves[0, 0].item(),
            "pairs": float(len(key)),
        }, curves

    return score_rows(rows, score_row, progress)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, best value of each metric marked with ``*``."""
    metrics = [k for k in next(iter(results.values())) if k in HIGHER_IS_BETTER]
    best = {}
    for k in metrics:
        values = {m: r[k] for m, r in results.items() if m != "random"}
        best[k] = (
            (max if HIGHER_IS_BETTER[k] else min)(values, key=values.get) if len(set(values.values())) > 1 else None
        )
    width = max(16, 2 + max(map(len, results)))
    lines = ["method".ljust(width) + "".join(k.rjust(16) for k in metrics)]
    for method, row in results.items():
        cells = "".join((f"{row[k]:.4f}" + ("*" if best[k] == method else " ")).rjust(16) for k in metrics)
        lines.append(method.ljust(width) + cells)
    lower = [k for k in metrics if not HIGHER_IS_BETTER[k]]
    direction = f"higher is better except {', '.join(lower)}" if lower else "higher is better"
    lines.append(f"{direction}; * marks the best method (random excluded)")
    return "\n".join(lines)


def _cli_kwargs(args: argparse.Namespace, *scalar: str) -> dict:
    """The arguments every evaluation takes from the command line, plus ``score``/``target_scale`` if named."""
    kwargs = dict(n=args.n, seed=args.seed, batch_size=args.batch_size, methods=args.methods)
    return {**kwargs, "progress": not args.no_progress, **{name: getattr(args, name) for name in scalar}}


def _run_vit(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    peers = None if args.peers is None else {name: PEERS[name] for name in args.peers or PEERS}
    return evaluate_vit(model, start_layer=args.start_layer, peers=peers, flow=args.flow, **_cli_kwargs(args))[0]


def _run_clip(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return evaluate_clip(model, **_cli_kwargs(args))


def _run_vqa(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return evaluate_vqa(model, **_cli_kwargs(args, "score", "target_scale"))[0]


def _run_translate(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return evaluate_translate(model, **_cli_kwargs(args, "score", "target_scale"))


def _run_detr(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return evaluate_detr(model, queries=args.queries, **_cli_kwargs(args))


EVALUATORS = {
    "shapes-vit": _run_vit,
    "shapes-clip": _run_clip,
    "shapes-vqa": _run_vqa,
    "shapes-translate": _run_translate,
    "shapes-detr": _run_detr,
}
"""Embedded model -> its evaluation (``model, parsed CLI arguments -> {method: {metric: value}}``)."""


def _run_lm(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return evaluate_lm(model, **_cli_kwargs(args, "score"))[0]


EVALUATORS["shapes-lm"] = _run_lm
# shapes-swin: the same task, scenes and protocol as shapes-vit; its maps lie on the first stage's
# 16 x 16 grid (4-pixel patches), so "pointing" is scored on a grid twice as fine as shapes-vit's.
EVALUATORS["shapes-swin"] = _run_vit


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description="Score explanation methods against ShapesWorld ground truth.")
    parser.add_argument("--model", default="shapes-vit", choices=list(EVALUATORS), help="embedded model")
    parser.add_argument("--n", type=int, default=300, help="number of fresh scenes")
    parser.add_argument("--seed", type=int, default=7, help="ShapesWorld seed of the evaluation scenes")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--start-layer", type=int, default=0, help="first layer aggregated (shapes-vit, shapes-swin)")
    parser.add_argument("--methods", nargs="*", default=None, choices=method_names(ablations=True))
    parser.add_argument("--json", type=Path, default=None, help="write {method: {metric: value}} here")
    parser.add_argument(
        "--peers",
        nargs="*",
        default=None,
        choices=list(PEERS),
        help="shapes-vit, shapes-swin: add peer rows (no name: all)",
    )
    parser.add_argument("--flow", action="store_true", help="shapes-vit: add attention flow (Abnar & Zuidema 2020)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--score", default="logit", choices=["logit", "log_prob"], help="shapes-translate, shapes-vqa: explained scalar"
    )
    parser.add_argument(
        "--target-scale",
        type=float,
        default=1.0,
        help="shapes-translate, shapes-vqa: explain the scalar times this constant (GAE is not scale-invariant)",
    )
    parser.add_argument(
        "--queries",
        default="confident",
        choices=["confident", "matched"],
        help="shapes-detr: explain confident detections (p > 0.5) or the query that best localises each object",
    )
    args = parser.parse_args(argv)

    model = load(args.model)
    started = time.perf_counter()
    results = EVALUATORS[args.model](model, args)
    first = next(iter(results.values()))
    pairs = int(first["pairs"])
    elapsed = time.perf_counter() - started
    costs = f"; ms_per_pair in {cost_note(next(model.parameters()).device)}" if "ms_per_pair" in first else ""
    print(f"{args.model}: {args.n} scenes (seed {args.seed}), {pairs} explained pairs, {elapsed:.1f} s{costs}")
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def alignment_hits(relevance: Tensor, translations: Sequence, steps: Sequence[int] | None = None) -> Tensor:
    """Whether the most relevant source word of each generated word is one of its aligned words.

    Args:
        relevance: ``(B, K, S)`` source relevance of K explained steps (``words [EOS] [PAD]..`` columns).
        translations: the B reference :class:`~shapesworld.language.Translation` (the generation
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


if __name__ == "__main__":
    main()
