"""Evaluate GAE and the other methods on your own image classifier and data, on one or many processes.

    python -m gae_workbook.harness --model timm:vit_base_patch16_224 --pretrained --data val/ --out runs/vit
    torchrun --nproc_per_node 8 -m gae_workbook.harness --model google/vit-base-patch16-224 \\
        --data gtsegs_ijcv.mat --device cuda --dtype bfloat16 --out runs/seg

Model (``--model``): ``timm:<name>`` (``timm.create_model``; ``--pretrained`` for timm's weights),
a Hugging Face model id or local directory (``AutoModelForImageClassification`` with its
``AutoImageProcessor``), or an embedded model (``shapes-vit``). Images are prepared by the model's
own preprocessing (timm's data config, the HF image processor) up to the normalisation, which is
applied inside every model call: the protocols perturb images in [0, 1].

Data (``--data``, :mod:`.datasets`): an ImageFolder tree, a ``save_to_disk`` directory,
the ImageNet-segmentation ``gtsegs_ijcv.mat`` file, optionally with ``--masks`` for a folder.

Protocols (docs/evaluation.md; Chefer et al. CVPR 2021 Sec. 4 and ICCV 2021 Sec. 5):

* ``perturbation``: the patch map of the explained class (the predicted one, ``pred``, and the
  ground-truth one, ``gt``) is upsampled to pixels; for x in 0, 0.1, ..., 0.9 the fraction x of
  pixels with the highest (positive test) or lowest (negative test) relevance is set to 0 and
  top-1 accuracy *against the label* is recorded, as in the authors'
  ``pertubation_eval_from_hdf5.py``; AUC = ``np.trapz(acc, x) * 100``. Data without labels is
  scored against the predicted class, and has no ``gt`` rows.
* ``segmentation`` (data with masks): the predicted class's map at mask resolution, foreground =
  above its mean; pixel accuracy, mIoU over {background, foreground} (sums over the whole set),
  mAP (the authors' two-channel AP), as ``imagenet_seg_eval.py``.
* ``deletion`` (Petsiuk et al., RISE, BMVC 2018): the softmax probability of the predicted class as
  pixels are deleted (set to the mean colour) or inserted into a blurred copy, most relevant
  first; AUC over the deleted/inserted fraction in [0, 1] (``--curve-steps`` steps, RISE's
  224-pixel steps are ``--curve-steps 224``).

Methods (``--methods``): every method of :data:`gae_utils.methods.METHODS` from one recording,
``random`` (uniform patch maps, the floor), the peers of :data:`.peers.PEERS` (``peers``
selects all of them) and user callables ``--method name=module:function`` with the peers'
signature ``(model, pixel_values (B, 3, H, W), target (B,)) -> (B, h, w)``.

Scale: the dataset is cut into shards of ``--shard-size`` consecutive images; rank r of a
``torchrun`` job takes shards r, r + N, ...; each writes ``<out>/shards/<id>.json`` with the
metric sums of its shard (a rerun skips shards already written; shards of another configuration
are refused before any work); rank 0 adds the shards' sums (gathered with an all-reduce: gloo on
CPU, nccl with ``--device cuda``) in shard order and prints and writes the table. Batches never
straddle shards and every process runs ``--threads`` intra-op threads (default 1, what torchrun
gives each worker), so 1 and N processes, however launched, compute the same numbers to the last bit.

Costs (``s_per_image``): process CPU time per image on the CPU (as the README's cost tables),
wall time after a synchronise on CUDA; the report names the clock and the threads per process.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from gae_utils import METHODS, UnsupportedModelError, find_adapter, method_names, record

from ..tools.cli import HelpFormatter, Parser
from . import protocol
from .checks import (
    UsageError,
    blank_maps,
    example_figure,
    first_sentence,
    match_labels,
    model_class_names,
    prediction_warnings,
    short_name,
    tie_warnings,
    unstarred,
)
from .datasets import Sample, open_data
from .metrics import (
    PERTURBATION_STEPS,
    normalize_maps,
    perturbation_auc,
    perturbation_curve,
    replacement_curve,
    segmentation_counts,
    segmentation_from_counts,
    upsample_maps,
)
from .peers import PEERS
from .protocol import Row, cost_clock, cost_note, method_rows, warm_up

__all__ = [
    "PROTOCOLS",
    "Classifier",
    "Plan",
    "load_classifier",
    "resolve_methods",
    "drop_unavailable",
    "explain_batch",
    "evaluate_batch",
    "summarize",
    "format_results",
    "shards_of",
    "UsageError",
    "Unreadable",
    "build_parser",
    "main",
    "command_line",
]

PROTOCOLS = ("perturbation", "segmentation", "deletion")
HIGHER_IS_BETTER = {
    "pos_auc_pred": False,
    "neg_auc_pred": True,
    "pos_auc_gt": False,
    "neg_auc_gt": True,
    "pixel_accuracy": True,
    "miou": True,
    "map": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "s_per_image": False,
}
MapFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- models


@dataclass
class Classifier:
    """An image classifier with the two halves of its preprocessing.

    Attributes:
        model: the classifier (timm, Hugging Face or embedded), in eval mode.
        transform: PIL image -> ``(3, H, W)`` in [0, 1] (resize, crop, to tensor).
        mask_transform: PIL ``L`` mask -> ``(H, W)`` bool, the same geometry with nearest interpolation.
        mean: ``(3,)`` normalisation mean (zeros when the model takes [0, 1] images).
        std: ``(3,)`` normalisation std.
    """

    model: nn.Module
    transform: Callable[[Image.Image], Tensor]
    mask_transform: Callable[[Image.Image], Tensor]
    mean: Tensor
    std: Tensor

    def pixel_values(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in [0, 1] -> the model's normalised input, in its dtype and device."""
        param = next(self.model.parameters())
        mean = self.mean.to(images.device)[:, None, None]  # (3, 1, 1)
        std = self.std.to(images.device)[:, None, None]
        return ((images - mean) / std).to(param.device, param.dtype)

    def logits(self, images: Tensor) -> Tensor:
        """``(B, C)`` float32 logits of images in [0, 1]."""
        adapter = find_adapter(self.model)
        return adapter.logits(adapter.call(self.model, self.pixel_values(images))).float()


