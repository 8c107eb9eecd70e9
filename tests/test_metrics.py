"""Hand-checked tests of gae_workbook.evaluation.metrics: pointing, relevance mass, segmentation, perturbation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gae_utils.heatmaps import normalize_maps, upsample_maps
from gae_workbook.evaluation.metrics import (
    PERTURBATION_STEPS,
    average_precision,
    otsu_threshold,
    perturbation_auc,
    perturbation_curve,
    pointing_game,
    relevance_mass,
    segmentation_scores,
)

# ---------------------------------------------------------------------------------------------
# normalize_maps / upsample_maps
# ---------------------------------------------------------------------------------------------


def test_normalize_maps_each_map_independently_and_constant_to_zero():
    maps = torch.tensor(
        [
            [[1.0, 3.0], [5.0, 2.0]],  # min 1, max 5
            [[-2.0, 0.0], [2.0, 0.0]],  # min -2, max 2
            [[7.0, 7.0], [7.0, 7.0]],  # constant
        ]
    )
    out = normalize_maps(maps)
    expected = torch.tensor(
        [
            [[0.0, 0.5], [1.0, 0.25]],
            [[0.0, 0.5], [1.0, 0.5]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    assert out.shape == maps.shape
    torch.testing.assert_close(out, expected)


def test_normalize_maps_keeps_leading_dims_and_casts_ints():
    maps = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    out = normalize_maps(maps)
    assert out.shape == (2, 3, 2, 2)
    assert out.is_floating_point()
    torch.testing.assert_close(out[1, 2], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))


def test_upsample_maps_shape_and_bilinear_values():
    # A constant map stays constant; a 1x2 ramp upsampled to 1x4 with align_corners=False
    # samples at source x = -0.25, 0.25, 0.75, 1.25 -> clamped -> 0, 0.25, 0.75, 1.
    maps = torch.zeros(2, 3, 1, 2)
    maps[..., 0, 1] = 1.0
    out = upsample_maps(maps, (1, 4))
    assert out.shape == (2, 3, 1, 4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    const = upsample_maps(torch.full((4, 14, 14), 0.3), (224, 224))
    assert const.shape == (4, 224, 224)
    torch.testing.assert_close(const, torch.full((4, 224, 224), 0.3))


def test_upsample_maps_bad_size():
    with pytest.raises(ValueError, match="size"):
        upsample_maps(torch.zeros(1, 2, 2), (0, 4))


# ---------------------------------------------------------------------------------------------
# pointing game / relevance mass
# ---------------------------------------------------------------------------------------------


def test_pointing_game_hit_miss_batch_and_first_argmax_tie():
    maps = torch.tensor(
        [
            [[0.0, 1.0, 2.0], [3.0, 9.0, 0.0]],  # argmax (1, 1)
            [[0.0, 1.0, 2.0], [3.0, 9.0, 0.0]],  # argmax (1, 1)
            [[0.0, 1.0, 5.0], [2.0, 5.0, 0.0]],  # tie (0, 2) and (1, 1): first is (0, 2)
            [[0.0, 1.0, 5.0], [2.0, 5.0, 0.0]],
        ]
    )
    masks = torch.zeros(4, 2, 3, dtype=torch.bool)
    masks[0, 1, 1] = True  # hit
    masks[1, 0, 0] = True  # miss
    masks[2, 0, 2] = True  # hit on the first maximum
    masks[3, 1, 1] = True  # only the second maximum: miss by the tie rule
    hits = pointing_game(maps, masks)
    assert hits.dtype == torch.bool
    assert hits.tolist() == [True, False, True, False]


def test_relevance_mass_exact_values():
    maps = torch.tensor(
        [
            [[1.0, -2.0, 3.0], [0.0, 0.0, 0.0]],  # positive relevance 1 + 3 = 4
            [[1.0, -2.0, 3.0], [0.0, 0.0, 0.0]],
            [[-1.0, -2.0, 0.0], [0.0, 0.0, 0.0]],  # no positive relevance
        ]
    )
    masks = torch.zeros(3, 2, 3, dtype=torch.bool)
    masks[0, 0, 1:] = True  # contains -2 and 3 -> 3 / 4
    masks[1, 0, 0] = True  # contains 1 -> 1 / 4
    masks[2] = True
    mass = relevance_mass(maps, masks)
    torch.testing.assert_close(mass, torch.tensor([0.75, 0.25, 0.0]))


# ---------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------

# Image A: map mean 0.5 -> foreground pixels {0, 1}; mask {0}.
# Image B: map mean 0.45 -> foreground pixels {1, 2}; mask {1, 3}.
SEG_MAPS = torch.tensor(
    [
        [[0.9, 0.8], [0.1, 0.2]],
        [[0.0, 1.0], [0.5, 0.3]],
    ]
)
SEG_MASKS = torch.tensor(
    [
        [[True, False], [False, False]],
        [[False, True], [False, True]],
    ]
)


def test_segmentation_scores_by_hand():
    scores = segmentation_scores(SEG_MAPS, SEG_MASKS)
    # Correct pixels: A 3 (0, 2, 3), B 2 (0, 1) -> 5 / 8.
    assert scores["pixel_accuracy"] == pytest.approx(5 / 8)
    # Summed over the set: fg inter 1 + 1, union 2 + 3 -> 2/5; bg inter 2 + 1, union 3 + 3 -> 3/6.
    # (Averaging per-image mIoUs instead would give (7/12 + 1/3) / 2 = 0.4583.)
    assert scores["miou"] == pytest.approx((2 / 5 + 3 / 6) / 2)
    # AP A: the only positive has the top score -> 1.
    # AP B: sorted 1.0 (+), 0.5 (-), 0.3 (+), 0.0 (-) -> 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert scores["map"] == pytest.approx((1 + 5 / 6) / 2)


def test_segmentation_scores_raw_equals_normalised():
    raw = SEG_MAPS * 7.0 - 3.0
    assert segmentation_scores(raw, SEG_MASKS) == pytest.approx(segmentation_scores(SEG_MAPS, SEG_MASKS))


def test_segmentation_scores_both_class_ap_variant():
    # Image A normalised: s = [1, 0.875, 0, 0.125], mask [1, 0, 0, 0]. The authors' variant
    # scores 8 items: background [1 - s] vs [~m] = [0, .125, 1, .875] vs [0, 1, 1, 1] and
    # foreground [s] vs [m]. Descending thresholds: 1.0 -> 2 of 2 positive (P 1, R 2/4);
    # 0.875 -> 3 of 4 (P 3/4, R 3/4); 0.125 -> 4 of 6 (P 2/3, R 1).
    expected = 0.5 * 1 + 0.25 * 0.75 + 0.25 * (2 / 3)
    got = segmentation_scores(SEG_MAPS[:1], SEG_MASKS[:1], ap_over_both_classes=True)["map"]
    assert got == pytest.approx(expected)
    scores = [0.0, 0.125, 1.0, 0.875, 1.0, 0.875, 0.0, 0.125]
    assert _ap_reference(scores, [0, 1, 1, 1, 1, 0, 0, 0]) == pytest.approx(expected)


def _ap_reference(scores: list[float], labels: list[int]) -> float:
    """Plain-Python step-wise AP (distinct thresholds, descending)."""
    total_pos = sum(labels)
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores), reverse=True):
        chosen = [lab for sc, lab in zip(scores, labels, strict=True) if sc >= thr]
        tp = sum(chosen)
        recall = tp / total_pos
        ap += (recall - prev_recall) * tp / len(chosen)
        prev_recall = recall
    return ap


def test_average_precision_ties_and_no_positive():
    scores = torch.tensor([[0.5, 0.5, 0.2], [0.3, 0.2, 0.1]])
    labels = torch.tensor([[True, False, True], [False, False, False]])
    # Row 0: threshold 0.5 -> P 1/2, R 1/2; threshold 0.2 -> P 2/3, R 1 -> 1/4 + 1/3.
    ap = average_precision(scores, labels)
    torch.testing.assert_close(ap, torch.tensor([0.25 + 1 / 3, 0.0], dtype=torch.float64))


def test_average_precision_matches_reference_and_sklearn():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (5, 40), generator=gen).float() / 5  # many ties
    labels = torch.rand(5, 40, generator=gen) > 0.6
    ap = average_precision(scores, labels)
    for row in range(5):
        ref = _ap_reference(scores[row].tolist(), labels[row].int().tolist())
        assert ap[row].item() == pytest.approx(ref)
    try:
        from sklearn.metrics import average_precision_score
    except ImportError:
        return
    for row in range(5):
        ref = average_precision_score(labels[row].numpy(), scores[row].numpy())
        assert ap[row].item() == pytest.approx(ref)


def test_average_precision_equals_sklearn_if_available():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    ap = average_precision(SEG_MAPS[1].reshape(1, -1), SEG_MASKS[1].reshape(1, -1))
    ref = sklearn_metrics.average_precision_score(SEG_MASKS[1].reshape(-1).numpy(), SEG_MAPS[1].reshape(-1).numpy())
    assert ap.item() == pytest.approx(ref)
    assert ref == pytest.approx(5 / 6)


def test_otsu_two_values_by_hand():
    # Histogram over [0, 1] with 256 bins: 3 counts in bin 0 and 3 in bin 255. Every split
    # has the same between-class variance -> the first split wins, threshold = centre of bin 0.
    maps = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    thr = otsu_threshold(maps)
    assert thr.shape == (1,)
    assert thr.item() == pytest.approx(0.5 / 256)


def test_otsu_separates_bimodal_modes_and_constant_map():
    gen = torch.Generator().manual_seed(1)
    low = 0.1 + 0.1 * torch.rand(60, generator=gen)
    high = 0.8 + 0.1 * torch.rand(40, generator=gen)
    values = torch.cat([low, high])[torch.randperm(100, generator=gen)].reshape(10, 10)
    maps = torch.stack([values, torch.full((10, 10), 0.4)])  # (2, 10, 10)
    thr = otsu_threshold(maps)
    assert thr.shape == (2,)
    # The threshold is the centre of the last bin of the low class (skimage's convention), so
    # it lies at most one bin width below the top of the low mode and below the high mode.
    bin_width = (values.max() - values.min()) / 256
    assert low.max() - bin_width < thr[0] < high.min()
    assert (high > thr[0]).all()
    assert thr[1].item() == pytest.approx(0.4)  # constant map: its value, empty foreground


def test_otsu_matches_skimage_if_available():
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(2)
    maps = np.stack(
        [
            np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.7, 0.1, 100)]).reshape(20, 20),
            rng.random((20, 20)),
            rng.exponential(1.0, (20, 20)),
        ]
    )
    ours = otsu_threshold(torch.from_numpy(maps))
    for i in range(3):
        assert ours[i].item() == pytest.approx(float(filters.threshold_otsu(maps[i])), abs=1e-9)


def test_segmentation_scores_otsu_threshold():
    # Low mode 0..0.4 (10 pixels), high mode 1.0 (2 pixels, the mask). Mean = 4/12 = 0.333 cuts
    # into the low mode (the two 0.4 pixels become foreground); Otsu splits after 0.4 (between-
    # class variance 10 * 2 * (0.2 - 1)^2 = 12.8, the largest) at the centre of 0.4's bin,
    # 102.5 / 256 = 0.4004, so only the 1.0 pixels are foreground.
    maps = torch.tensor([[[0.0, 0.1, 0.2, 0.3], [0.4, 0.0, 0.1, 0.2], [0.3, 0.4, 1.0, 1.0]]])
    masks = maps == 1.0
    assert otsu_threshold(maps).item() == pytest.approx(102.5 / 256)
    otsu = segmentation_scores(maps, masks, threshold="otsu")
    assert otsu["pixel_accuracy"] == pytest.approx(1.0)
    assert otsu["miou"] == pytest.approx(1.0)
    mean = segmentation_scores(maps, masks, threshold="mean")
    assert mean["pixel_accuracy"] == pytest.approx(10 / 12)
    # fg: inter 2, union 4; bg: inter 8, union 10.
    assert mean["miou"] == pytest.approx((2 / 4 + 8 / 10) / 2)
    assert otsu["map"] == mean["map"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# perturbation test
# ---------------------------------------------------------------------------------------------

REGION = [7, 8, 9]  # flat pixel indices of a 2 x 5 image


def region_predict(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct iff at least 2 of the 3 region pixels survive (in every channel)."""
    flat = images.flatten(2)  # (n, C, 10)
    alive = (flat[:, :, REGION] > 0).all(dim=1).sum(dim=1)  # (n,)
    return alive >= 2


