"""Train the embedded models on ShapesWorld (seeded, CPU-friendly, progress bars).

    python -m gae_workbook.models.train shapes-vit            # retrain and overwrite the shipped checkpoint
    python -m gae_workbook.models.train shapes-vit --steps 20 --out /tmp/w   # a quick smoke run elsewhere

Training scenes come from ``ShapesWorld(seed=TRAIN_SEED)`` (a fixed set, reshuffled each epoch); held-out
metrics from ``ShapesWorld(seed=HELDOUT_SEED)``, scenes the model never saw. The measured metrics
are written into the checkpoint's card (``gae_workbook/models/weights/<name>.json``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shapesworld.inputs import (
    PIXEL_MEAN,
    PIXEL_STD,
    REGION_GRID,
    REGION_WINDOW,
    detr_pixels,
    encode_captions,
    encode_sources,
    encode_targets,
    normalize_pixels,
    translate_vocabulary,
    vqa_inputs,
)
from shapesworld.language import ANSWERS, QUESTION_KINDS, Vocabulary, all_captions, caption, sample_question, translate
from shapesworld.scenes import CLASS_NAMES, ShapesBatch, ShapesWorld
from shapesworld.stories import (
    STORY_KINDS,
    TOKEN_OFFSET,
    draw_stories,
    encode_stories,
    quiz,
    stories,
    story_vocabulary,
    story_world,
)
from shapesworld.targets import region_labels, scene_targets

from .detection import evaluate_detection
from .translator import greedy_decode
from .zoo import EMBEDDED, ModelCard, build, load, save_checkpoint, weights_dir

__all__ = ["train_shapes_vit", "train_shapes_swin", "evaluate_multilabel", "TRAIN_SEED", "HELDOUT_SEED"]

TRAIN_SEED = 0
HELDOUT_SEED = 1_000_003


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_multilabel(model: nn.Module, world: ShapesWorld, n: int = 1000, batch_size: int = 250) -> dict[str, float]:
    """Held-out metrics of a multi-label classifier (a class is predicted present iff its logit > 0).

    Returns:
        ``exact_match`` (all 16 decisions right), ``label_accuracy`` (mean over the 16 decisions)
        and ``object_recall`` (share of objects whose class is predicted present).
    """
    model.eval()
    exact = label = found = objects = 0.0
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        batch = world.batch(min(batch_size, n - start), start=start)
        pred = model(batch.images.to(device)).cpu() > 0  # (B, 16)
        truth = batch.labels > 0.5
        exact += (pred == truth).all(dim=1).sum().item()
        label += (pred == truth).float().mean(dim=1).sum().item()
        found += (pred & truth).sum().item()
        objects += truth.sum().item()
    return {"exact_match": exact / n, "label_accuracy": label / n, "object_recall": found / objects, "n": n}


# Inputs are normalised with these during training, then the normalisation is folded into the
# patch embedding (:func:`fold_input_normalization`): the shipped model takes images in [0, 1].


def fold_input_normalization(model: nn.Module, mean: float, std: float) -> None:
    """Fold ``x -> (x - mean) / std`` into a timm ViT's patch projection, in place.

    The projection is linear, so ``W * ((x - m) / s) + b == (W / s) * x + (b - m / s * sum(W))``.
    """
    proj = model.patch_embed.proj
    with torch.no_grad():
        proj.bias -= proj.weight.sum(dim=(1, 2, 3)) * mean / std  # (D,)
        proj.weight /= std


def _epoch_order(n: int, steps: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Scene indices for every step: the training set reshuffled each epoch, ``(>= steps * batch_size,)``."""
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch_size / n))])


