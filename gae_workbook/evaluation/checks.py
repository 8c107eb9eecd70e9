"""What the harness (:mod:`.harness`) checks and shows so that its table cannot mislead without a word.

A table of AUCs says nothing about the model or the maps behind it. This module adds what does:

* the **clean accuracy** of the model on the scored images and how its predictions spread over
  the classes: a model that predicts one class for every image makes every method tie in the
  perturbation tests (each curve is the share of that class), and a model at chance level makes
  the AUCs measure noise (:func:`prediction_warnings`);
* **label matching** (:func:`match_labels`): the dataset's class names (ImageFolder folders, a
  ``ClassLabel`` column) against the model's (``id2label``); ImageNet synset folders
  (``n01440764``) are mapped to the standard 1000-class index; names that match are mapped by
  name, names that do not are reported with the fix (``--label-map``);
* **blank maps** (:func:`blank_maps`): constant maps carry no ranking, yet thresholding at the mean
  (the segmentation protocol) scores an all-zero map as "all background", which wins on images
  that are mostly background. They are counted per method, and a method with blank maps is never
  marked best (:func:`unstarred`);
* an **example figure** per method (:func:`example_figure`): the first images and the maps that
  were scored, so that what the numbers describe can be seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = [
    "UsageError",
    "blank_maps",
    "model_class_names",
    "match_labels",
    "prediction_warnings",
    "tie_warnings",
    "unstarred",
    "short_name",
    "first_sentence",
    "example_figure",
]

SYNSET = re.compile(r"n\d{8}")
"""A WordNet synset id, the name of an ImageNet class folder."""

BLANK_TOLERANCE = 1e-6
"""A map is blank when its span (max - min) is at most this fraction of its largest magnitude."""


class UsageError(ValueError):
    """A run the command line describes cannot be made (unknown method, no masks, an ``--out`` of another run)."""


def blank_maps(maps: Tensor) -> Tensor:
    """How many of the maps ``(..., h, w)`` are blank: constant up to :data:`BLANK_TOLERANCE`.

    A constant map (all zeros, as attention Grad-CAM gives when every gradient is zero) ranks no
    pixel above another; min-max normalisation turns it into zeros.

    Returns:
        ``(1,)`` float64 count.
    """
    flat = maps.flatten(-2).double()  # (..., h*w)
    span = flat.amax(-1) - flat.amin(-1)  # (...)
    scale = flat.abs().amax(-1)  # (...)
    return (span <= BLANK_TOLERANCE * scale).sum().double().reshape(1)


def model_class_names(model: nn.Module) -> list[str]:
    """The model's class names, index by index, or ``[]`` when it names none.

    Hugging Face: ``config.id2label``, unless it holds the generic ``LABEL_<i>`` names.
    timm: ImageNet's descriptions for a 1000-class model (timm's ``ImageNetInfo``), else none.
    """
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if id2label:
        names = [str(id2label[i]) for i in sorted(id2label)]
        return [] if all(re.fullmatch(r"LABEL_\d+", n) for n in names) else names
    if getattr(model, "num_classes", None) == 1000 and hasattr(model, "pretrained_cfg"):
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return []


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def short_name(name: str) -> str:
    """The first of a label's synonyms (``"tench, Tinca tinca"`` -> ``"tench"``)."""
    return name.split(",")[0].strip()


def first_sentence(text: str) -> str:
    """The first sentence of an error message, whole, on one line (the detail of an outcome).

    A sentence ends at ``.``, ``!``, ``?`` or ``;`` followed by white space, or at a blank line; a
    message of one sentence is kept whole, however long.
    """
    text = text.strip()
    end = re.search(r"(?<!e\.g)(?<!i\.e)[.!?;](?=\s)|\n\s*\n", text)
    sentence = text[: end.start() + (text[end.start()] != "\n")] if end else text
    return " ".join(sentence.split())


def _synset_index(names: Sequence[str], num_classes: int) -> list[int] | None:
    """Standard ImageNet indices of synset folder names, if every name is one and the model has 1000 classes."""
    if num_classes != 1000 or not names or not all(SYNSET.fullmatch(n) for n in names):
        return None
    from timm.data import ImageNetInfo

    order = {synset: i for i, synset in enumerate(ImageNetInfo().label_names())}
    return [order[n] for n in names] if all(n in order for n in names) else None