def make_perturbation_inputs():
    images = torch.ones(2, 3, 2, 5)
    maps = torch.stack([torch.arange(10.0), 9.0 - torch.arange(10.0)]).reshape(2, 2, 5)
    targets = torch.tensor([0, 1])
    return images, maps, targets


def test_perturbation_curve_positive_and_negative_exact():
    images, maps, targets = make_perturbation_inputs()
    # k = 0..9 pixels removed at steps 0, 0.1, ..., 0.9 (10 pixels).
    # Image 0 (region most relevant): positive removes 9, 8, 7 first -> correct for k <= 1;
    #   negative removes 0, 1, ... -> region pixel 7 goes at k = 8, 8 at k = 9 -> wrong at k = 9.
    # Image 1 (region least relevant): the mirror image.
    image0_pos = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    image1_pos = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    expected = torch.tensor([(a + b) / 2 for a, b in zip(image0_pos, image1_pos, strict=True)])
    pos = perturbation_curve(region_predict, images, maps, targets, positive=True)
    neg = perturbation_curve(region_predict, images, maps, targets, positive=False)
    assert pos.shape == (len(PERTURBATION_STEPS),)
    torch.testing.assert_close(pos, expected)
    torch.testing.assert_close(neg, expected)  # symmetric by construction
    only_first = perturbation_curve(region_predict, images[:1], maps[:1], targets[:1])
    torch.testing.assert_close(only_first, torch.tensor(image0_pos, dtype=torch.float32))
    only_first_neg = perturbation_curve(region_predict, images[:1], maps[:1], targets[:1], positive=False)
    torch.testing.assert_close(only_first_neg, torch.tensor(image1_pos, dtype=torch.float32))


