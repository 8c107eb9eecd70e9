"""GAE as a captum-style attribution object, scored by a Quantus metric."""

import numpy as np
import pytest
import torch
from conftest import tiny_timm_vit

from gae_utils import GAEAttribution, explain
from gae_utils.heatmaps import upsample_maps


def test_attribute_shape_and_values(images):
    model = tiny_timm_vit()
    target = torch.tensor([1, 0, 6, 2])
    attr = GAEAttribution(model).attribute(images, target=target)
    assert attr.shape == (4, 1, 32, 32)
    grid = explain(model, images, target).grid_relevance()
    torch.testing.assert_close(attr[:, 0], upsample_maps(grid, (32, 32)))
    torch.testing.assert_close(GAEAttribution(model).attribute(images, target=[1, 0, 6, 2]), attr)
    assert not torch.equal(GAEAttribution(model, method="rollout").attribute(images, target=target), attr)
    with pytest.raises(ValueError, match="one target class per image"):
        GAEAttribution(model).attribute(images, target=target[:, None].expand(-1, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GAEAttribution(model).attribute(images[0])


def test_quantus_pixel_flipping_runs_on_gae_and_beats_random():
    quantus = pytest.importorskip("quantus")
    from gae_workbook.models import zoo
    from shapesworld.scenes import ShapesWorld

    model = zoo.load("shapes-vit")
    x = ShapesWorld(seed=5).batch(8).images
    y = model(x).argmax(-1)
    rng = np.random.default_rng(0)

    def random_explain(model, inputs, targets, **_):
        return rng.random((inputs.shape[0], 1, *inputs.shape[-2:])).astype(np.float32)

    def auc(explain_func):
        metric = quantus.PixelFlipping(
            features_in_step=128, perturb_baseline="black", disable_warnings=True, display_progressbar=False
        )  # its return_auc_per_sample calls np.trapz, gone in numpy 2.4: the area is taken here
        curves = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=explain_func, device="cpu")
        return float(np.trapezoid(np.asarray(curves), axis=-1).mean())

    gae, random = auc(GAEAttribution.quantus_explain), auc(random_explain)
    assert np.isfinite(gae) and gae < random  # removing GAE's most relevant pixels first hurts the class faster


def test_captum_metric_calls_attribute_unchanged(images):
    metrics = pytest.importorskip("captum.metrics")
    attr = GAEAttribution(tiny_timm_vit())
    target = torch.tensor([0, 1, 2, 3])
    sensitivity = metrics.sensitivity_max(attr.attribute, images, target=target, n_perturb_samples=3)
    assert sensitivity.shape == (4,) and torch.isfinite(sensitivity).all() and (sensitivity > 0).all()
