"""Tests for the ShapesWorld scene generator."""

import itertools

import numpy as np
import pytest
import torch

from shapesworld.scenes import (
    CLASS_NAMES,
    COLOUR_JITTER,
    COLOUR_RGB,
    COLOURS,
    MIN_GAP,
    SHAPES,
    ShapesBatch,
    ShapesDataset,
    ShapesWorld,
    class_index,
)

N_SCENES = 200


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(seed=3)


@pytest.fixture(scope="module")
def scenes(world):
    return world.scenes(N_SCENES)


@pytest.fixture(scope="module")
def crowded_scenes():
    """Scenes asking for more objects than fit, to exercise the placement fallback."""
    world = ShapesWorld(image_size=32, min_objects=6, max_objects=8, min_size=12, max_size=16, seed=1)
    return world.scenes(50)


def all_objects(scenes):
    return [obj for scene in scenes for obj in scene.objects]


def assert_same_scene(a, b):
    np.testing.assert_array_equal(a.image, b.image)
    assert (a.index, a.seed) == (b.index, b.seed)
    assert len(a.objects) == len(b.objects)
    for oa, ob in zip(a.objects, b.objects):
        assert (oa.shape, oa.colour, oa.rgb, oa.size, oa.center, oa.box) == (
            ob.shape,
            ob.colour,
            ob.rgb,
            ob.size,
            ob.center,
            ob.box,
        )
        np.testing.assert_array_equal(oa.mask, ob.mask)


def test_class_names_and_index():
    assert len(CLASS_NAMES) == 16
    for colour, shape in itertools.product(COLOURS, SHAPES):
        assert CLASS_NAMES[class_index(colour, shape)] == f"{colour} {shape}"
    assert class_index("red", "circle") == 0
    assert class_index("green", "square") == len(SHAPES) + 1
    with pytest.raises(ValueError):
        class_index("purple", "circle")
    with pytest.raises(ValueError):
        class_index("red", "hexagon")


def test_deterministic_in_seed_and_index(world, scenes):
    assert_same_scene(world.scene(7), scenes[7])
    assert_same_scene(ShapesWorld(seed=3).scene(7), scenes[7])
    assert_same_scene(world.scenes(5, start=10)[2], scenes[12])


def test_different_seeds_and_indices_differ(scenes):
    other = ShapesWorld(seed=4).scenes(10)
    for a, b in zip(scenes[:10], other):
        assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(scenes[0].image, scenes[1].image)


def test_object_count_in_range(world, scenes):
    counts = {len(scene.objects) for scene in scenes}
    assert counts == set(range(world.min_objects, world.max_objects + 1))


def test_crowded_scenes_place_fewer_but_at_least_one(crowded_scenes):
    counts = [len(scene.objects) for scene in crowded_scenes]
    assert min(counts) >= 1
    assert max(counts) <= 8
    assert min(counts) < 6  # not everything fits into 32 x 32


@pytest.mark.parametrize("fixture", ["scenes", "crowded_scenes"])
def test_classes_unique_within_scene(fixture, request):
    for scene in request.getfixturevalue(fixture):
        labels = [obj.label for obj in scene.objects]
        assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("fixture", ["scenes", "crowded_scenes"])
def test_masks_disjoint_and_boxes_separated(fixture, request):
    for scene in request.getfixturevalue(fixture):
        for a, b in itertools.combinations(scene.objects, 2):
            assert not (a.mask & b.mask).any()
            ax0, ay0, ax1, ay1 = a.box
            bx0, by0, bx1, by1 = b.box
            gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
            assert gap >= MIN_GAP


def test_masks_non_empty_inside_tight_boxes(scenes):
    for obj in all_objects(scenes):
        assert obj.mask.shape == (64, 64)
        assert obj.mask.dtype == bool
        assert obj.mask.any()
        ys, xs = np.nonzero(obj.mask)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_objects_inside_image(scenes):
    for obj in all_objects(scenes):
        x, y = obj.center
        half = obj.size / 2
        assert 0 <= x - half and x + half <= 64
        assert 0 <= y - half and y + half <= 64
        x0, y0, x1, y1 = obj.box
        assert x - half <= x0 < x1 <= x + half
        assert y - half <= y0 < y1 <= y + half
        assert 16 <= obj.size <= 26