def test_perturbation_curve_pixel_counts_channels_targets_and_stacking():
    images, maps, targets = make_perturbation_inputs()
    images = images * 0.5
    calls = []

    def recording_predict(batch: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        calls.append((batch.clone(), batch_targets.clone()))
        return torch.ones(batch.shape[0], dtype=torch.bool)

    curve = perturbation_curve(recording_predict, images, maps, targets, batch_size=1)
    torch.testing.assert_close(curve, torch.ones(10))
    assert len(calls) == 2  # one stacked call per chunk of one image
    for index, (batch, batch_targets) in enumerate(calls):
        assert batch.shape == (10, 3, 2, 5)
        assert batch_targets.tolist() == [index] * 10
        # Step 0 is the unperturbed image.
        torch.testing.assert_close(batch[0], images[index])
        zeros = (batch == 0).flatten(1).sum(dim=1)  # (10,)
        assert zeros.tolist() == [3 * k for k in range(10)]  # k pixels, all 3 channels
        # Dropped pixels are the k most relevant ones.
        ranking = torch.argsort(maps[index].flatten(), descending=True)
        for k in range(10):
            dropped = (batch[k, 0].flatten() == 0).nonzero().flatten().sort().values
            torch.testing.assert_close(dropped, ranking[:k].sort().values)


def test_perturbation_curve_batch_size_does_not_change_result():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(7, 2, 4, 4, generator=gen)
    maps = torch.rand(7, 4, 4, generator=gen)
    targets = torch.arange(7)

    def predict(batch, batch_targets):
        return batch.sum(dim=(1, 2, 3)) > batch_targets.float() + 5

    a = perturbation_curve(predict, images, maps, targets, batch_size=2)
    b = perturbation_curve(predict, images, maps, targets, batch_size=64)
    torch.testing.assert_close(a, b)


def test_perturbation_curve_stable_ties_and_custom_steps():
    # All-equal relevance: ties are removed in row-major order (index 0 first) for both orders.
    images = torch.ones(1, 1, 2, 2)
    maps = torch.zeros(1, 2, 2)
    targets = torch.zeros(1, dtype=torch.long)

    def first_pixel_alive(batch, batch_targets):
        return batch[:, 0, 0, 0] > 0

    steps = (0.0, 0.25, 0.5)
    for positive in (True, False):
        curve = perturbation_curve(first_pixel_alive, images, maps, targets, positive=positive, steps=steps)
        torch.testing.assert_close(curve, torch.tensor([1.0, 0.0, 0.0]))


def test_perturbation_curve_progress_bar_runs():
    pytest.importorskip("tqdm")
    images, maps, targets = make_perturbation_inputs()
    curve = perturbation_curve(region_predict, images, maps, targets, progress=True, batch_size=1)
    assert curve.shape == (10,)


def test_perturbation_auc_constant_and_linear():
    assert perturbation_auc([1.0] * 10) == pytest.approx(90.0)
    assert perturbation_auc(torch.ones(10)) == pytest.approx(90.0)
    # y = 1 - x on x = 0..0.9: integral 0.9 - 0.81 / 2 = 0.495 -> 49.5.
    linear = [1 - x for x in PERTURBATION_STEPS]
    assert perturbation_auc(linear) == pytest.approx(49.5)
    # Custom steps.
    assert perturbation_auc([0.0, 1.0], steps=[0.0, 0.5]) == pytest.approx(25.0)
    assert math.isclose(perturbation_auc([0.5], steps=[0.0]), 0.0)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    maps = torch.rand(2, 3, 3)
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 4, 4\)"):
        pointing_game(maps, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        relevance_mass(maps, masks.float())
    nan_maps = maps.clone()
    nan_maps[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pointing_game(nan_maps, masks)
    with pytest.raises(ValueError, match="empty batch"):
        segmentation_scores(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        segmentation_scores(maps, masks, threshold="median")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pointing_game(maps[0], masks[0])

    images, pmaps, targets = make_perturbation_inputs()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        perturbation_curve(region_predict, images, pmaps, targets, steps=(0.0, 1.0))
    with pytest.raises(ValueError, match="steps is empty"):
        perturbation_curve(region_predict, images, pmaps, targets, steps=())
    with pytest.raises(ValueError, match="upsample_maps"):
        perturbation_curve(region_predict, images, pmaps[:, :1], targets)
    with pytest.raises(ValueError, match="empty batch"):
        perturbation_curve(region_predict, images[:0], pmaps[:0], targets[:0])
    nan_pmaps = pmaps.clone()
    nan_pmaps[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        perturbation_curve(region_predict, images, nan_pmaps, targets)
    with pytest.raises(ValueError, match="predict must return"):
        perturbation_curve(lambda x, t: torch.ones(1, dtype=torch.bool), images, pmaps, targets)
    with pytest.raises(ValueError, match="same length"):
        perturbation_auc([1.0, 1.0])


def test_masks_to_grid_marks_cells_holding_any_mask_pixel():
    from gae_workbook.evaluation.metrics import masks_to_grid

    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 3] = True  # one pixel in the top-right 2x2 cell
    masks[0, 2:, :2] = True  # the whole bottom-left cell
    expected = torch.tensor([[[False, True], [True, False]]])
    assert torch.equal(masks_to_grid(masks, (2, 2)), expected)
    with pytest.raises(ValueError, match="multiple of the grid"):
        masks_to_grid(masks, (3, 3))