def _nearest(step: Any) -> Any:
    """A copy of a torchvision resize step that interpolates with nearest neighbours (for masks)."""
    from torchvision.transforms import InterpolationMode

    if not hasattr(step, "interpolation"):
        return step
    step = copy.copy(step)
    step.interpolation = InterpolationMode.NEAREST
    return step


def _from_torchvision(model: nn.Module, pipeline: Any) -> Classifier:
    """Split a torchvision ``Compose`` (timm's ``create_transform``) at its ``Normalize``."""
    from torchvision.transforms import Compose, Normalize

    steps = list(pipeline.transforms)
    norms = [s for s in steps if isinstance(s, Normalize)]
    geometry = [s for s in steps if not isinstance(s, Normalize)]
    mean = torch.as_tensor(norms[0].mean, dtype=torch.float32) if norms else torch.zeros(3)
    std = torch.as_tensor(norms[0].std, dtype=torch.float32) if norms else torch.ones(3)
    to_mask = Compose([_nearest(s) for s in geometry])
    return Classifier(model, Compose(geometry), lambda m: to_mask(m)[0] > 0.5, mean, std)


def load_classifier(spec: str, pretrained: bool = False, model_kwargs: dict | None = None) -> Classifier:
    """Load ``timm:<name>``, an embedded model, or a Hugging Face id / directory, with its preprocessing.

    Args:
        spec: the model (see the module docstring).
        pretrained: timm only: load timm's pretrained weights (otherwise random weights).
        model_kwargs: timm only: passed to ``timm.create_model`` (e.g. ``num_classes``, ``img_size``).

    Returns:
        A :class:`Classifier` in eval mode on the CPU, float32.
    """
    from torchvision import transforms

    from ..models import zoo

    model_kwargs = dict(model_kwargs or {})
    if spec.startswith("timm:"):
        import timm
        from timm.data import create_transform, resolve_data_config

        if not timm.is_model(spec[5:]):
            raise UsageError(f"timm has no model {spec[5:]!r}; list the names with timm.list_models('*vit*').")
        try:
            model = timm.create_model(spec[5:], pretrained=pretrained, **model_kwargs).eval()
        except OSError as error:  # the pretrained weights cannot be fetched or read
            why = " ".join(str(error).split())[:200]
            raise UsageError(
                f"cannot load the weights of {spec} ({why}); connect to the Hugging Face hub once, "
                "or drop --pretrained."
            ) from error
        size = model_kwargs.get("img_size")
        overrides = {"input_size": (3, *((size, size) if isinstance(size, int) else size))} if size else {}
        return _from_torchvision(model, create_transform(**resolve_data_config(overrides, model=model)))
    if model_kwargs:
        raise UsageError("--model-kwargs applies to timm:<name> models only; drop it or use timm:<name>.")
    if spec in zoo.EMBEDDED:
        card = zoo.EMBEDDED[spec]
        if card.arch != "timm-vit":
            raise UsageError(f"{spec!r} is not an image classifier; the harness takes shapes-vit or your own model.")
        size = (card.image_size, card.image_size)
        pipeline = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])  # shapes-vit reads [0, 1]
        return _from_torchvision(zoo.load(spec), pipeline)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        with zoo.offline_unless_reachable():
            model = AutoModelForImageClassification.from_pretrained(spec).eval()
            processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError) as error:  # no such directory or id, or not an image classifier
        why = " ".join(str(error).split())[:200]
        raise UsageError(
            f"cannot load --model {spec!r} as a Hugging Face image classifier ({why}); pass timm:<name>, "
            f"an embedded model ({', '.join(zoo.EMBEDDED)}), a directory saved with save_pretrained or a hub id."
        ) from error

    def transform(image: Image.Image) -> Tensor:
        return processor(image, do_normalize=False, return_tensors="pt")["pixel_values"][0]  # (3, H, W)

    def mask_transform(mask: Image.Image) -> Tensor:
        out = processor(mask.convert("RGB"), do_normalize=False, resample=Image.NEAREST, return_tensors="pt")
        return out["pixel_values"][0, 0] > 0.5  # (H, W)

    normalizes = getattr(processor, "do_normalize", False)
    mean = torch.as_tensor(processor.image_mean if normalizes else (0.0, 0.0, 0.0), dtype=torch.float32)
    std = torch.as_tensor(processor.image_std if normalizes else (1.0, 1.0, 1.0), dtype=torch.float32)
    return Classifier(model, transform, mask_transform, mean, std)


# ----------------------------------------------------------------------------- methods


def _import_callable(spec: str) -> tuple[str, MapFn]:
    """``name=module:function`` -> (name, function)."""
    name, sep, target = spec.partition("=")
    module, colon, attr = target.partition(":")
    if not (sep and colon and name and module and attr):
        raise UsageError(f"--method takes name=module:function, got {spec!r}.")
    try:
        return name, getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(
            f"--method {spec!r}: {error}; put {module}.py on PYTHONPATH (or in the current directory)."
        ) from error


