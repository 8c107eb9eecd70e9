"""shapes-swin: the embedded Swin (issue 19), its training recipe, its explanation and its evaluation."""

import json

import pytest
import torch

import gae_utils as gu
from gae_workbook.evaluation import evaluators as evaluate
from gae_workbook.models import zoo
from gae_workbook.models.train import HELDOUT_SEED, evaluate_multilabel, train_shapes_swin
from shapesworld.scenes import CLASS_NAMES, ShapesWorld


@pytest.fixture(scope="module")
def swin():
    return zoo.load("shapes-swin")


def test_shipped_shapes_swin_is_a_shifted_windowed_swin_with_a_merge(swin):
    assert type(swin).__name__ == "SwinTransformer" and gu.find_adapter(swin).name == "timm-swin"
    assert swin.card.classes == list(CLASS_NAMES) and not swin.training
    blocks = [m for m in swin.modules() if type(m).__name__ == "SwinTransformerBlock"]
    grids = [tuple(b.input_resolution) for b in blocks]
    assert grids == [(16, 16), (16, 16), (8, 8), (8, 8)]  # one 2x2 merge between the stages
    windows = [(g[0] // b.window_size[0]) * (g[1] // b.window_size[1]) for g, b in zip(grids, blocks)]
    assert windows == [16, 16, 4, 4]  # more than one window in each stage
    assert [tuple(b.shift_size) for b in blocks] == [(0, 0), (2, 2), (0, 0), (2, 2)]


def test_shipped_shapes_swin_card_is_reproducible_and_comparable_to_shapes_vit(swin):
    recorded = swin.card.training["heldout"]
    fresh = evaluate_multilabel(swin, ShapesWorld(seed=HELDOUT_SEED), n=recorded["n"])
    assert fresh["exact_match"] == pytest.approx(recorded["exact_match"], abs=1e-9)
    vit = zoo.load("shapes-vit").card.training["heldout"]
    assert recorded["label_accuracy"] >= vit["label_accuracy"] - 0.02, (recorded, vit)
    assert recorded["exact_match"] > 0.5  # chance (16 independent coin flips) is 1.5e-5
    assert swin.card.training["train_seconds"] > 0 and swin.card.training["steps"] > 0


def test_gae_on_shapes_swin_is_a_map_on_the_first_stage_grid_that_points_at_the_object(swin):
    batch = ShapesWorld(seed=HELDOUT_SEED).batch(6, start=1000)
    targets = batch.labels.argmax(1, keepdim=True)  # (B, 1) a class present in each scene
    maps = gu.explain(swin, batch.images, target=targets).grid_relevance()  # (B, 1, 16, 16)
    assert maps.shape == (6, 1, 16, 16)
    masks = batch.masks.gather(1, targets[:, :, None, None].expand(-1, -1, 64, 64))[:, 0]  # (B, 64, 64)
    best = maps[:, 0].flatten(1).argmax(1)  # (B,) raster index on the 16 x 16 grid
    on_grid = masks.view(6, 16, 4, 16, 4).any(4).any(2).flatten(1)  # (B, 256) patch touches the object
    hits = on_grid[torch.arange(6), best]
    assert hits.float().mean() >= 0.5, hits  # a random patch hits an object's patches about 1 time in 10


def test_short_swin_training_run_lowers_the_loss_and_round_trips(tmp_path):
    model, card = train_shapes_swin(
        steps=30, batch_size=32, train_scenes=480, warmup=5, lr=3e-3, eval_n=40, out=tmp_path, progress=False
    )
    assert card.training["loss_last_10"] < card.training["loss_first_10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes-swin.json", "shapes-swin.safetensors"]
    assert json.loads((tmp_path / "shapes-swin.json").read_text())["training"]["steps"] == 30
    loaded = zoo.load("shapes-swin", directory=tmp_path)
    images = ShapesWorld(seed=5).batch(4).images
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_swin_evaluation_runs_at_a_tiny_n_and_fills_every_column(tmp_path):
    pytest.importorskip("captum")
    pytest.importorskip("pytorch_grad_cam")
    path = tmp_path / "swin.json"
    argv = ["--model", "shapes-swin", "--n", "3", "--batch-size", "3", "--json", str(path), "--no-progress"]
    results = evaluate.main([*argv, "--peers", "gradcam", "integrated_gradients"])
    written = json.loads(path.read_text())
    rows = {"gae", "gae_last_layer", "raw_attention", "rollout", "attn_gradcam", "random"}
    assert set(written) == rows | {"gradcam", "integrated_gradients"}
    columns = {"pointing", "pointing_pixel", "mass", "pixel_accuracy", "miou", "map", "pos_auc", "neg_auc"}
    for method, row in written.items():
        assert columns <= set(row), (method, set(row))
        assert row == pytest.approx(results[method])
        assert 0 <= row["pointing"] <= 1 and 0 <= row["miou"] <= 1 and 0 <= row["pos_auc"] <= 90


def test_gradcam_peer_follows_the_swin_recipe(swin):
    pytest.importorskip("pytorch_grad_cam")
    from gae_workbook.evaluation.peers import gradcam

    batch = ShapesWorld(seed=HELDOUT_SEED).batch(2, start=2000)
    present = batch.labels.argmax(1)  # (B,)
    absent = batch.labels.argmin(1)  # (B,)
    before = {k: v.clone() for k, v in swin.state_dict().items()}
    maps = gradcam(swin, batch.images, present)
    assert maps.shape == (2, 64, 64) and maps.amax() > 0
    # the map follows the target: a class the scene lacks gives another map
    assert not torch.allclose(maps, gradcam(swin, batch.images, absent))
    assert not swin.training and all(torch.equal(v, swin.state_dict()[k]) for k, v in before.items())
