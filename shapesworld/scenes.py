"""ShapesWorld: a seeded procedural generator of small synthetic scenes with ground truth.

Each scene is a small RGB image holding a few coloured shapes (circles, squares,
triangles and crosses in red, green, blue or yellow) on a textured, low-saturation
background. Every object comes with its exact pixel mask, tight bounding box,
size, position and the jittered colour it was painted with, so the scenes can
be used to

* train tiny vision transformers offline (multi-label classification over the
  16 colour-shape classes), and
* score explanation maps against ground-truth masks,

and the scene record is rich enough to derive captions, VQA pairs, detection
targets and other toy tasks from it.

Generation is deterministic in ``(seed, index)``: scene ``i`` of a world is
always the same, regardless of which other scenes were generated before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
NUM_CLASSES: int = len(CLASS_NAMES)

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.2, 0.3, 0.9),
    "yellow": (0.9, 0.85, 0.15),
}
"""Base RGB colour of each colour name, before per-object jitter."""

COLOUR_JITTER: float = 0.07
"""Maximum per-channel deviation of an object's colour from its base colour."""

MIN_GAP: int = 2
"""Minimum gap in pixels between the bounding squares of two objects."""

_PLACEMENT_TRIES: int = 100  # rejection-sampling attempts per object


def class_index(colour: str, shape: str) -> int:
    """Returns the class index of a colour-shape pair.

    Args:
        colour: One of ``COLOURS``.
        shape: One of ``SHAPES``.

    Returns:
        ``COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)``, the index
        of ``f"{colour} {shape}"`` in ``CLASS_NAMES``.

    Raises:
        ValueError: If the colour or the shape is unknown.
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}, expected one of {COLOURS}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}, expected one of {SHAPES}")
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One shape painted into a scene.

    Pixel ``(row y, column x)`` covers the continuous square ``[x, x + 1) x [y, y + 1)``.
    With ``(cx, cy) = center`` and ``r = size / 2``, the object was drawn inside the
    bounding square ``[cx - r, cx + r) x [cy - r, cy + r)``, which lies fully inside
    the image.

    Attributes:
        shape: One of ``SHAPES``.
        colour: One of ``COLOURS``.
        rgb: The jittered colour actually painted, each channel in ``[0, 1]``.
        size: Side of the object's bounding square in pixels.
        center: ``(x, y)`` centre of the bounding square in pixels.
        box: ``(x0, y0, x1, y1)`` tight box around the mask; ``x1``, ``y1`` exclusive.
        mask: ``(H, W)`` bool, exactly the pixels painted with ``rgb`` (read-only).
    """

    shape: str
    colour: str
    rgb: tuple[float, float, float]
    size: int
    center: tuple[float, float]
    box: tuple[int, int, int, int]
    mask: np.ndarray  # (H, W) bool

    @property
    def label(self) -> int:
        """Class index of this object, see ``class_index``."""
        return class_index(self.colour, self.shape)

    @property
    def name(self) -> str:
        """Class name of this object, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated image together with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` float32 in ``[0, 1]`` (read-only).
        objects: The painted objects, at most one per class, with disjoint masks.
        index: Index of the scene within its world.
        seed: Seed of the world that generated it.
    """

    image: np.ndarray  # (H, W, 3) float32
    objects: tuple[SceneObject, ...]
    index: int
    seed: int

    @property
    def labels(self) -> np.ndarray:
        """``(16,)`` float32 multi-hot vector of the classes present."""
        labels = np.zeros(NUM_CLASSES, dtype=np.float32)  # (16,)
        for obj in self.objects:
            labels[obj.label] = 1.0
        return labels

    def mask_for(self, label: int) -> np.ndarray:
        """Returns the ground-truth mask of one class.

        Args:
            label: Class index in ``[0, 16)``.

        Returns:
            ``(H, W)`` bool mask of the object of that class, all False if the
            class is absent from the scene.

        Raises:
            ValueError: If ``label`` is not a valid class index.
        """
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
        for obj in self.objects:
            if obj.label == label:
                return obj.mask.copy()
        return np.zeros(self.image.shape[:2], dtype=bool)  # (H, W)