def match_labels(
    data_names: Sequence[str],
    model_names: Sequence[str],
    num_classes: int,
    label_map: Mapping[str, Any] | None = None,
) -> tuple[list[int] | None, str | None]:
    """The model class of each dataset class, and a warning when they cannot be matched.

    Args:
        data_names: the dataset's class names, by label index (``[]``: the dataset names none).
        model_names: the model's class names, by class index (``[]``: the model names none).
        num_classes: the number of the model's classes.
        label_map: ``{dataset class name (or label index as text): model class index or name}``,
            from ``--label-map``; every dataset class must be in it.

    Returns:
        ``(mapping, warning)``: ``mapping[label]`` is the model class of dataset label ``label``
        (None: labels are model class indices as they are); ``warning`` says why the labels may
        not be the model's classes, and how to map them (None: nothing to say).

    Raises:
        UsageError: ``label_map`` leaves a dataset class out or names a class the model lacks.
    """
    by_name = {_normal(s): i for i, name in enumerate(model_names) for s in [name, *name.split(",")] if s.strip()}
    if label_map is not None:
        keys = list(data_names) or sorted(label_map, key=str)
        missing = [k for k in keys if k not in label_map]
        if missing:
            raise UsageError(f"--label-map has no entry for the dataset classes {missing}; map every one of {keys}.")
        mapping = []
        for key in keys:
            target = label_map[key]
            index = target if isinstance(target, int) else by_name.get(_normal(str(target)))
            if index is None or not 0 <= index < num_classes:
                raise UsageError(
                    f"--label-map sends {key!r} to {target!r}, which is not a class of the model "
                    f"(indices 0..{num_classes - 1}{', or one of its label names' if model_names else ''})."
                )
            mapping.append(index)
        return mapping, None
    if not data_names:
        return None, None
    synsets = _synset_index(data_names, num_classes)
    if synsets is not None:
        return (None if synsets == list(range(len(data_names))) else synsets), None
    if not model_names:
        return None, None
    found = [by_name.get(_normal(n)) for n in data_names]
    if all(i is not None for i in found):
        return (None if found == list(range(len(found))) else [int(i) for i in found if i is not None]), None
    unmatched = [n for n, i in zip(data_names, found) if i is None]
    shown = [short_name(n) for n in model_names[:12]] + (["..."] if len(model_names) > 12 else [])
    example = ", ".join(f'"{n}": {i}' for i, n in enumerate(data_names[:2]))
    return None, (
        f"label mismatch: the dataset's classes {list(data_names)} are not the model's labels "
        f"({len(model_names)}: {shown}); {unmatched} match none, so label i is read as the model's class i "
        f"and the gt rows and the clean accuracy compare unrelated classes; map them with "
        f"--label-map '{{{example}, ...}}' (dataset class -> model class index or name)."
    )


def prediction_warnings(
    predicted: Tensor, correct: float | None, label_counts: Tensor | None, class_names: Sequence[str]
) -> list[str]:
    """Warnings on the model's predictions over the scored images.

    Args:
        predicted: ``(C,)`` how many images were predicted as each class.
        correct: how many predictions equal the label (None: the data has no labels).
        label_counts: ``(C',)`` how many images carry each label (None: no labels).
        class_names: the names of the model's classes (``[]``: none).

    Returns:
        One line per problem: one class predicted for every image (every method then ties in the
        perturbation tests), or a clean accuracy at chance level.
    """
    images = int(predicted.sum())
    classes = predicted.nonzero().flatten().tolist()
    warnings = []
    if images > 1 and len(classes) == 1:
        c = classes[0]
        name = f"{c} ({short_name(class_names[c])})" if c < len(class_names) else str(c)
        warnings.append(
            f"single class: the model predicts class {name} for all {images} images, so every perturbation "
            "curve is the share of images labelled with it and all methods tie; check the weights "
            "(--pretrained?) and the preprocessing."
        )
    if correct is not None and label_counts is not None and images > 1 and len(classes) > 1:
        accuracy = correct / images
        majority = float(label_counts.max()) / images
        chance = max(1 / len(predicted), majority)
        if accuracy <= chance:
            warnings.append(
                f"chance level: clean accuracy {accuracy:.1%} is no better than chance ({chance:.1%}: "
                f"1/{len(predicted)} classes, or always answering the most frequent label); the AUCs then "
                "describe a model that does not recognise these images; check the model, --label-map and "
                "the preprocessing."
            )
    return warnings


def unstarred(blank: Mapping[str, float]) -> set[str]:
    """Methods never marked best: those with a blank map (and ``random``, the floor)."""
    return {m for m, count in blank.items() if count > 0} | {"random"}


def tie_warnings(results: Mapping[str, Mapping[str, float]], excluded: set[str], metrics: Sequence[str]) -> list[str]:
    """One line naming the metrics on which all (two or more) rated methods have the same value."""
    rated = [m for m in results if m not in excluded]
    if len(rated) < 2:
        return []
    tied = [k for k in metrics if len({results[m][k] for m in rated}) == 1]
    if not tied:
        return []
    return [f"all methods tie on {', '.join(tied)}: these columns cannot rank the methods ({', '.join(rated)})."]


def example_figure(
    images: Tensor, maps: Tensor, titles: Sequence[str], method: str, path: Path, blank: Sequence[bool] = ()
) -> Path:
    """Save the first images over the maps a method was scored with, as a PNG.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1].
        maps: ``(N, H, W)`` pixel maps, min-max normalised per map (what the protocols rank).
        titles: one per image (the classes, predicted and labelled).
        method: the method's name (figure title).
        path: the PNG to write.
        blank: per image, whether its map is blank (marked in its panel).

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay as they are

    n = images.shape[0]
    fig = Figure(figsize=(1.8 * n + 1.0, 4.2), layout="constrained")
    grid = fig.add_gridspec(2, n + 1, width_ratios=[1.0] * n + [0.08])
    axes = [[fig.add_subplot(grid[row, i]) for i in range(n)] for row in range(2)]
    heat = None
    for i in range(n):
        axes[0][i].imshow(images[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy())  # (H, W, 3)
        axes[0][i].set_title(titles[i], fontsize=8)
        heat = axes[1][i].imshow(maps[i].cpu().numpy(), cmap="inferno", vmin=0, vmax=1)  # greyscale-safe
        if i < len(blank) and blank[i]:
            axes[1][i].set_title("blank map", fontsize=8)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("image", fontsize=9)
    axes[1][0].set_ylabel(method, fontsize=9)
    fig.colorbar(heat, cax=fig.add_subplot(grid[1, n]), label="relevance\n(min-max per map)")
    fig.suptitle(f"{method}: relevance of the predicted class, as scored", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
