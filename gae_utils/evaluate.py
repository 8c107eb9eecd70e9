"""Evaluate every explanation method against ShapesWorld ground truth.

    python -m gae_utils.evaluate --model shapes-vit --n 300 --seed 7 --json results.json

Class-specific: every class present in a scene is explained (up to three per scene, as K targets
of one forward pass), and its map is scored against that object's mask:

- ``pointing``: pointing game at the map's own resolution (the ViT's patch grid): the most
  relevant patch holds pixels of the object;
- ``pointing_pixel``: the same after bilinear upsampling to pixels: the argmax pixel lies on the
  object's mask. An 8x8-pixel patch is coarser than the thin parts of a shape (a cross's arms, a
  triangle's apex), so every method scores lower here; both are reported;
- ``mass``: share of positive relevance on the object;
- ``pixel_accuracy``, ``miou``, ``map``: weakly supervised segmentation, foreground = map above
  its mean (evaluation.md);
- ``pos_auc``, ``neg_auc``: perturbation tests as the authors compute them (evaluation.md): the
  fraction x of pixels with the highest (positive) / lowest (negative) relevance is set to 0 for
  x in 0, 0.1, ..., 0.9; "accuracy" is whether the explained class is still detected (its logit
  stays > 0, the multi-label analogue of top-1 correctness); AUC = trapezoid x 100.
  Positive: lower is better; negative: higher is better.

A ``random`` row (uniform random patch maps, seeded) is printed as a floor. The JSON file holds
``{method: {metric: value}}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .engine import method_names
from .explainer import record
from .metrics import (
    masks_to_grid,
    perturbation_auc,
    perturbation_curve,
    pointing_game,
    relevance_mass,
    segmentation_scores,
    upsample_maps,
)
from .shapes import ShapesWorld

__all__ = ["evaluate_vit", "evaluate_detr", "main"]

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


def evaluate_vit(
    model: nn.Module,
    n: int = 300,
    seed: int = 7,
    batch_size: int = 50,
    methods: list[str] | None = None,
    start_layer: int = 0,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, Tensor]]:
    """Score every method on ``n`` fresh scenes of ``ShapesWorld(seed=seed)``.

    Args:
        model: a ShapesWorld multi-label classifier served by an adapter.
        n: number of scenes.
        seed: world seed (use one the model was not trained on).
        batch_size: scenes per forward pass.
        methods: methods to score (default: all).
        start_layer: passed to ``gae`` and ``rollout``.
        progress: tqdm bars.

    Returns:
        ``({method: {metric: value}}, {method: (2, S) positive/negative perturbation curves})``.
    """
    from tqdm.auto import tqdm

    methods = methods or method_names()
    world = ShapesWorld(seed=seed)
    device = next(model.parameters()).device
    maps: dict[str, list[Tensor]] = {m: [] for m in [*methods, "random"]}
    grid_maps: dict[str, list[Tensor]] = {m: [] for m in maps}
    images_all, masks_all, targets_all = [], [], []
    rng = torch.Generator().manual_seed(seed)
    for start in tqdm(range(0, n, batch_size), desc="explain", disable=not progress):
        batch = world.batch(min(batch_size, n - start), start=start)
        targets, valid = _class_targets(batch.labels)  # (B, K)
        rec = record(model, batch.images.to(device), targets.to(device))
        size = tuple(batch.images.shape[-2:])
        for method in methods:
            relevance = rec.explanation(method, start_layer if method in ("gae", "rollout") else 0).grid_relevance()
            grid_maps[method].append(relevance.float().cpu()[valid])  # (P, h, w)
            maps[method].append(upsample_maps(relevance.float().cpu(), size)[valid])  # (P, H, W)
        grid = tuple(relevance.shape[-2:])
        random_grid = torch.rand(int(valid.sum()), *grid, generator=rng)  # (P, h, w)
        grid_maps["random"].append(random_grid)
        maps["random"].append(upsample_maps(random_grid, size))
        pair_masks = batch.masks.gather(1, targets[:, :, None, None].expand(-1, -1, *size))  # (B, K, H, W)
        masks_all.append(pair_masks[valid])
        images_all.append(batch.images[:, None].expand(-1, targets.shape[1], -1, -1, -1)[valid])  # (P, 3, H, W)
        targets_all.append(targets[valid])
    images, masks, targets = torch.cat(images_all), torch.cat(masks_all), torch.cat(targets_all)

    @torch.no_grad()
    def still_detected(x: Tensor, t: Tensor) -> Tensor:
        logits = model(x.to(device)).cpu()
        return logits.gather(1, t[:, None])[:, 0] > 0  # (n,)

    results: dict[str, dict[str, float]] = {}
    curves: dict[str, Tensor] = {}
    for method in tqdm(list(maps), desc="score", disable=not progress):
        m = torch.cat(maps[method])  # (P, H, W)
        g = torch.cat(grid_maps[method])  # (P, h, w)
        seg = segmentation_scores(m, masks)
        pos = perturbation_curve(still_detected, images, m, targets, positive=True, batch_size=256)
        neg = perturbation_curve(still_detected, images, m, targets, positive=False, batch_size=256)
        curves[method] = torch.stack([pos, neg])
        results[method] = {
            **_localisation(g, m, masks),
            "pixel_accuracy": seg["pixel_accuracy"],
            "miou": seg["miou"],
            "map": seg["map"],
            "pos_auc": perturbation_auc(pos),
            "neg_auc": perturbation_auc(neg),
            "pairs": float(m.shape[0]),
        }
    return results, curves


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
    """
    from tqdm.auto import tqdm

    from .dual import explain_dual
    from .language import Vocabulary, caption
    from .train import encode_captions, normalize_pixels

    methods = methods or method_names()
    vocab = Vocabulary.captions()
    world = ShapesWorld(seed=seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    grid_maps: dict[str, list[Tensor]] = {m: [] for m in [*methods, "random"]}
    text_mass: dict[str, list[Tensor]] = {m: [] for m in [*methods, "random"]}
    masks_all, content_all = [], []
    gen = torch.Generator().manual_seed(seed)
    for start in tqdm(range(0, n, batch_size), desc="explain", disable=not progress):
        batch = world.batch(min(batch_size, n - start), start=start)
        caps = [caption(scene, rng) for scene in batch.scenes]
        ids, mask = encode_captions(caps, vocab)
        masks_all.append(
            torch.stack(
                [
                    batch.masks[b, [batch.scenes[b].objects[o].label for o in c.objects]].any(0)
                    for b, c in enumerate(caps)
                ]
            )
        )
        content = torch.zeros(ids.shape, dtype=torch.bool)  # (B, L): content words, specials and "a"/"of" excluded
        for b, c in enumerate(caps):
            for w, word in enumerate(c.words):
                content[b, 1 + w] = word not in ("a", "of")
        words = (ids != vocab.pad_id) & (ids != vocab.bos_id) & (ids != vocab.eos_id)  # (B, L)
        content_all.append(content.sum(1).float() / words.sum(1))
        texts = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        for method in methods:
            dual = explain_dual(
                model, normalize_pixels(batch.images).to(device), texts, method=method, pairs="diagonal"
            )
            grid_maps[method].append(dual.image.grid_relevance().float().cpu())  # (B, h, w)
            rel = dual.text.relevance["text"].float().cpu().clamp(min=0) * words  # (B, L)
            text_mass[method].append((rel * content).sum(1) / rel.sum(1).clamp_min(1e-12))
        grid = tuple(grid_maps[methods[0]][-1].shape[-2:])
        grid_maps["random"].append(torch.rand(len(caps), *grid, generator=gen))
        rand = torch.rand(ids.shape, generator=gen) * words
        text_mass["random"].append((rand * content).sum(1) / rand.sum(1))
    masks = torch.cat(masks_all)  # (P, H, W)
    size = tuple(masks.shape[-2:])
    results = {}
    for method in grid_maps:
        g = torch.cat(grid_maps[method])  # (P, h, w)
        up = upsample_maps(g, size)
        results[method] = {
            **_localisation(g, up, masks),
            "content_mass": torch.cat(text_mass[method]).mean().item(),
            "content_share": torch.cat(content_all).mean().item(),
            "pairs": float(g.shape[0]),
        }
    return results


# ----------------------------------------------------------------------------- DETR


def evaluate_detr(
    model: nn.Module,
    n: int = 200,
    seed: int = 7,
    batch_size: int = 25,
    methods: list[str] | None = None,
    iou_threshold: float = 0.5,
    progress: bool = True,
    queries: str = "confident",
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
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
    (:func:`gae_utils.detection.box_matched_queries`), for a detector that localises well but is
    rarely confident.

    Returns:
        ``({method: {metric: value}}, {method: why it has no numbers})``; rollout has no
        cross-attention rule, so it cannot read ``R[query, image]`` (method.md) and lands in the second dict.
    """
    from tqdm.auto import tqdm

    from .detection import box_matched_queries, detections, detr_pixels, match_to_objects

    if queries not in ("confident", "matched"):
        raise ValueError(f"queries must be 'confident' or 'matched', got {queries!r}")

    methods = methods or method_names()
    world = ShapesWorld(seed=seed)
    device = next(model.parameters()).device
    grid_maps: dict[str, list[Tensor]] = {m: [] for m in [*methods, "random"]}
    masks_all: list[Tensor] = []
    missing: dict[str, str] = {}
    gen = torch.Generator().manual_seed(seed)
    detected = unmatched = 0
    for start in tqdm(range(0, n, batch_size), desc="explain", disable=not progress):
        batch = world.batch(min(batch_size, n - start), start=start)
        size = tuple(batch.images.shape[-2:])
        with torch.no_grad():
            out = model(pixel_values=detr_pixels(batch.images).to(device))
        found = detections(out.logits.cpu(), out.pred_boxes.cpu(), size)
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
        if not slots:
            continue
        rec = record(model, detr_pixels(batch.images).to(device), target=targets)
        index = torch.tensor(slots)  # (P, 2): (example, target slot)
        for method in methods:
            if method in missing:
                continue
            try:
                grid = rec.explanation(method).grid_relevance("image").float().cpu()  # (B, K, h, w)
            except ValueError as err:  # a method with no R[query, image] (rollout)
                missing[method] = str(err)
                continue
            grid_maps[method].append(grid[index[:, 0], index[:, 1]])  # (P, h, w)
        h, w = rec.layout.segment("image").grid
        grid_maps["random"].append(torch.rand(len(slots), h, w, generator=gen))
        masks_all.append(torch.stack(masks))  # (P, H, W)
    if not masks_all:
        raise ValueError(f"the model detected no ground-truth object in {n} scenes; is it trained?")
    masks_t = torch.cat(masks_all)  # (P, H, W)
    size = tuple(masks_t.shape[-2:])
    results: dict[str, dict[str, float]] = {}
    for method, chunks in grid_maps.items():
        if method in missing:
            continue
        g = torch.cat(chunks)  # (P, h, w)
        up = upsample_maps(g, size)  # (P, H, W)
        seg = segmentation_scores(up, masks_t, threshold="otsu")
        results[method] = {
            "pixel_accuracy": seg["pixel_accuracy"],
            "miou": seg["miou"],
            "map": seg["map"],
            **_localisation(g, up, masks_t),
            "pairs": float(g.shape[0]),
            "detections": float(detected),
            "unmatched": float(unmatched),
        }
    return results, missing


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table, best value of each metric marked with ``*``."""
    metrics = [k for k in next(iter(results.values())) if k in HIGHER_IS_BETTER]
    best = {}
    for k in metrics:
        values = {m: r[k] for m, r in results.items() if m != "random"}
        best[k] = (
            (max if HIGHER_IS_BETTER[k] else min)(values, key=values.get) if len(set(values.values())) > 1 else None
        )
    lines = ["method".ljust(16) + "".join(k.rjust(16) for k in metrics)]
    for method, row in results.items():
        cells = "".join((f"{row[k]:.4f}" + ("*" if best[k] == method else " ")).rjust(16) for k in metrics)
        lines.append(method.ljust(16) + cells)
    lines.append("higher is better except pos_auc; * marks the best method (random excluded)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description="Score explanation methods against ShapesWorld ground truth.")
    parser.add_argument(
        "--model", default="shapes-vit", choices=["shapes-vit", "shapes-clip", "shapes-detr"], help="embedded model"
    )
    parser.add_argument("--n", type=int, default=300, help="number of fresh scenes")
    parser.add_argument("--seed", type=int, default=7, help="ShapesWorld seed of the evaluation scenes")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--start-layer", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=None, choices=method_names())
    parser.add_argument("--json", type=Path, default=None, help="write {method: {metric: value}} here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--queries",
        default="confident",
        choices=["confident", "matched"],
        help="shapes-detr: explain confident detections (p > 0.5) or the query that best localises each object",
    )
    args = parser.parse_args(argv)
    from .zoo import load

    model = load(args.model)
    started = time.perf_counter()
    if args.model == "shapes-clip":
        results = evaluate_clip(
            model,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            methods=args.methods,
            progress=not args.no_progress,
        )
    elif args.model == "shapes-detr":
        results, missing = evaluate_detr(
            model,
            queries=args.queries,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            methods=args.methods,
            progress=not args.no_progress,
        )
        for method, why in missing.items():
            print(f"{method}: no numbers ({why})")
    else:
        results, _ = evaluate_vit(
            model,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            methods=args.methods,
            start_layer=args.start_layer,
            progress=not args.no_progress,
        )
    pairs = int(next(iter(results.values()))["pairs"])
    elapsed = time.perf_counter() - started
    print(f"{args.model}: {args.n} scenes (seed {args.seed}), {pairs} explained pairs, {elapsed:.1f} s")
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