@dataclass
class ShapesBatch:
    """A batch of scenes as tensors.

    Attributes:
        images: ``(B, 3, H, W)`` float32 in ``[0, 1]``.
        labels: ``(B, 16)`` float32 multi-hot.
        masks: ``(B, 16, H, W)`` bool class masks, all False for absent classes.
        scenes: The scenes the tensors were built from.
    """

    images: torch.Tensor  # (B, 3, H, W)
    labels: torch.Tensor  # (B, 16)
    masks: torch.Tensor  # (B, 16, H, W)
    scenes: list[Scene]

    @classmethod
    def from_scenes(cls, scenes: list[Scene]) -> ShapesBatch:
        """Stacks scenes of equal image size into a batch.

        Args:
            scenes: At least one scene; all images must have the same size.

        Returns:
            The batch, holding the tensors and the scenes themselves.
        """
        images = np.stack([scene.image for scene in scenes]).transpose(0, 3, 1, 2)  # (B, 3, H, W)
        labels = np.stack([scene.labels for scene in scenes])  # (B, 16)
        height, width = scenes[0].image.shape[:2]
        masks = np.zeros((len(scenes), NUM_CLASSES, height, width), dtype=bool)  # (B, 16, H, W)
        for b, scene in enumerate(scenes):
            for obj in scene.objects:
                masks[b, obj.label] = obj.mask
        return cls(
            images=torch.from_numpy(np.ascontiguousarray(images)),
            labels=torch.from_numpy(labels),
            masks=torch.from_numpy(masks),
            scenes=list(scenes),
        )


@cache
def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Rasterises a shape filling a ``size x size`` bounding square.

    Args:
        shape: One of ``SHAPES``.
        size: Side of the bounding square in pixels.

    Returns:
        ``(size, size)`` bool mask (read-only, cached).
    """
    # Pixel centres relative to the centre of the square.
    offsets = np.arange(size) + 0.5 - size / 2  # (size,)
    dy, dx = offsets[:, None], offsets[None, :]  # (size, 1), (1, size)
    mask = np.zeros((size, size), dtype=bool)
    if shape == "circle":
        mask[:] = dx**2 + dy**2 <= (size / 2) ** 2
    elif shape == "square":
        # Smaller than the box, so that its area is comparable to the other shapes'.
        side = max(1, round(0.85 * size))
        start = (size - side) // 2
        mask[start : start + side, start : start + side] = True
    elif shape == "triangle":
        # Upright isosceles: the half-width grows linearly from the apex (top row)
        # to the full base (bottom row).
        rows = np.arange(size)[:, None]  # (size, 1)
        mask[:] = np.abs(dx) <= (rows + 1) / 2
    elif shape == "cross":
        # Thin arms keep the plus sign distinct from a filled square at 8x8-patch resolution.
        thickness = max(2, round(size / 4.5))
        start = (size - thickness) // 2
        mask[start : start + thickness, :] = True
        mask[:, start : start + thickness] = True
    else:
        raise ValueError(f"unknown shape {shape!r}, expected one of {SHAPES}")
    mask.setflags(write=False)
    return mask


@cache
def _shape_extent(shape: str, size: int) -> tuple[int, int, int, int]:
    """Returns the tight box of ``_shape_mask(shape, size)`` within its bounding square.

    Args:
        shape: One of ``SHAPES``.
        size: Side of the bounding square in pixels.

    Returns:
        ``(x0, y0, x1, y1)`` relative to the square's top-left corner; ``x1``, ``y1`` exclusive.
    """
    mask = _shape_mask(shape, size)  # (size, size)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Draws a textured, low-saturation background.

    The background is a grey level in ``[0.3, 0.6]`` with a faint tint, a smooth
    linear gradient, optionally faint stripes or blobs of a desaturated colour,
    and low-amplitude noise. Its per-pixel saturation stays far below that of
    the object colours.

    Args:
        rng: Random generator of the scene.
        size: Image side in pixels.

    Returns:
        ``(size, size, 3)`` float32 image, clipped to ``[0, 1]``.
    """
    coords = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)  # (W,) in (-0.5, 0.5)
    ys, xs = coords[:, None], coords[None, :]  # (H, 1), (1, W)

    level = rng.uniform(0.3, 0.6)
    tint = rng.uniform(-0.03, 0.03, size=3).astype(np.float32)  # (3,)
    angle = rng.uniform(0.0, 2 * math.pi)
    gradient = rng.uniform(0.0, 0.2) * (xs * math.cos(angle) + ys * math.sin(angle))  # (H, W)

    texture = rng.integers(3)  # 0: plain, 1: stripes, 2: blobs
    if texture == 1:
        angle = rng.uniform(0.0, math.pi)
        cycles = rng.uniform(2.0, 6.0)
        phase = rng.uniform(0.0, 2 * math.pi)
        along = xs * math.cos(angle) + ys * math.sin(angle)  # (H, W)
        pattern = np.sin(2 * math.pi * cycles * along + phase)  # (H, W)
    elif texture == 2:
        pattern = np.zeros((size, size), dtype=np.float32)  # (H, W)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
            radius = rng.uniform(0.1, 0.25)
            strength = rng.uniform(-1.0, 1.0)  # lighter or darker than the surroundings
            pattern += strength * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
        pattern = np.clip(pattern, -1.0, 1.0)
    else:
        pattern = np.zeros((size, size), dtype=np.float32)  # (H, W)
    # Faint, desaturated colour of the pattern.
    pattern_rgb = (0.06 + rng.uniform(-0.018, 0.018, size=3)).astype(np.float32)  # (3,)

    # Channels are filled one by one: numpy broadcasts slowly over a trailing axis of length 3.
    field = level + gradient  # (H, W)
    image = np.empty((size, size, 3), dtype=np.float32)  # (H, W, 3)
    for channel in range(3):
        image[..., channel] = field + pattern * pattern_rgb[channel] + tint[channel]
    image += 0.06 * rng.random((size, size, 3), dtype=np.float32) - 0.03  # noise in [-0.03, 0.03)
    return np.clip(image, 0.0, 1.0, out=image)