def resolve_methods(names: Sequence[str], custom: Sequence[str]) -> dict[str, MapFn | None]:
    """Method name -> None for recorded methods and ``random``, else the callable."""
    methods: dict[str, MapFn | None] = {}
    for name in names:
        if name in METHODS or name == "random":
            methods[name] = None
        elif name == "peers":
            methods.update(PEERS)
        elif name in PEERS:
            methods[name] = PEERS[name]
        else:
            known = [*method_names(ablations=True), "random", "peers", *PEERS]
            raise UsageError(f"unknown method {name!r}; choose from {known} or pass --method name=module:function.")
    methods.update(_import_callable(spec) for spec in custom)
    return methods


class _Targets(NamedTuple):
    """A batch of images and the classes explained in it."""

    pixel_values: Tensor  # (B, 3, H, W) the model's normalised input
    targets: Tensor  # (B, K)
    seed: int  # seeds the batch's random maps


def _rows(clf: Classifier, methods: dict[str, MapFn | None], start_layer: int) -> dict[str, Row]:
    """Every method as a row reading ``(B, K, h, w)`` float32 maps on the CPU from a batch (:class:`_Targets`).

    Recorded methods read the batch's one recording; ``random`` draws uniform patch maps from a
    generator seeded with the batch's seed (cost: none); a callable runs once per target column.
    """
    device = next(clf.model.parameters()).device

    def method(rec, _, name: str) -> Tensor:
        return rec.explanation(name, start_layer).grid_relevance().float().cpu()  # (B, K, h, w)

    def random(_, b: _Targets) -> Tensor:
        grid = find_adapter(clf.model).layout(clf.model, b.pixel_values).segment("image").grid
        return torch.rand(*b.targets.shape, *grid, generator=torch.Generator().manual_seed(b.seed))

    def per_target(fn: MapFn) -> Row:
        def relevance(_, b: _Targets) -> Tensor:
            columns = [fn(clf.model, b.pixel_values, b.targets[:, k].to(device)) for k in range(b.targets.shape[1])]
            return torch.stack([m.float().cpu() for m in columns], dim=1)  # (B, K, h, w)

        return Row(relevance)

    recorded = method_rows([m for m in methods if m in METHODS], method)
    return {
        name: recorded[name] if name in recorded else Row(random, cost="none") if fn is None else per_target(fn)
        for name, fn in methods.items()
    }


def _recorder(clf: Classifier, methods: dict[str, MapFn | None]) -> Callable[[_Targets], Any]:
    """The batch's one recording (one forward, one vectorised backward for its K targets), if a method reads it."""
    device = next(clf.model.parameters()).device
    if not any(m in METHODS for m in methods):
        return lambda b: None
    return lambda b: record(clf.model, b.pixel_values, b.targets.to(device))


def drop_unavailable(clf: Classifier, methods: dict[str, MapFn | None], image: Tensor) -> dict[str, MapFn | None]:
    """Run every method once on one ``(3, H, W)`` image; leave out (with a warning) those that cannot run here.

    A peer signals that with :class:`~gae_workbook.evaluation.peers.PeerUnavailableError` (library
    missing, model family unsupported); any other error is a bug and propagates. Every rank tries the
    same image, so all ranks keep the same methods.
    """
    pixel_values = clf.pixel_values(image[None])  # (1, 3, H, W)
    with torch.no_grad():
        target = clf.logits(image[None].to(pixel_values.device)).argmax(-1)  # (1,)
    kept = warm_up(_Targets(pixel_values, target[:, None].cpu(), 0), _recorder(clf, methods), _rows(clf, methods, 0))
    return {name: fn for name, fn in methods.items() if name in kept}


