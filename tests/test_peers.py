"""The peers (captum, grad-cam, LXT) behind one signature, and their rows in the ShapesWorld evaluation."""

import pytest
import torch
from conftest import tiny_hf_vit, tiny_timm_vit

pytest.importorskip("captum")
pytest.importorskip("pytorch_grad_cam")

from gae_workbook import evaluate
from gae_workbook.evaluation.peers import PEERS, PeerUnavailableError, saliency  # noqa: E402
from gae_workbook.models import zoo

WORKING = ["integrated_gradients", "saliency", "gradcam"]


def _state(model):
    params = list(model.parameters())
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.grad for p in params],
        [p.requires_grad for p in params],
    )


@pytest.mark.parametrize("name", WORKING)
@pytest.mark.parametrize("make", [tiny_timm_vit, tiny_hf_vit], ids=["timm", "hf"])
def test_peer_maps_and_model_untouched(name, make, images):
    model = make().train()  # a peer must restore the mode it found (grad-cam switches to eval)
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # a grad the user had: kept, not zeroed or accumulated into
    before = _state(model)
    target = torch.tensor([0, 3, 6, 1])
    maps = PEERS[name](model, images, target)
    assert maps.shape == (4, 32, 32) and torch.isfinite(maps).all() and (maps >= 0).all()
    assert maps.flatten(1).std(1).gt(0).any()  # not constant (a Grad-CAM map can be all zero: ReLU)
    after = _state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[3] == after[3]
    assert all(a is b for a, b in zip(before[2], after[2]))  # the same .grad objects (or None)


def test_saliency_is_max_over_channels_of_the_absolute_gradient(images):
    model = tiny_timm_vit()
    target = torch.tensor([2, 2, 5, 0])
    x = images.clone().requires_grad_()
    model(x).gather(1, target[:, None]).sum().backward()
    torch.testing.assert_close(saliency(model, images, target), x.grad.abs().amax(1))


def test_lxt_peers_say_why_they_cannot_run(images):
    for name in ("lxt_attnlrp", "lxt_cp_lrp"):
        with pytest.raises(PeerUnavailableError, match="torchvision's VisionTransformer only"):
            PEERS[name](tiny_timm_vit(), images, torch.zeros(4, dtype=torch.long))


def test_bad_target_shape_is_named(images):
    with pytest.raises(ValueError, match="one target class per image"):
        saliency(tiny_timm_vit(), images, torch.zeros(4, 2, dtype=torch.long))


def test_evaluate_vit_with_peers_and_a_user_callable():
    def centre(model, images, target):  # a user's own method: the image centre
        yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        return (-((yy - 3.5) ** 2 + (xx - 3.5) ** 2)).expand(images.shape[0], -1, -1)  # (B, 8, 8)

    model = zoo.load("shapes-vit")
    peers = {"saliency": PEERS["saliency"], "centre": centre, "lxt_cp_lrp": PEERS["lxt_cp_lrp"]}
    with pytest.warns(UserWarning, match="lxt_cp_lrp.*left out"):
        results, curves = evaluate.evaluate_vit(
            model, n=6, seed=3, batch_size=3, methods=["gae"], peers=peers, progress=False
        )
    assert list(results) == ["gae", "saliency", "centre", "random"]
    for row in results.values():
        assert row["ms_per_pair"] > 0 and 0 <= row["pointing"] <= 1 and 0 <= row["pos_auc"] <= 90
    assert curves["centre"].shape == (2, 10)