def test_shape_geometry(scenes):
    for obj in all_objects(scenes):
        area = obj.mask.sum()
        x0, y0, x1, y1 = obj.box
        width, height = x1 - x0, y1 - y0
        if obj.shape == "circle":
            assert width == height == obj.size
            assert area == pytest.approx(np.pi / 4 * obj.size**2, rel=0.1)
        elif obj.shape == "square":
            assert width == height == round(0.85 * obj.size)
            assert area == width * height
        elif obj.shape == "triangle":
            assert width == height == obj.size
            assert area == pytest.approx(obj.size**2 / 2, rel=0.15)
            # The row widths grow from the apex to the base.
            row_widths = obj.mask[y0:y1].sum(axis=1)
            assert (np.diff(row_widths) >= 0).all()
        else:
            thickness = max(2, round(obj.size / 4.5))
            assert width == height == obj.size
            assert area == 2 * thickness * obj.size - thickness**2


def test_image_range_and_dtype(scenes):
    for scene in scenes:
        assert scene.image.shape == (64, 64, 3)
        assert scene.image.dtype == np.float32
        assert scene.image.min() >= 0.0 and scene.image.max() <= 1.0


def test_mask_pixels_have_object_colour(scenes):
    for scene in scenes:
        for obj in scene.objects:
            rgb = np.asarray(obj.rgb, dtype=np.float32)
            assert (scene.image[obj.mask] == rgb).all()
            assert (0.0 <= rgb).all() and (rgb <= 1.0).all()
            assert np.abs(rgb - np.asarray(COLOUR_RGB[obj.colour])).max() <= COLOUR_JITTER + 1e-6


def test_background_is_low_saturation_and_distinct_from_objects(scenes):
    for scene in scenes:
        background = np.ones(scene.image.shape[:2], dtype=bool)
        for obj in scene.objects:
            background &= ~obj.mask
        pixels = scene.image[background]  # (N, 3)
        assert (pixels.max(axis=1) - pixels.min(axis=1)).max() < 0.25
        for obj in scene.objects:
            assert max(obj.rgb) - min(obj.rgb) > 0.35
    levels = [scene.image.mean() for scene in scenes]
    assert np.std(levels) > 0.03  # the background level varies between scenes


def test_labels_and_mask_for(scenes):
    for scene in scenes:
        labels = scene.labels
        assert labels.shape == (16,) and labels.dtype == np.float32
        assert set(np.flatnonzero(labels)) == {obj.label for obj in scene.objects}
        for obj in scene.objects:
            assert CLASS_NAMES[obj.label] == obj.name
            np.testing.assert_array_equal(scene.mask_for(obj.label), obj.mask)
        for label in np.flatnonzero(labels == 0):
            mask = scene.mask_for(int(label))
            assert mask.shape == (64, 64) and not mask.any()
    with pytest.raises(ValueError):
        scenes[0].mask_for(16)


def test_batch_matches_scenes(world):
    batch = world.batch(6, start=20)
    assert isinstance(batch, ShapesBatch)
    assert batch.images.shape == (6, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.labels.shape == (6, 16) and batch.labels.dtype == torch.float32
    assert batch.masks.shape == (6, 16, 64, 64) and batch.masks.dtype == torch.bool
    assert [scene.index for scene in batch.scenes] == list(range(20, 26))
    for b, scene in enumerate(batch.scenes):
        assert_same_scene(scene, world.scene(20 + b))
        np.testing.assert_array_equal(batch.images[b].permute(1, 2, 0).numpy(), scene.image)
        np.testing.assert_array_equal(batch.labels[b].numpy(), scene.labels)
        for label in range(16):
            np.testing.assert_array_equal(batch.masks[b, label].numpy(), scene.mask_for(label))


def test_dataset_items_equal_batch_items(world):
    dataset = ShapesDataset(world, n=5, start=30)
    batch = world.batch(5, start=30)
    assert len(dataset) == 5
    for i in range(5):
        image, labels = dataset[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert labels.shape == (16,) and labels.dtype == torch.float32
        assert torch.equal(image, batch.images[i])
        assert torch.equal(labels, batch.labels[i])
    assert torch.equal(dataset[-1][0], batch.images[4])
    with pytest.raises(IndexError):
        dataset[5]
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert torch.equal(images, batch.images) and torch.equal(labels, batch.labels)


def test_custom_image_size():
    scene = ShapesWorld(image_size=32, min_size=8, max_size=12, seed=0).scene(0)
    assert scene.image.shape == (32, 32, 3)
    for obj in scene.objects:
        assert obj.mask.shape == (32, 32)
        assert 8 <= obj.size <= 12


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_objects": 0},
        {"min_objects": 3, "max_objects": 2},
        {"max_objects": 17},
        {"min_size": 20, "max_size": 10},
        {"max_size": 65},
        {"seed": -1},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ShapesWorld(**kwargs)