def explain_batch(
    clf: Classifier,
    images: Tensor,
    targets: Tensor,
    methods: dict[str, MapFn | None],
    start_layer: int = 0,
    seed: int = 0,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Maps of every method for K target classes per image, and the seconds each method cost.

    All :data:`~gae_utils.methods.METHODS` come from one recording (one forward, one vectorised
    backward for the K targets); each is charged that recording plus its own propagation. Seconds
    are :func:`~gae_workbook.evaluation.protocol.cost_clock`'s (process CPU time on the CPU).

    Args:
        clf: the classifier.
        images: ``(B, 3, H, W)`` in [0, 1].
        targets: ``(B, K)`` classes to explain.
        methods: from :func:`resolve_methods`.
        start_layer: first layer aggregated by GAE and rollout.
        seed: seeds the ``random`` maps.

    Returns:
        ``{method: (B, K, h, w) float32 on the CPU}`` (any h, w) and ``{method: seconds}``.
    """
    device = next(clf.model.parameters()).device
    batch = _Targets(clf.pixel_values(images), targets, seed)
    return protocol.explain_batch(batch, _recorder(clf, methods), _rows(clf, methods, start_layer), cost_clock(device))


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Plan:
    """What one run scores: the metric sums it keeps per method.

    Attributes:
        methods: method names, in table order.
        classes: explained classes: ``("pred",)`` or ``("pred", "gt")`` (segmentation and deletion
            read the first, the predicted class).
        protocols: subset of :data:`PROTOCOLS`.
        curve_steps: number of deletion/insertion steps (fractions ``0, 1/n, ..., 1``).
        num_classes: the model's classes: the size of the prediction and label histograms.
    """

    methods: tuple[str, ...]
    classes: tuple[str, ...]
    protocols: tuple[str, ...]
    curve_steps: int = 16
    num_classes: int = 0

    @property
    def fractions(self) -> list[float]:
        return [i / self.curve_steps for i in range(self.curve_steps + 1)]

    def sizes(self) -> dict[str, int]:
        """Sum name -> length: ``<method>|<sum>``, and the model's ``|clean`` (images, correct),
        ``|predicted`` and ``|labels`` (images per class)."""
        per_method = {"n": 1, "seconds": 1, "blank": 1}
        if "perturbation" in self.protocols:
            per_method.update(
                {f"perturbation_{c}_{s}": len(PERTURBATION_STEPS) for c in self.classes for s in ("pos", "neg")}
            )
        if "segmentation" in self.protocols:
            per_method["segmentation"] = 8
        if "deletion" in self.protocols:
            per_method.update(deletion=len(self.fractions), insertion=len(self.fractions))
        model = {"|clean": 2, "|predicted": self.num_classes, "|labels": self.num_classes}
        return {f"{m}|{k}": size for m in self.methods for k, size in per_method.items()} | model

    def zeros(self) -> dict[str, Tensor]:
        return {key: torch.zeros(size, dtype=torch.float64) for key, size in self.sizes().items()}


def _blur(images: Tensor) -> Tensor:
    """RISE's insertion start: a Gaussian blur (kernel 11, sigma 5)."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])


def evaluate_batch(
    clf: Classifier,
    images: Tensor,
    labels: Tensor | None,
    masks: Tensor | None,
    plan: Plan,
    methods: dict[str, MapFn | None],
    start_layer: int = 0,
    seed: int = 0,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Metric sums of one batch for every method of ``plan``.

    Args:
        clf: the classifier.
        images: ``(B, 3, H, W)`` in [0, 1], on the model's device.
        labels: ``(B,)`` ground-truth classes, or None.
        masks: ``(B, H, W)`` bool foreground, or None.
        plan: what to score.
        methods: from :func:`resolve_methods`.
        start_layer: first layer aggregated by GAE and rollout.
        seed: seeds the ``random`` maps.

    Returns:
        ``(sums, maps)``: sums keyed as :meth:`Plan.sizes`; ``{method: (B, K, H, W)}`` normalised
        pixel maps (K follows ``plan.classes``).
    """
    with torch.no_grad():
        predicted = clf.logits(images).argmax(-1).cpu()  # (B,)
    correct_clean = float((predicted == labels).sum()) if labels is not None else 0.0
    sums = {
        "|clean": torch.tensor([float(images.shape[0]), correct_clean], dtype=torch.float64),
        "|predicted": torch.bincount(predicted, minlength=plan.num_classes)[: plan.num_classes].double(),
        "|labels": torch.zeros(plan.num_classes, dtype=torch.float64),
    }
    if labels is not None:
        sums["|labels"] = torch.bincount(labels.cpu(), minlength=plan.num_classes)[: plan.num_classes].double()
    explained = torch.stack([predicted if c == "pred" else labels for c in plan.classes], dim=1)  # (B, K)
    maps, seconds = explain_batch(clf, images, explained, methods, start_layer, seed)
    reference = labels if labels is not None else predicted  # accuracy is measured against the label
    size = tuple(images.shape[-2:])
    batch = images.shape[0]

    def correct(x: Tensor, t: Tensor) -> Tensor:
        return clf.logits(x).argmax(-1) == t.to(x.device)

    def probability(x: Tensor, t: Tensor) -> Tensor:
        return clf.logits(x).softmax(-1).gather(1, t.to(x.device)[:, None])[:, 0]

    pixel_maps = {}
    for name in plan.methods:
        pixels = upsample_maps(maps[name], size)  # (B, K, H, W)
        pixel_maps[name] = normalize_maps(pixels)
        sums[f"{name}|n"] = torch.tensor([float(batch)], dtype=torch.float64)
        sums[f"{name}|blank"] = blank_maps(maps[name])  # constant maps among the B * K
        sums[f"{name}|seconds"] = torch.tensor([seconds[name]], dtype=torch.float64)
        for k, cls in enumerate(plan.classes):
            if "perturbation" not in plan.protocols:
                break
            for sign, positive in (("pos", True), ("neg", False)):
                accuracy = perturbation_curve(correct, images, pixels[:, k], reference, positive, batch_size=batch)
                sums[f"{name}|perturbation_{cls}_{sign}"] = (accuracy.double() * batch).round()  # (S,) counts
        if "segmentation" in plan.protocols:
            sums[f"{name}|segmentation"] = segmentation_counts(
                pixels[:, 0], masks.cpu(), "mean", ap_over_both_classes=True
            )
        if "deletion" in plan.protocols:
            blank = clf.mean.to(images)[None, :, None, None].expand_as(images)  # zero after normalisation
            deletion = replacement_curve(probability, images, blank, pixels[:, 0], predicted, plan.fractions)
            insertion = replacement_curve(probability, _blur(images), images, pixels[:, 0], predicted, plan.fractions)
            sums[f"{name}|deletion"], sums[f"{name}|insertion"] = deletion.sum(0), insertion.sum(0)  # (S,)
    return sums, pixel_maps


def summarize(totals: dict[str, Tensor], plan: Plan) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list]]]:
    """Metrics and mean curves from summed :func:`evaluate_batch` outputs.

    Returns:
        ``({method: {metric: value}}, {method: {curve: [values]}})``.
    """
    results, curves = {}, {}
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    for name in plan.methods:
        n = float(totals[f"{name}|n"][0])
        row: dict[str, float] = {}
        curve: dict[str, list] = {}
        for cls in plan.classes if "perturbation" in plan.protocols else ():
            for sign in ("pos", "neg"):
                accuracy = totals[f"{name}|perturbation_{cls}_{sign}"] / n
                row[f"{sign}_auc_{cls}"] = perturbation_auc(accuracy)
                curve[f"perturbation_{cls}_{sign}"] = accuracy.tolist()
        if "segmentation" in plan.protocols:
            row.update(segmentation_from_counts(totals[f"{name}|segmentation"]))
        for kind in ("deletion", "insertion") if "deletion" in plan.protocols else ():
            mean = totals[f"{name}|{kind}"] / n
            row[f"{kind}_auc"] = float(trapezoid(mean.numpy(), plan.fractions))
            curve[kind] = mean.tolist()
        row["s_per_image"] = float(totals[f"{name}|seconds"][0]) / n
        row["images"] = n
        results[name], curves[name] = row, curve
    return results, curves


def format_results(results: dict[str, dict[str, float]], blank: dict[str, float] | None = None) -> str:
    """A fixed-width table, best value of each metric marked with ``*``.

    ``random`` and every method with a blank map (``blank``: ``{method: blank maps}``) are never
    marked: a constant map wins threshold-at-mean segmentation on mostly-background images.
    A ``blank_maps`` column is shown when ``blank`` is given.
    """
    metrics = [k for k in next(iter(results.values())) if k in HIGHER_IS_BETTER]
    excluded = unstarred(blank or {})
    lines = ["method".ljust(22) + "".join(k.rjust(15) for k in metrics) + ("blank_maps".rjust(12) if blank else "")]
    for method, row in results.items():
        cells = []
        for k in metrics:
            rivals = [r[k] for m, r in results.items() if m not in excluded]
            best = (max if HIGHER_IS_BETTER[k] else min)(rivals) if len(set(rivals)) > 1 else None
            cells.append((f"{row[k]:.4g}" + ("*" if row[k] == best and method not in excluded else " ")).rjust(15))
        count = f"{int(blank.get(method, 0))}".rjust(12) if blank else ""
        lines.append(method.ljust(22) + "".join(cells) + count)
    never = "random and methods with blank maps" if blank else "random"
    lines.append(f"AUCs: pos/deletion lower is better, neg/insertion higher; * marks the best ({never} excluded)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data and shards


class Unreadable(NamedTuple):
    """An image that could not be read: where it is, and the error."""

    source: str
    error: str

    def message(self) -> str:
        return (
            f"cannot read image {self.source} ({self.error}); repair or remove the file, or pass "
            "--skip-bad-images to score the other images (the skipped ones are listed in results.json)."
        )


class _Prepared(Dataset):
    """Samples -> (image (3, H, W) in [0, 1], label, mask (H, W) bool or empty), or :class:`Unreadable`.

    ``label_of[label]`` is the model class of a dataset label (None: the same index).
    """

    def __init__(self, data: Any, clf: Classifier, label_of: list[int] | None = None):
        self.data, self.clf, self.label_of = data, clf, label_of

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor] | Unreadable:
        try:
            sample: Sample = self.data[index]
            image = self.clf.transform(sample.image)
        except OSError as error:  # PIL: a truncated file, an unidentified image (UnidentifiedImageError)
            return Unreadable(self.data.source(index), f"{type(error).__name__}: {error}")
        label = self.label_of[sample.label] if self.label_of is not None and sample.label >= 0 else sample.label
        if sample.mask is None:
            return image, label, torch.zeros(0, dtype=torch.bool)
        mask = self.clf.mask_transform(Image.fromarray(sample.mask.astype(np.uint8) * 255))
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"mask of {sample.name} became {tuple(mask.shape)}, image {tuple(image.shape[-2:])}.")
        return image, label, mask


def _collate(items: list) -> tuple[Any, list[Unreadable]]:
    """A batch of the readable items (None if there is none) and the unreadable ones."""
    from torch.utils.data import default_collate

    bad = [item for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    return (default_collate(good) if good else None), bad


def shards_of(num_items: int, shard_size: int, rank: int, world: int) -> list[tuple[int, range]]:
    """Rank ``rank``'s shards: ``(id, item indices)`` for ids ``rank, rank + world, ...`` (disjoint, complete)."""
    ids = range(rank, (num_items + shard_size - 1) // shard_size, world)
    return [(s, range(s * shard_size, min((s + 1) * shard_size, num_items))) for s in ids]


def _write_json(path: Path, payload: dict) -> None:
    """Atomic write (a killed process leaves no half-written shard)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda but torch sees no CUDA device; use --device cpu (or a CUDA build of torch)."
            )
        torch.cuda.set_device(local)
    where = torch.device(f"cuda:{local}") if device == "cuda" else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, where


def _dtype_deviation(
    clf: Classifier,
    low: Classifier,
    batch: tuple[Tensor, Tensor | None, Tensor | None],
    plan: Plan,
    methods: dict,
    args,
) -> dict[str, dict[str, float]]:
    """Per method: max |map difference| (normalised maps) and metric differences, low precision - float32."""
    out = {}
    sums32, maps32 = evaluate_batch(clf, *batch, plan, methods, args.start_layer, args.seed)
    sums_lp, maps_lp = evaluate_batch(low, *batch, plan, methods, args.start_layer, args.seed)
    res32, res_lp = summarize(sums32, plan)[0], summarize(sums_lp, plan)[0]
    for name in plan.methods:
        row = {"max_abs_map_diff": float((maps32[name] - maps_lp[name]).abs().max())}
        row.update({k: res_lp[name][k] - v for k, v in res32[name].items() if k not in ("s_per_image", "images")})
        out[name] = row
    return out


# ----------------------------------------------------------------------------- CLI


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (else argparse's one-line error, exit code 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its error: "invalid integer value"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The harness's command line (``--help`` shows every default)."""
    parser = Parser(
        prog="python -m gae_workbook.harness",
        description="Explain and score explanation methods on your image classifier and images; prints a table, "
        "warnings, and writes <out>/results.json and <out>/figures/ (docs/evaluation.md).",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--model", required=True, help="timm:<name>, a Hugging Face id or directory, or shapes-vit")
    add("--pretrained", action="store_true", help="timm: load timm's pretrained weights (else random weights)")
    add(
        "--model-kwargs",
        type=json.loads,
        default=None,
        help="timm: JSON for create_model, e.g. '{\"num_classes\": 10}'",
    )
    add(
        "--data",
        required=True,
        help="an ImageFolder tree (or flat folder), a save_to_disk directory or gtsegs_ijcv.mat",
    )
    add("--masks", default=None, help="folder of <stem>.png masks for a folder of images")
    add(
        "--split", default=None, help="split of a saved DatasetDict (none given: validation if present, else the first)"
    )
    add(
        "--label-map",
        type=json.loads,
        default=None,
        help='JSON: dataset class -> model class index or name, e.g. \'{"cat": 281, "dog": "golden retriever"}\' '
        "(none given: classes are matched by name where the model names them)",
    )
    add("--n", type=_at_least(1), default=None, help="score only the first n images (none given: all)")
    add(
        "--methods",
        nargs="+",
        default=[*method_names(), "random"],
        help="library methods, 'random', peer names, 'peers'",
    )
    add("--method", action="append", default=[], help="a callable: name=module:function (repeatable)")
    add("--protocols", nargs="+", default=None, choices=PROTOCOLS, help="none given: every protocol the data allows")
    add("--no-gt", action="store_true", help="explain the predicted class only (skip the gt rows)")
    add("--curve-steps", type=_at_least(1), default=16, help="deletion/insertion steps")
    add("--start-layer", type=int, default=0, help="first layer aggregated by GAE and rollout")
    add("--batch-size", type=_at_least(1), default=16, help="images per batch (a batch never straddles two shards)")
    add("--shard-size", type=_at_least(1), default=256, help="images per shard (the unit of resumption)")
    add("--workers", type=_at_least(0), default=0, help="DataLoader workers per process")
    add("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per torchrun process (LOCAL_RANK)")
    add(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="precision of the scored model; a lower one also reports its deviation from float32 on the first batch",
    )
    add("--seed", type=int, default=0, help="seeds random weights and the random maps")
    add("--out", type=Path, required=True, help="run directory: shards/, results.json and figures/")
    add(
        "--threads",
        type=_at_least(1),
        default=1,
        help="CPU threads per process (the same in every launch: same numbers)",
    )
    add("--figures", type=_at_least(0), default=8, help="example figure per method of the first N images (0: none)")
    add("--skip-bad-images", action="store_true", help="leave out unreadable images (listed in results.json)")
    add("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _plan(args: argparse.Namespace, data: Any, methods: dict, num_classes: int = 0) -> Plan:
    available = [p for p in PROTOCOLS if p != "segmentation" or data.has_masks]
    protocols = tuple(args.protocols or available)
    if "segmentation" in protocols and not data.has_masks:
        raise UsageError(f"{args.data} has no masks: drop 'segmentation' or pass --masks.")
    classes = ("pred", "gt") if data.has_labels and not args.no_gt else ("pred",)
    return Plan(tuple(methods), classes, protocols, args.curve_steps, num_classes)


def _fingerprint(args: argparse.Namespace, plan: Plan) -> str:
    """Identifies what a shard's sums depend on, so that a rerun never mixes two configurations."""
    keys = ("model", "pretrained", "model_kwargs", "data", "masks", "split", "method", "start_layer", "batch_size")
    keys += ("shard_size", "dtype", "seed", "threads", "label_map")
    config = {k: str(getattr(args, k)) for k in keys} | {"plan": repr(plan)}
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _saved_shards(shard_dir: Path, fingerprint: str, shards: list[tuple[int, range]]) -> dict[int, dict[str, Tensor]]:
    """The sums of the ``shards`` already on disk; refuses any written by another configuration.

    Every rank reads every shard of the run, so all ranks refuse together, before any work.
    """
    saved = {}
    for shard, indices in shards:
        path = shard_dir / f"{shard:06d}.json"
        if path.exists():
            payload = json.loads(path.read_text())
            if payload["fingerprint"] != fingerprint or payload["items"] != [indices.start, indices.stop]:
                raise UsageError(f"{path} was written by another configuration; use a new --out or delete {shard_dir}.")
            saved[shard] = {k: torch.tensor(v, dtype=torch.float64) for k, v in payload["sums"].items()}
    return saved


def _sum_shards(per_shard: dict[int, dict[str, Tensor]], num_shards: int, plan: Plan, world: int, device) -> dict:
    """The metric sums over every shard of the run, added in shard order whatever the launch.

    Each rank fills the rows of its own shards in a ``(shards, sums)`` table; the all-reduce adds
    zeros to every other entry (exact), and the rows are then added in shard order, so 1 and N
    processes add the same numbers in the same order.
    """
    sizes = plan.sizes()
    keys = sorted(sizes)
    table = torch.zeros(num_shards, sum(sizes.values()), dtype=torch.float64)
    for shard, sums in per_shard.items():
        table[shard] = torch.cat([sums[k] for k in keys])
    if world > 1:
        table = table.to(device)
        dist.all_reduce(table)  # one rank wrote each row: the sum is exact
        table = table.cpu()
    total = torch.zeros(table.shape[1], dtype=torch.float64)
    for row in table:
        total += row
    offsets = np.cumsum([0] + [sizes[k] for k in keys])
    return {k: total[offsets[i] : offsets[i + 1]] for i, k in enumerate(keys)}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the harness; returns the results (rank 0) or None (other ranks).

    Raises:
        UsageError: the command line describes no run that can be made (the message says why).
    """
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # the same in every launch: torchrun gives each worker one thread
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def command_line(argv: list[str] | None = None) -> None:
    """:func:`main` as a command: a user error ends the process with one line on stderr and exit code 2.

    User errors are :class:`UsageError` (what the command line asks cannot be done, an unreadable
    image) and a model no adapter supports (the first sentence of its message); anything else is a bug
    and keeps its traceback.
    """
    try:
        main(argv)
    except (UsageError, UnsupportedModelError) as error:
        text = str(error) if isinstance(error, UsageError) else first_sentence(str(error))
        print(f"gae_workbook.harness: error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(2)


def _open_data(args: argparse.Namespace) -> Any:
    """:func:`~.datasets.open_data`, its errors (a missing path, a wrong layout) as :class:`UsageError`."""
    try:
        return open_data(args.data, args.masks, args.split)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error


def _first_image(prepared: _Prepared, num_items: int, skip: bool) -> Tensor:
    """The first readable ``(3, H, W)`` image (an unreadable one is an error unless ``skip``)."""
    for index in range(num_items):
        item = prepared[index]
        if not isinstance(item, Unreadable):
            return item[0]
        if not skip:
            raise UsageError(item.message())
    raise UsageError(f"none of the {num_items} images of {prepared.data.source(0)}... can be read.")


def _label_mapping(
    args: argparse.Namespace, data: Any, model_names: list[str], num_classes: int, num_items: int
) -> tuple[list[int] | None, str | None]:
    """The model class of each dataset label (:func:`~.checks.match_labels`) and a warning; checks the range.

    Raises:
        UsageError: a label is beyond the model's classes, or ``--label-map`` is wrong.
    """
    if not data.has_labels:
        if args.label_map is not None:
            raise UsageError(f"--label-map needs labelled data, and {args.data} has no labels; drop it.")
        return None, None
    labels = [label for label in data.labels()[:num_items] if label >= 0]  # -1: no label (refused later)
    names = data.class_names
    if not names and args.label_map is not None:  # labels without names: the map's keys are label indices
        names = [str(i) for i in range(max(labels, default=-1) + 1)]
    mapping, warning = match_labels(names, model_names, num_classes, args.label_map)
    top = max((mapping[label] if mapping else label for label in labels), default=-1)
    if top >= num_classes:
        raise UsageError(
            f"the labels of {args.data} reach class {top}, but the model has {num_classes} classes; map the "
            f"dataset's classes {names or '(unnamed)'} to the model's with --label-map, or use a model with "
            "these classes."
        )
    return mapping, warning


def _class_name(index: int, model_names: list[str]) -> str:
    return short_name(model_names[index]) if index < len(model_names) else f"class {index}"


def _example_figures(
    clf: Classifier,
    prepared: _Prepared,
    num_items: int,
    methods: dict[str, MapFn | None],
    args: argparse.Namespace,
    names: list[str],
) -> dict[str, str]:
    """``<out>/figures/<method>.png``: the first ``--figures`` readable images over each method's maps.

    The maps are those the protocols score: the predicted class's map, upsampled to the pixels and
    min-max normalised per map. Returns ``{method: path}``.
    """
    items = []
    for index in range(num_items):
        item = prepared[index]
        if not isinstance(item, Unreadable):
            items.append(item)
        if len(items) == args.figures:
            break
    images = torch.stack([image for image, _, _ in items]).to(next(clf.model.parameters()).device)  # (N, 3, H, W)
    with torch.no_grad():
        predicted = clf.logits(images).argmax(-1).cpu()  # (N,)
    maps, _ = explain_batch(clf, images, predicted[:, None], methods, args.start_layer, args.seed)
    titles = []
    for (_, label, _), pred in zip(items, predicted.tolist()):
        given = f"\nlabel: {_class_name(int(label), names)}" if label >= 0 else ""
        titles.append(f"pred: {_class_name(pred, names)}{given}")
    written = {}
    for name in methods:
        pixels = normalize_maps(upsample_maps(maps[name][:, 0], tuple(images.shape[-2:])))  # (N, H, W)
        blank = [bool(blank_maps(m)) for m in maps[name][:, 0]]
        path = args.out / "figures" / (re.sub(r"[^\w.-]", "_", name) + ".png")
        label = METHODS[name].label if name in METHODS else name  # how figures name a library method
        written[name] = str(example_figure(images.float().cpu(), pixels, titles, label, path, blank))
    return written


def _run(args: argparse.Namespace) -> dict[str, Any] | None:
    from tqdm.auto import tqdm

    started, cpu_started = time.perf_counter(), time.process_time()
    rank, world, device = _distributed(args.device)
    torch.manual_seed(args.seed)  # random-weight models must be the same model on every rank
    clf = load_classifier(args.model, args.pretrained, args.model_kwargs)
    clf = replace(clf, model=clf.model.to(device))
    dtype = getattr(torch, args.dtype)
    low = replace(clf, model=copy.deepcopy(clf.model).to(dtype)) if dtype != torch.float32 else None
    data = _open_data(args)
    num_items = min(args.n or len(data), len(data))
    prepared = _Prepared(data, clf)
    first = _first_image(prepared, num_items, args.skip_bad_images).to(device)
    with torch.no_grad():
        num_classes = clf.logits(first[None]).shape[-1]
    names = model_class_names(clf.model)
    prepared.label_of, label_warning = _label_mapping(args, data, names, num_classes, num_items)
    methods = drop_unavailable(clf, resolve_methods(args.methods, args.method), first)
    plan = _plan(args, data, methods, num_classes)
    fingerprint = _fingerprint(args, plan)
    shard_dir = args.out / "shards"
    every_shard = shards_of(num_items, args.shard_size, 0, 1)
    saved = _saved_shards(shard_dir, fingerprint, every_shard)
    shard_dir.mkdir(parents=True, exist_ok=True)

    def batches(indices: range) -> DataLoader:
        return DataLoader(
            Subset(prepared, list(indices)), batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate
        )

    def to_device(images: Tensor, labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if data.has_labels and int(labels.min()) < 0:
            raise UsageError("some images have no label; give every image one, or none.")
        return images.to(device), (labels if data.has_labels else None), (masks if data.has_masks else None)

    deviation = None
    if low is not None and rank == 0:
        first_batch = next(batch for batch, _ in batches(range(num_items)) if batch is not None)
        deviation = _dtype_deviation(clf, low, to_device(*first_batch), plan, methods, args)
    model_under_test = low or clf
    del clf

    per_shard: dict[int, dict[str, Tensor]] = {}
    done = skipped = 0
    mine = shards_of(num_items, args.shard_size, rank, world)
    bar = tqdm(
        total=sum(len(r) for _, r in mine), desc=f"rank {rank}", unit="img", disable=rank != 0 or args.no_progress
    )
    for shard, indices in mine:
        if shard in saved:
            per_shard[shard] = saved[shard]
            skipped += 1
            bar.update(len(indices))
            continue
        sums = plan.zeros()
        unreadable: list[Unreadable] = []
        for b, (batch, bad) in enumerate(batches(indices)):
            if bad and not args.skip_bad_images:
                raise UsageError(bad[0].message())
            unreadable += bad
            if batch is not None:
                batch_sums, _ = evaluate_batch(
                    model_under_test,
                    *to_device(*batch),
                    plan,
                    methods,
                    args.start_layer,
                    args.seed + shard * 100_003 + b,
                )
                for key, value in batch_sums.items():
                    sums[key] += value
            bar.update(len(bad) + (len(batch[0]) if batch is not None else 0))
        payload = {"fingerprint": fingerprint, "items": [indices.start, indices.stop], "skipped": unreadable}
        _write_json(shard_dir / f"{shard:06d}.json", payload | {"sums": {k: v.tolist() for k, v in sums.items()}})
        per_shard[shard] = sums
        done += 1
    bar.close()

    totals = _sum_shards(per_shard, len(every_shard), plan, world, device)
    report = None
    if rank == 0:
        results, curves = summarize(totals, plan)
        wall = time.perf_counter() - started
        scored, correct = totals["|clean"].tolist()
        blank = {name: float(totals[f"{name}|blank"][0]) for name in plan.methods}
        unread = [
            entry
            for shard, _ in every_shard
            for entry in json.loads((shard_dir / f"{shard:06d}.json").read_text()).get("skipped", [])
        ]
        warnings = [label_warning] if label_warning else []
        warnings += prediction_warnings(
            totals["|predicted"],
            correct if data.has_labels else None,
            totals["|labels"] if data.has_labels else None,
            names,
        )
        metrics = [k for k in next(iter(results.values())) if k in HIGHER_IS_BETTER and k != "s_per_image"]
        warnings += tie_warnings(results, {"random"}, metrics)
        maps_per_method = scored * len(plan.classes)
        warnings += [
            f"blank maps: {name} gave {int(count)} of {int(maps_per_method)} constant maps (no ranking); it is "
            "never marked best, as thresholding at the mean rewards blank maps in segmentation."
            for name, count in blank.items()
            if count > 0 and name != "random"
        ]
        if unread:
            warnings.append(f"skipped {len(unread)} unreadable image(s): {', '.join(u[0] for u in unread)}.")
        figures = _example_figures(model_under_test, prepared, num_items, methods, args, names) if args.figures else {}
        report = {
            "model": args.model,
            "data": str(args.data),
            "split": data.split,
            "images": num_items,
            "images_scored": int(scored),
            "clean_accuracy": correct / scored if data.has_labels and scored else None,
            "predicted_classes": {  # "name (index)": names can repeat (ImageNet has two "crane"s)
                f"{_class_name(c, names)} ({c})" if names else f"class {c}": int(k)
                for c, k in enumerate(totals["|predicted"])
                if k
            },
            "label_map": (
                dict(zip(data.class_names or map(str, range(len(prepared.label_of))), prepared.label_of))
                if prepared.label_of is not None
                else None
            ),
            "skipped_images": [{"source": source, "error": error} for source, error in unread],
            "blank_maps": blank,
            "warnings": warnings,
            "figures": figures,
            "processes": world,
            "device": str(device.type),
            "dtype": args.dtype,
            "threads_per_process": torch.get_num_threads(),
            "cost": cost_note(device),  # how s_per_image is measured, with the threads per process
            "wall_s": wall,
            "rank0_cpu_s": time.process_time() - cpu_started,  # CPU seconds of rank 0, all its threads
            "shards_computed_by_rank0": done,
            "shards_resumed_by_rank0": skipped,
            "plan": {"classes": list(plan.classes), "protocols": list(plan.protocols), "curve_steps": plan.curve_steps},
            "results": results,
            "curves": curves,
            "dtype_deviation_first_batch": deviation,
        }
        split = f" (split {data.split!r})" if data.split else ""
        print(
            f"{args.model} on {args.data}{split}: {num_items} images, {world} process(es), {args.device}/{args.dtype}, "
            f"{wall:.1f} s ({num_items / wall:.2f} images/s; rank 0 resumed {skipped} shard(s))"
        )
        if report["clean_accuracy"] is not None:
            print(f"clean accuracy {report['clean_accuracy']:.1%} on the {int(scored)} scored images")
        if report["label_map"]:
            print(f"labels mapped to the model's classes: {report['label_map']}")
        print(format_results(results, blank))
        print(f"s_per_image in {cost_note(device)} per process")
        if deviation:
            worst = {m: round(d["max_abs_map_diff"], 4) for m, d in deviation.items()}
            print(f"{args.dtype} vs float32 on the first batch, max |map difference|: {worst}")
        for line in warnings:
            print(f"warning: {line}")
        if figures:
            print(f"example figures (the first {min(args.figures, int(scored))} images): {args.out / 'figures'}")
        _write_json(args.out / "results.json", report)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return report


if __name__ == "__main__":
    command_line()