def _train_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    examples: int,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
    name: str,
    progress: bool,
) -> list[float]:
    """The loop every embedded model shares: seeded epochs, warm-up + cosine LR, gradient clipping at 1, a tqdm bar.

    A generator seeded with ``seed`` first draws the order of the ``examples`` training examples for
    every epoch (:func:`_epoch_order`); step ``s`` takes the next ``batch_size`` of them. The same
    generator then serves the batches' random augmentations, drawn in step order.

    Args:
        model: the model, trained in place (left in eval mode).
        opt: its optimiser; the learning rate of every parameter group is set at each step.
        batch_loss: ``batch_loss(idx, gen)`` builds the batch of examples ``idx`` ``(b,)`` and returns
            its loss; ``gen`` is the seeded generator.
        examples: size of the training set.
        steps: optimisation steps.
        batch_size: examples per step.
        lr: peak learning rate (linear warm-up over ``warmup`` steps, then cosine decay to 0).
        warmup: warm-up steps.
        seed: seeds the generator.
        name: the tqdm bar's label.
        progress: show the bar.

    Returns:
        The loss of every step.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    order = _epoch_order(examples, steps, batch_size, gen)  # (>= steps * batch_size,)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=name, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = batch_loss(order[step * batch_size : (step + 1) * batch_size], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
    model.eval()
    return losses


def _training_record(recipe: dict, losses: list[float], seconds: float, heldout: dict) -> dict:
    """The card's ``training`` entry: the recipe, the time, the start and end of the loss curve, held-out metrics."""
    return {
        **recipe,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loss_first_10": round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
        "loss_last_10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
        "heldout_seed": HELDOUT_SEED,
        "heldout": heldout,
    }


def new_model(name: str, classes, seed: int, device: str | torch.device) -> tuple[ModelCard, nn.Module]:
    """Seed torch, then build embedded model ``name`` with fresh weights and its card (``classes`` filled in)."""
    torch.manual_seed(seed)
    card = ModelCard(**{**EMBEDDED[name].__dict__, "classes": list(classes)})
    return card, build(card).to(device)


def attach_and_save(model: nn.Module, card: ModelCard, training: dict, out: Path | None) -> tuple[nn.Module, ModelCard]:
    """Attach the training record to the card, save the checkpoint into ``out`` (if given), return both."""
    card.training = training
    if out is not None:
        save_checkpoint(model, card, out)
    return model, card