def _paint_object(
    image: np.ndarray,
    rng: np.random.Generator,
    shape: str,
    colour: str,
    size: int,
    x0: int,
    y0: int,
) -> SceneObject:
    """Paints one object into ``image`` in place and records it.

    Args:
        image: ``(H, W, 3)`` float32 image to paint into.
        rng: Random generator of the scene, used for the colour jitter.
        shape: One of ``SHAPES``.
        colour: One of ``COLOURS``.
        size: Side of the bounding square.
        x0: Left column of the bounding square.
        y0: Top row of the bounding square.

    Returns:
        The painted object.
    """
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)  # (3,)
    rgb = np.clip(np.asarray(COLOUR_RGB[colour]) + jitter, 0.0, 1.0).astype(np.float32)  # (3,)

    local = _shape_mask(shape, size)  # (size, size)
    image[y0 : y0 + size, x0 : x0 + size][local] = rgb
    mask = np.zeros(image.shape[:2], dtype=bool)  # (H, W)
    mask[y0 : y0 + size, x0 : x0 + size] = local
    mask.setflags(write=False)

    left, top, right, bottom = _shape_extent(shape, size)
    box = (x0 + left, y0 + top, x0 + right, y0 + bottom)
    return SceneObject(
        shape=shape,
        colour=colour,
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        size=size,
        center=(x0 + size / 2, y0 + size / 2),
        box=box,
        mask=mask,
    )


