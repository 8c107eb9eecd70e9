"""The hand-written metrics of ``gae_workbook.evaluation.metrics`` against well-kept libraries, where
the protocols coincide.

Already cross-checked in ``test_metrics.py``: ``average_precision`` (scikit-learn) and ``otsu_threshold``
(scikit-image). Where the paper's protocol differs from a library's, ours is kept (see the notes below).
"""

import numpy as np
import pytest
import torch

from gae_utils.heatmaps import normalize_maps
from gae_workbook.evaluation.metrics import (
    average_precision,
    box_iou,
    masks_to_grid,
    perturbation_auc,
    pointing_game,
    relevance_mass,
    segmentation_scores,
)

GEN = torch.Generator().manual_seed(0)
MAPS = torch.rand(6, 16, 16, generator=GEN)  # continuous: no ties
MASKS = torch.rand(6, 16, 16, generator=GEN) > 0.7


def test_miou_and_pixel_accuracy_equal_torchmetrics_accumulated_over_the_set():
    classification = pytest.importorskip("torchmetrics.classification")
    ours = segmentation_scores(MAPS, MASKS)
    maps = normalize_maps(MAPS)
    foreground = maps > maps.mean(dim=(1, 2), keepdim=True)  # the protocol's threshold: above the map's mean
    jaccard = classification.MulticlassJaccardIndex(num_classes=2, average="macro")
    accuracy = classification.BinaryAccuracy()
    for pred, mask in zip(foreground, MASKS):  # one image per update: sums over the set, as the authors
        jaccard.update(pred.long()[None], mask.long()[None])
        accuracy.update(pred.long()[None], mask.long()[None])
    assert ours["miou"] == pytest.approx(jaccard.compute().item(), abs=1e-6)
    assert ours["pixel_accuracy"] == pytest.approx(accuracy.compute().item(), abs=1e-6)


def test_map_equals_torchmetrics_average_precision_per_image_with_ties():
    classification = pytest.importorskip("torchmetrics.classification")
    scores = (MAPS * 4).round() / 4  # five levels: many ties
    ours = average_precision(scores.flatten(1), MASKS.flatten(1))
    theirs = [classification.BinaryAveragePrecision()(s.flatten(), m.flatten().long()) for s, m in zip(scores, MASKS)]
    torch.testing.assert_close(ours.float(), torch.stack(theirs), atol=1e-6, rtol=0)
    assert segmentation_scores(MAPS, MASKS)["map"] == pytest.approx(
        np.mean([classification.BinaryAveragePrecision()(normalize_maps(s).flatten(), m.flatten().long()).item()
                 for s, m in zip(MAPS, MASKS)]), abs=1e-6)


def test_pointing_game_equals_quantus_without_ties_and_breaks_ties_to_the_first_pixel():
    quantus = pytest.importorskip("quantus")
    metric = quantus.PointingGame(disable_warnings=True)
    theirs = metric.evaluate_batch(a_batch=MAPS[:, None].numpy(), s_batch=MASKS[:, None].numpy())
    np.testing.assert_array_equal(pointing_game(MAPS, MASKS).numpy(), np.asarray(theirs, dtype=bool))
    # differs on ties: Quantus counts a hit when any maximal pixel is on the object, ours takes the first one
    flat = torch.zeros(1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 3, 3] = True
    assert not pointing_game(flat, mask)[0]
    assert metric.evaluate_batch(a_batch=flat[:, None].numpy(), s_batch=mask[:, None].numpy())[0]


def test_relevance_mass_equals_quantus_on_non_negative_maps():
    quantus = pytest.importorskip("quantus")
    theirs = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(
        a_batch=MAPS[:, None].numpy(), s_batch=MASKS[:, None].numpy()
    )
    np.testing.assert_allclose(relevance_mass(MAPS, MASKS).numpy(), np.asarray(theirs), rtol=1e-5)


def test_perturbation_auc_equals_sklearn_auc():
    metrics = pytest.importorskip("sklearn.metrics")
    curve = torch.rand(10, generator=GEN)
    steps = np.arange(10) / 10
    assert perturbation_auc(curve) == pytest.approx(metrics.auc(steps, curve.numpy()) * 100, rel=1e-6)


def test_box_iou_equals_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    def boxes(n):  # (n, 4) x0 <= x1, y0 <= y1
        corner, size = torch.rand(n, 2, generator=GEN), torch.rand(n, 2, generator=GEN)
        return torch.cat([corner, corner + size], 1)

    a, b = boxes(5), boxes(4)
    torch.testing.assert_close(box_iou(a, b).float(), ops.box_iou(a, b), atol=1e-6, rtol=0)


def test_masks_to_grid_equals_max_pooling():
    pooled = torch.nn.functional.adaptive_max_pool2d(MASKS[:, None].float(), (4, 4))[:, 0] > 0
    assert torch.equal(masks_to_grid(MASKS, (4, 4)), pooled)