def _training_set(
    n: int, seed: int, progress: bool, keep_scenes: bool = False, chunk: int = 2000
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Scenes ``0..n-1`` of ``ShapesWorld(seed=TRAIN_SEED + seed)``: images ``(n, 3, H, W)``, labels ``(n, 16)``
    and, if asked, the scene records."""
    from tqdm.auto import tqdm

    world = ShapesWorld(seed=TRAIN_SEED + seed)
    images, labels, scenes = [], [], []
    for start in tqdm(range(0, n, chunk), desc="scenes", disable=not progress):
        batch = world.batch(min(chunk, n - start), start=start)
        images.append(batch.images)
        labels.append(batch.labels)
        if keep_scenes:
            scenes.extend(batch.scenes)
    return torch.cat(images), torch.cat(labels), scenes


def _train_multilabel(
    name: str,
    no_decay_name: str,
    task_note: str,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    train_scenes: int,
    seed: int,
    eval_n: int,
    out: Path | None,
    progress: bool,
    device: str | torch.device,
) -> tuple[nn.Module, ModelCard]:
    """The multi-label ShapesWorld recipe of shapes-vit and shapes-swin (arguments as
    :func:`train_shapes_vit`); parameters named ``no_decay_name`` (position embeddings or tables)
    and 1-D ones take no weight decay."""
    card, model = new_model(name, CLASS_NAMES, seed, device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and no_decay_name not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and no_decay_name not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    started = time.perf_counter()
    images, labels, _ = _training_set(train_scenes, seed, progress)  # (N, 3, H, W), (N, 16)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = images[idx].to(device)  # (b, 3, H, W)
        flip = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flips keep every label
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
        return F.binary_cross_entropy_with_logits(model((x - PIXEL_MEAN) / PIXEL_STD), labels[idx].to(device))

    losses = _train_loop(model, opt, batch_loss, train_scenes, steps, batch_size, lr, warmup, seed, name, progress)
    seconds = time.perf_counter() - started
    fold_input_normalization(model, PIXEL_MEAN, PIXEL_STD)
    recipe = {
        "task": "multi-label (colour, shape) classification, BCE on 16 logits" + task_note,
        "input_normalization": f"(x - {PIXEL_MEAN}) / {PIXEL_STD}, folded into patch_embed.proj after training",
        "steps": steps,
        "train_scenes": train_scenes,
        "augmentation": "horizontal flip",
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "seed": seed,
    }
    metrics = evaluate_multilabel(model, ShapesWorld(seed=HELDOUT_SEED), n=eval_n)
    return attach_and_save(model.cpu(), card, _training_record(recipe, losses, seconds, metrics), out)


def train_shapes_vit(
    steps: int = 2250,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    warmup: int = 100,
    train_scenes: int = 50_000,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-vit`` (a timm VisionTransformer) on multi-label ShapesWorld classification.

    Args:
        steps: optimisation steps of ``batch_size`` scenes.
        batch_size: scenes per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        weight_decay: AdamW weight decay.
        warmup: warm-up steps.
        train_scenes: size of the training set (generated once, reshuffled every epoch,
            random horizontal flips).
        seed: seeds the initialisation and offsets the training scenes.
        eval_n: held-out scenes for the final metrics.
        out: directory for the checkpoint (``None``: don't save).
        progress: show a tqdm bar.
        device: where to train (the shipped checkpoint was trained on the CPU).

    Returns:
        ``(model, card)``; the card's ``training`` holds the recipe, loss curve and held-out metrics.
    """

    return _train_multilabel(
        "shapes-vit",
        "pos_embed",
        "",
        steps,
        batch_size,
        lr,
        weight_decay,
        warmup,
        train_scenes,
        seed,
        eval_n,
        out,
        progress,
        device,
    )


@torch.no_grad()
def retrieval_accuracy(model: nn.Module, world: ShapesWorld, n: int = 1000, candidates: int = 100) -> dict[str, float]:
    """Image -> caption top-1 among ``candidates`` captions of different scenes (one true caption each).

    A hit is the scene's own caption, or one with exactly its text (two scenes can share a caption).
    """
    vocab = Vocabulary.captions()
    device = next(model.parameters()).device
    hits = total = 0
    rng = np.random.default_rng(0)
    for start in range(0, n - candidates + 1, candidates):
        batch = world.batch(candidates, start=start)
        caps = [caption(scene, rng) for scene in batch.scenes]
        ids, mask = encode_captions(caps, vocab)
        out = model(
            pixel_values=normalize_pixels(batch.images).to(device),
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
        )
        best = out.logits_per_image.argmax(dim=1).cpu()  # (C,)
        hits += sum(caps[int(b)].text == caps[i].text for i, b in enumerate(best))
        total += candidates
    return {"image_to_caption_top1": hits / total, "candidates": candidates, "n": total}


def train_shapes_clip(
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    train_scenes: int = 40_000,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-clip`` (a small Hugging Face ``CLIPModel``) contrastively on ShapesWorld captions.

    Every step pairs ``batch_size`` scenes with one of their true captions, drawn at random from all
    of them (:func:`shapesworld.language.all_captions`); the loss is CLIP's symmetric InfoNCE over the batch.

    Returns:
        ``(model, card)``; the card's ``training`` holds the recipe and held-out retrieval accuracy.
    """

    vocab = Vocabulary.captions()
    card, model = new_model("shapes-clip", vocab.tokens, seed, device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    images_t, _, scenes = _training_set(train_scenes, seed, progress, keep_scenes=True)
    captions = [all_captions(scene) for scene in scenes]  # every true caption of each scene
    ids_t, mask_t = encode_captions([c for caps in captions for c in caps], vocab)  # (sum of counts, 12)
    number = torch.tensor([len(caps) for caps in captions])  # (N,)
    first = torch.cumsum(number, 0) - number  # row of each scene's first caption

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        pick = first[idx] + (torch.rand(len(idx), generator=gen) * number[idx]).long()  # one caption per scene
        return model(
            pixel_values=normalize_pixels(images_t[idx]).to(device),
            input_ids=ids_t[pick].to(device),
            attention_mask=mask_t[pick].to(device),
            return_loss=True,
        ).loss

    losses = _train_loop(
        model, opt, batch_loss, train_scenes, steps, batch_size, lr, warmup, seed, "shapes-clip", progress
    )
    seconds = time.perf_counter() - started
    metrics = retrieval_accuracy(model, ShapesWorld(seed=HELDOUT_SEED), n=eval_n)
    model.cpu()
    recipe = {
        "task": "contrastive (image, caption) pairs, CLIP loss over the batch",
        "input_normalization": f"pixel_values = (x - {PIXEL_MEAN}) / {PIXEL_STD} (shapesworld.inputs.normalize_pixels)",
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "train_scenes": train_scenes,
        "seed": seed,
    }
    return attach_and_save(model, card, _training_record(recipe, losses, seconds, metrics), out)


@torch.no_grad()
def vqa_accuracy(model: nn.Module, world: ShapesWorld, n: int = 1000, batch_size: int = 250) -> dict[str, float]:
    """Held-out answer accuracy, one sampled question per scene, overall and per question kind."""
    vocab = Vocabulary.questions()
    rng = np.random.default_rng(1)
    device = next(model.parameters()).device
    right = dict.fromkeys(QUESTION_KINDS, 0)
    seen = dict.fromkeys(QUESTION_KINDS, 0)
    for start in range(0, n, batch_size):
        batch = world.batch(min(batch_size, n - start), start=start)
        qs = [sample_question(scene, rng) for scene in batch.scenes]
        inputs = {k: v.to(device) for k, v in vqa_inputs(batch.images, qs, vocab).items()}
        pred = model(**inputs).question_answering_score.argmax(-1).cpu()
        for q, p in zip(qs, pred.tolist()):
            seen[q.kind] += 1
            right[q.kind] += ANSWERS[p] == q.answer
    out = {f"accuracy_{k}": right[k] / max(1, seen[k]) for k in QUESTION_KINDS}
    out["accuracy"] = sum(right.values()) / n
    out["n"] = n
    return out


def train_shapes_vqa(
    steps: int = 4000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    region_loss: float = 1.0,
    train_scenes: int = 40_000,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-vqa`` (a small Hugging Face LXMERT over grid "regions") on ShapesWorld questions.

    Each step asks one question per scene, drawn with :func:`shapesworld.language.sample_question`;
    cross-entropy over :data:`shapesworld.language.ANSWERS`. Like LXMERT's pre-training task of
    classifying each region's detected object, an auxiliary head on the vision stream's output
    predicts each region's class (:func:`region_labels`), weighted by ``region_loss``; the head
    is discarded after training (the shipped model is a plain ``LxmertForQuestionAnswering``).
    """

    vocab = Vocabulary.questions()
    card, model = new_model("shapes-vqa", ANSWERS, seed, device)
    region_head = nn.Linear(model.config.hidden_size, len(CLASS_NAMES) + 1).to(device)  # + background
    opt = torch.optim.AdamW([*model.parameters(), *region_head.parameters()], lr=lr, weight_decay=0.01)
    started = time.perf_counter()
    images_t, _, scenes = _training_set(train_scenes, seed, progress, keep_scenes=True)
    answer_index = {a: i for i, a in enumerate(ANSWERS)}
    rng = np.random.default_rng(seed)  # the questions

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = [scenes[i] for i in idx.tolist()]
        qs = [sample_question(scene, rng) for scene in chosen]
        inputs = {k: v.to(device) for k, v in vqa_inputs(images_t[idx], qs, vocab).items()}
        labels = torch.tensor([answer_index[q.answer] for q in qs], device=device)
        out = model.lxmert(**inputs)
        loss = F.cross_entropy(model.answer_head(out.pooled_output), labels)
        if region_loss:
            regions = region_labels(ShapesBatch.from_scenes(chosen).masks).to(device)  # (B, R)
            loss = loss + region_loss * F.cross_entropy(region_head(out.vision_output).flatten(0, 1), regions.flatten())
        return loss

    losses = _train_loop(
        model, opt, batch_loss, train_scenes, steps, batch_size, lr, warmup, seed, "shapes-vqa", progress
    )
    seconds = time.perf_counter() - started
    metrics = vqa_accuracy(model, ShapesWorld(seed=HELDOUT_SEED), n=eval_n)
    model.cpu()
    recipe = {
        "task": "VQA over ShapesWorld questions (colour, shape, exists, count), cross-entropy over the answers",
        "regions": (
            f"a {REGION_GRID}x{REGION_GRID} grid; each region's features are the normalised pixels "
            f"(x - 0.5) / 0.25 of a {REGION_WINDOW}-pixel window on its cell (shapesworld.inputs.region_features)"
        ),
        "region_loss": f"{region_loss} x cross-entropy of each region's class from the vision output (head discarded)",
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": 0.01,
        "train_scenes": train_scenes,
        "seed": seed,
    }
    return attach_and_save(model, card, _training_record(recipe, losses, seconds, metrics), out)


# ----------------------------------------------------------------------------- shapes-translate


def _translation_pairs(world: ShapesWorld, n_scenes: int):
    """Every true caption of scenes ``0..n_scenes-1`` with its toy translation."""
    captions = [c for scene in world.scenes(n_scenes) for c in all_captions(scene)]
    return captions, [translate(c) for c in captions]


@torch.no_grad()
def translation_accuracy(model: nn.Module, world: ShapesWorld, n: int = 1000, seen: set[str] | None = None) -> dict:
    """Held-out greedy exact match: one caption per scene of ``world`` (:func:`shapesworld.language.caption`).

    ``unseen_exact_match`` is the exact match over the captions whose text is not in ``seen`` (the
    training captions), with their count.
    """
    vocab = translate_vocabulary()
    rng = np.random.default_rng(2)
    caps = [caption(scene, rng) for scene in world.scenes(n)]
    truth = encode_targets([translate(c) for c in caps], vocab)  # (n, T + 1)
    inputs = encode_sources(caps, vocab)
    out = greedy_decode(model, inputs, vocab.bos_id, vocab.eos_id, vocab.pad_id, max_new_tokens=truth.shape[1] - 1)
    out = torch.nn.functional.pad(out, (0, truth.shape[1] - out.shape[1]), value=vocab.pad_id)[:, : truth.shape[1]]
    exact = (out == truth).all(dim=1)  # (n,)
    result = {"exact_match": exact.float().mean().item(), "n": n}
    if seen is not None:
        unseen = torch.tensor([c.text not in seen for c in caps])
        result["unseen_n"] = int(unseen.sum())
        result["unseen_exact_match"] = exact[unseen].float().mean().item() if unseen.any() else None
    return result


def train_shapes_translate(
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup: int = 100,
    train_scenes: int = 400,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-translate`` (a tiny Hugging Face ``MarianMTModel``) on caption -> toy-language pairs.

    The pairs are every true caption of ``train_scenes`` ShapesWorld scenes and its translation
    (:func:`shapesworld.language.translate`: articles dropped, adjective after noun, two-word relations
    become one word); teacher-forced cross-entropy over the target tokens, padding ignored.
    Held-out: greedy exact match on one caption per scene of ``ShapesWorld(seed=HELDOUT_SEED)``.
    """
    vocab = translate_vocabulary()
    card, model = new_model("shapes-translate", vocab.tokens, seed, device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    captions, translations = _translation_pairs(ShapesWorld(seed=TRAIN_SEED + seed), train_scenes)
    sources = encode_sources(captions, vocab)  # (N, S)
    targets = encode_targets(translations, vocab)  # (N, T + 1)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        tgt = targets[idx].to(device)
        logits = model(
            input_ids=sources["input_ids"][idx].to(device),
            attention_mask=sources["attention_mask"][idx].to(device),
            decoder_input_ids=tgt[:, :-1],
            use_cache=False,
        ).logits  # (b, T, V)
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=vocab.pad_id)

    losses = _train_loop(
        model, opt, batch_loss, len(captions), steps, batch_size, lr, warmup, seed, "shapes-translate", progress
    )
    seconds = time.perf_counter() - started
    model.cpu()
    seen = {c.text for c in captions}
    metrics = translation_accuracy(model, ShapesWorld(seed=HELDOUT_SEED), n=eval_n, seen=seen)
    recipe = {
        "task": "caption -> toy language (shapesworld.language.translate), teacher-forced cross-entropy",
        "pairs": len(captions),
        "unique_captions": len(seen),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "train_scenes": train_scenes,
        "seed": seed,
        "decoding": "greedy (gae_workbook.models.translator.greedy_decode)",
    }
    return attach_and_save(model, card, _training_record(recipe, losses, seconds, metrics), out)


# ----------------------------------------------------------------------------- shapes-detr


def train_shapes_detr(
    steps: int = 5000,
    batch_size: int = 16,
    lr: float = 6e-4,
    weight_decay: float = 1e-4,
    warmup: int = 100,
    train_scenes: int = 20_000,
    region_loss: float = 1.0,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    init: Path | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-detr`` (a tiny Hugging Face ``DetrForObjectDetection``) on ShapesWorld boxes.

    DETR's set loss (Carion et al. 2020): Hungarian matching of the 8 queries to the scene's objects
    (class, L1 and generalised-IoU costs), cross-entropy over 16 classes + "no object" (weight 0.1),
    L1 + GIoU box losses (weights 2 and 1, the card's ``bbox_loss_coefficient`` and
    ``giou_loss_coefficient``), auxiliary losses after every decoder layer; Hugging Face's
    implementation (``labels=`` argument). Every parameter is trained from scratch, the backbone
    included. Inputs are ``detr_pixels(images)`` (normalised RGB + coordinate channels); random
    horizontal flips of the RGB image mirror the boxes.

    Like shapes-vqa's region loss, an auxiliary head on the encoder's output tokens predicts the
    class covering each token's 8x8 cell (:func:`region_labels`), weighted by ``region_loss``, and
    is discarded after training; the decoder needs it to learn the classes, not only the boxes
    (the measurements are in the DETR section of docs/models.md).

    ``init``: a directory holding a shapes-detr checkpoint to continue from (a second schedule
    on new scene order); its card's training record is kept under ``training["continued_from"]``.

    Returns:
        ``(model, card)``; the card's ``training`` holds the recipe and the held-out mAP@0.5.
    """
    card, model = new_model("shapes-detr", CLASS_NAMES, seed, device)
    previous = None
    if init is not None:
        start = load("shapes-detr", directory=init)
        model.load_state_dict(start.state_dict())
        previous = start.card.training
    for p in model.parameters():
        p.requires_grad_(True)  # Hugging Face freezes DETR's backbone stem for pretrained ResNets; ours starts random
    grid = card.image_size // 8  # the stage-2 feature map: stride 8
    region_head = nn.Linear(model.config.d_model, len(CLASS_NAMES) + 1).to(device)  # + background
    params = [*model.parameters(), *region_head.parameters()]
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    started = time.perf_counter()
    images_t, _, scenes = _training_set(train_scenes, seed, progress, keep_scenes=True)

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = [scenes[i] for i in idx.tolist()]
        x = images_t[idx]  # (b, 3, H, W)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        labels = [{k: v.to(device) for k, v in t.items()} for t in scene_targets(chosen, flip)]
        out = model(pixel_values=detr_pixels(x).to(device), labels=labels)
        if not region_loss:
            return out.loss
        masks = ShapesBatch.from_scenes(chosen).masks  # (b, 16, H, W)
        masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
        cells = region_labels(masks, grid=grid).to(device)  # (b, G*G) row-major, as DETR flattens its tokens
        aux = F.cross_entropy(region_head(out.encoder_last_hidden_state).flatten(0, 1), cells.flatten())
        return out.loss + region_loss * aux

    losses = _train_loop(
        model, opt, batch_loss, train_scenes, steps, batch_size, lr, warmup, seed, "shapes-detr", progress
    )
    seconds = time.perf_counter() - started
    metrics = evaluate_detection(model, ShapesWorld(seed=HELDOUT_SEED), n=eval_n)
    model.cpu()
    recipe = {
        "task": "object detection of ShapesWorld objects (16 classes), DETR set loss with Hungarian matching",
        "input_normalization": f"(x - {PIXEL_MEAN}) / {PIXEL_STD} + x, y coordinate channels (detection.detr_pixels)",
        "loss_weights": {
            "class": 1.0,
            "l1": model.config.bbox_loss_coefficient,
            "giou": model.config.giou_loss_coefficient,
            "no_object": model.config.eos_coefficient,
        },
        "region_loss": region_loss,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "train_scenes": train_scenes,
        "augmentation": "horizontal flip (boxes mirrored)",
        "seed": seed,
    }
    training = _training_record(recipe, losses, seconds, metrics)
    if previous is not None:
        training["continued_from"] = previous
        training["total_train_seconds"] = round(
            seconds + previous.get("total_train_seconds", previous["train_seconds"]), 1
        )
    return attach_and_save(model, card, training, out)


TRAINERS = {"shapes-vit": train_shapes_vit, "shapes-clip": train_shapes_clip, "shapes-vqa": train_shapes_vqa}
TRAINERS["shapes-translate"] = train_shapes_translate
TRAINERS["shapes-detr"] = train_shapes_detr


# ----------------------------------------------------------------------------- shapes-lm (decoder-only)


@torch.no_grad()
def story_accuracy(model: nn.Module, seed: int = HELDOUT_SEED, n: int = 1000, batch_size: int = 250) -> dict:
    """Answer accuracy of a story LM on ``n`` stories of ``story_world(seed)``
    (:func:`shapesworld.stories.draw_stories`); the answer is the argmax next token after ``"A:"``.

    Returns:
        ``accuracy``, ``accuracy_<kind>`` per question kind, ``accuracy_<k>_objects`` per number of
        sentences, and ``n``.
    """
    vocab = story_vocabulary()
    rng = np.random.default_rng(3)
    device = next(model.parameters()).device
    right: dict[str, list[bool]] = {}
    every = draw_stories(seed, n, rng)
    for start in range(0, n, batch_size):
        batch = every[start : start + batch_size]
        inputs = encode_stories(batch, vocab)  # right-padded prompts ending with "A:"
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.cpu()  # (B, L, V)
        last = inputs["attention_mask"].sum(1) - 1  # (B,)
        pred = logits[torch.arange(len(batch)), last].argmax(-1)  # (B,)
        for story, p in zip(batch, pred.tolist()):
            hit = vocab.tokens[p] == story.answer
            for group in ("all", story.kind, f"{story.description_length // 5}_objects"):
                right.setdefault(group, []).append(hit)
    out = {"accuracy": sum(right.pop("all")) / n}
    out.update({f"accuracy_{k}": sum(v) / len(v) for k, v in sorted(right.items())})
    out["n"] = n
    return out


def train_shapes_lm(
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 100,
    train_scenes: int = 8000,
    answer_weight: float = 1.0,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-lm`` (a tiny Hugging Face ``LlamaForCausalLM``) on ShapesWorld stories.

    One sequence per scene of ``story_world(TRAIN_SEED + seed)`` (scenes without a story skipped):
    ``[BOS] description Q: question ? A: answer Q: ... [EOS]``, the description followed by every
    well-posed question with its answer in a random order (:func:`shapesworld.stories.quiz`); every
    prefix ending with ``"A:"`` is a story's prompt. The loss is next-token cross-entropy over every
    real token (a plain language-model loss) plus ``answer_weight`` times the mean cross-entropy of the
    answer tokens alone. Trained on single stories instead, the model stayed at guessing among the
    colours or shapes present (about 65 % held-out after 1,500 steps of 64 stories). Held-out: answer
    accuracy on one story per scene of ``story_world(HELDOUT_SEED)`` (:func:`story_accuracy`).

    Returns:
        ``(model, card)``; the card's ``training`` holds the recipe and held-out answer accuracy.
    """
    vocab = story_vocabulary()
    card, model = new_model("shapes-lm", vocab.tokens, seed, device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    quizzes = [quiz(scene, rng) for scene in story_world(TRAIN_SEED + seed).scenes(train_scenes) if stories(scene)]
    ids, _ = vocab.encode_batch(
        [words for words, _ in quizzes], cls_token=False, sep_token=False, bos_token=True, eos_token=True
    )  # (N, L)
    is_answer = torch.zeros(ids.shape, dtype=torch.bool)  # (N, L) the answer tokens
    for i, (_, answers) in enumerate(quizzes):
        is_answer[i, [a + TOKEN_OFFSET for a in answers]] = True

    def batch_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mask = (ids[idx] != vocab.pad_id).long()
        length = int(mask.sum(1).max())
        x, mask = ids[idx, :length].to(device), mask[:, :length].to(device)  # (b, l)
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits[:, :-1]  # (b, l - 1, V)
        lm = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), ignore_index=vocab.pad_id)
        answer = is_answer[idx, 1:length].to(device)  # (b, l - 1) next token is an answer
        return lm + answer_weight * F.cross_entropy(logits[answer], x[:, 1:][answer])

    losses = _train_loop(
        model, opt, batch_loss, len(quizzes), steps, batch_size, lr, warmup, seed, "shapes-lm", progress
    )
    seconds = time.perf_counter() - started
    model.cpu()
    metrics = story_accuracy(model, HELDOUT_SEED, n=eval_n)
    recipe = {
        "task": "ShapesWorld stories (shapesworld.stories): a scene description, then questions and answers",
        "format": "[BOS] (the <shape> is <colour> .) x 1-5 (Q: what colour is the <shape> ? A: <colour>) x 1-8 [EOS]",
        "question_kinds": list(STORY_KINDS),
        "loss": f"LM cross-entropy over every real token + {answer_weight} x mean cross-entropy of the answer tokens",
        "tokenizer": "word level, shapesworld.stories.story_vocabulary() (card classes: token of each id)",
        "sequences": len(quizzes),
        "answers": int(is_answer.sum()),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": 0.0,
        "train_scenes": train_scenes,
        "seed": seed,
    }
    return attach_and_save(model, card, _training_record(recipe, losses, seconds, metrics), out)


TRAINERS["shapes-lm"] = train_shapes_lm


# ----------------------------------------------------------------------------- shapes-swin


def train_shapes_swin(
    steps: int = 2500,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    warmup: int = 100,
    train_scenes: int = 50_000,
    seed: int = 0,
    eval_n: int = 1000,
    out: Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Train ``shapes-swin`` (a tiny timm ``SwinTransformer``) on shapes-vit's task and scenes.

    The recipe of :func:`train_shapes_vit` (multi-label BCE on the 16 (colour, shape) logits, the same
    training scenes, horizontal flips, AdamW with warm-up and cosine decay, the input normalisation
    folded into the patch embedding afterwards), for 2500 steps instead of 2250. The relative
    position bias tables take no weight decay.

    Returns:
        ``(model, card)``; the card's ``training`` holds the recipe, loss curve and held-out metrics.
    """
    return _train_multilabel(
        "shapes-swin",
        "relative_position",
        " (as shapes-vit)",
        steps,
        batch_size,
        lr,
        weight_decay,
        warmup,
        train_scenes,
        seed,
        eval_n,
        out,
        progress,
        device,
    )


TRAINERS["shapes-swin"] = train_shapes_swin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the embedded ShapesWorld models.")
    parser.add_argument("model", choices=[*TRAINERS, "all"])
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the shipped recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the package's weights/)")
    parser.add_argument("--eval-n", type=int, default=1000)
    args = parser.parse_args(argv)

    names = list(TRAINERS) if args.model == "all" else [args.model]
    for name in names:
        kwargs = {"seed": args.seed, "eval_n": args.eval_n, "out": args.out or weights_dir()}
        if args.steps is not None:
            kwargs["steps"] = args.steps
        _, card = TRAINERS[name](**kwargs)
        print(f"{name}: {card.training['train_seconds']} s, held-out {card.training['heldout']}")


if __name__ == "__main__":
    main()