class ShapesWorld:
    """Seeded generator of ShapesWorld scenes.

    Args:
        image_size: Side of the square images in pixels.
        min_objects: Minimum number of objects to place per scene.
        max_objects: Maximum number of objects per scene (at most 16, one per class).
        min_size: Minimum side of an object's bounding square in pixels.
        max_size: Maximum side of an object's bounding square in pixels.
        seed: Non-negative seed; scene ``i`` is drawn from ``np.random.default_rng([seed, i])``.

    Raises:
        ValueError: If the arguments are inconsistent.
    """

    def __init__(
        self,
        image_size: int = 64,
        min_objects: int = 1,
        max_objects: int = 3,
        min_size: int = 16,
        max_size: int = 26,
        seed: int = 0,
    ) -> None:
        if not 1 <= min_objects <= max_objects <= NUM_CLASSES:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {NUM_CLASSES}, got {min_objects} and {max_objects}"
            )
        if not 1 <= min_size <= max_size <= image_size:
            raise ValueError(
                f"need 1 <= min_size <= max_size <= image_size, got {min_size}, {max_size} and {image_size}"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.image_size = image_size
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"ShapesWorld(image_size={self.image_size}, min_objects={self.min_objects}, "
            f"max_objects={self.max_objects}, min_size={self.min_size}, max_size={self.max_size}, "
            f"seed={self.seed})"
        )

    def scene(self, index: int) -> Scene:
        """Generates one scene.

        Objects are placed by rejection sampling; an object that cannot be placed
        within a bounded number of tries is dropped, so a crowded scene may hold
        fewer than ``min_objects`` objects, but always at least one.

        Args:
            index: Non-negative scene index.

        Returns:
            The scene, a deterministic function of ``(seed, index)``.

        Raises:
            ValueError: If ``index`` is negative.
        """
        if index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        rng = np.random.default_rng([self.seed, index])
        n_objects = int(rng.integers(self.min_objects, self.max_objects + 1))
        labels = rng.choice(NUM_CLASSES, size=n_objects, replace=False)  # (n_objects,) distinct
        image = _background(rng, self.image_size)  # (H, W, 3)

        objects: list[SceneObject] = []
        squares: list[tuple[int, int, int]] = []  # (x0, y0, size) of the placed bounding squares
        for label in labels:
            colour, shape = COLOURS[label // len(SHAPES)], SHAPES[label % len(SHAPES)]
            size = int(rng.integers(self.min_size, self.max_size + 1))
            position = self._place(rng, size, squares)
            if position is None:
                continue
            x0, y0 = position
            squares.append((x0, y0, size))
            objects.append(_paint_object(image, rng, shape, colour, size, x0, y0))

        image.setflags(write=False)
        return Scene(image=image, objects=tuple(objects), index=index, seed=self.seed)

    def scenes(self, n: int, start: int = 0) -> list[Scene]:
        """Generates scenes ``start, ..., start + n - 1``.

        Args:
            n: Number of scenes.
            start: Index of the first scene.

        Returns:
            The scenes, in index order.
        """
        return [self.scene(index) for index in range(start, start + n)]

    def batch(self, n: int, start: int = 0) -> ShapesBatch:
        """Generates scenes ``start, ..., start + n - 1`` as a tensor batch.

        Args:
            n: Batch size, at least 1.
            start: Index of the first scene.

        Returns:
            The batch.

        Raises:
            ValueError: If ``n`` is smaller than 1.
        """
        if n < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        return ShapesBatch.from_scenes(self.scenes(n, start))

    def _place(
        self, rng: np.random.Generator, size: int, squares: list[tuple[int, int, int]]
    ) -> tuple[int, int] | None:
        """Samples a top-left corner for a new bounding square by rejection sampling.

        A fixed number of candidates is drawn at once and the first valid one is kept.

        Args:
            rng: Random generator of the scene.
            size: Side of the new bounding square.
            squares: ``(x0, y0, size)`` of the squares placed so far.

        Returns:
            ``(x0, y0)`` keeping the new square inside the image and at least
            ``MIN_GAP`` pixels away from every placed square, or None if no such
            position was found within the allowed tries.
        """
        high = self.image_size - size + 1
        candidates = rng.integers(0, high, size=(_PLACEMENT_TRIES, 2))  # (tries, 2) as (x0, y0)
        valid = np.ones(_PLACEMENT_TRIES, dtype=bool)  # (tries,)
        if squares:
            x0, y0 = candidates[:, :1], candidates[:, 1:]  # (tries, 1) each
            ox, oy, osize = np.array(squares).T  # (placed,) each
            separated = (
                (x0 >= ox + osize + MIN_GAP)
                | (ox >= x0 + size + MIN_GAP)
                | (y0 >= oy + osize + MIN_GAP)
                | (oy >= y0 + size + MIN_GAP)
            )  # (tries, placed)
            valid = separated.all(axis=1)
        if not valid.any():
            return None
        x0, y0 = candidates[valid.argmax()]
        return int(x0), int(y0)


class ShapesDataset(Dataset):
    """Map-style dataset of ShapesWorld scenes, generated on the fly.

    Item ``i`` is scene ``start + i`` of the world, so items are deterministic
    and equal to the corresponding entries of ``world.batch(n, start)``.

    Args:
        world: The generator.
        n: Number of items.
        start: Scene index of item 0.
    """

    def __init__(self, world: ShapesWorld, n: int, start: int = 0) -> None:
        if n < 0 or start < 0:
            raise ValueError(f"n and start must be non-negative, got {n}, {start}")
        self.world = world
        self.n = n
        self.start = start

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns item ``i``.

        Args:
            i: Item index; negative indices count from the end.

        Returns:
            ``(image, labels)``: ``(3, H, W)`` float32 image in ``[0, 1]`` and
            ``(16,)`` float32 multi-hot labels.

        Raises:
            IndexError: If ``i`` is out of range.
        """
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for dataset of length {self.n}")
        scene = self.world.scene(self.start + i % self.n)
        image = torch.from_numpy(scene.image.transpose(2, 0, 1).copy())  # (3, H, W)
        return image, torch.from_numpy(scene.labels)
