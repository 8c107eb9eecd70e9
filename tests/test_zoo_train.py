"""Embedded models: the shipped checkpoint, a short training run, pretrained loading offline."""

import json

import pytest
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from gae_workbook.models.train import HELDOUT_SEED, evaluate_multilabel, fold_input_normalization, train_shapes_vit
from shapesworld.scenes import CLASS_NAMES, ShapesWorld


def test_shipped_shapes_vit_loads_and_its_card_is_reproducible():
    model = zoo.load("shapes-vit")
    card = model.card
    assert card.classes == list(CLASS_NAMES) and not model.training
    assert type(model).__name__ == "VisionTransformer" and gu.find_adapter(model).name == "timm-vit"
    recorded = card.training["heldout"]
    assert recorded["exact_match"] >= 0.95, recorded
    fresh = evaluate_multilabel(model, ShapesWorld(seed=HELDOUT_SEED), n=recorded["n"])
    assert fresh["exact_match"] == pytest.approx(recorded["exact_match"], abs=1e-9)


def test_short_training_run_lowers_the_loss_and_round_trips(tmp_path):
    model, card = train_shapes_vit(
        steps=30, batch_size=32, train_scenes=480, warmup=5, lr=3e-3, eval_n=40, out=tmp_path, progress=False
    )
    assert card.training["loss_last_10"] < card.training["loss_first_10"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["shapes-vit.json", "shapes-vit.safetensors"]
    assert json.loads((tmp_path / "shapes-vit.json").read_text())["training"]["steps"] == 30
    loaded = zoo.load("shapes-vit", directory=tmp_path)
    images = ShapesWorld(seed=5).batch(4).images
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_folding_the_input_normalisation_is_exact():
    model = zoo.build(zoo.EMBEDDED["shapes-vit"]).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = model((images - 0.5) / 0.25)
        fold_input_normalization(model, 0.5, 0.25)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)


def test_timm_names_with_random_weights_and_offline_pretrained_error(monkeypatch):
    model = zoo.load("vit_tiny_patch16_224", pretrained=False)
    assert type(model).__name__ == "VisionTransformer" and not model.training
    monkeypatch.setattr(zoo, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(zoo.PretrainedUnavailableError, match=r"(?s)vit_tiny_patch16_224.*shapes-vit.*pretrained=False"):
        zoo.load("vit_tiny_patch16_224", pretrained=True)


def test_unknown_embedded_checkpoint_points_to_make_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="make models"):
        zoo.load("shapes-vit", directory=tmp_path)


def test_shipped_shapes_clip_card_is_reproducible():
    from gae_workbook.models.train import retrieval_accuracy

    model = zoo.load("shapes-clip")
    assert gu.find_adapter(model).name == "hf-clip"
    recorded = model.card.training["heldout"]
    fresh = retrieval_accuracy(model, ShapesWorld(seed=HELDOUT_SEED), n=recorded["n"])
    assert fresh["image_to_caption_top1"] == pytest.approx(recorded["image_to_caption_top1"], abs=1e-9)
    assert recorded["image_to_caption_top1"] > 0.5  # chance is 1/100


def test_short_clip_training_run_lowers_the_loss(tmp_path):
    from gae_workbook.models.train import train_shapes_clip

    model, card = train_shapes_clip(
        steps=25, batch_size=32, train_scenes=400, warmup=5, lr=3e-3, eval_n=100, out=tmp_path, progress=False
    )
    assert card.training["loss_last_10"] < card.training["loss_first_10"]
    loaded = zoo.load("shapes-clip", directory=tmp_path)
    x = torch.rand(2, 3, 64, 64)
    ids = torch.tensor([[4, 6, 15, 10, 5, 0], [4, 6, 9, 17, 5, 0]])
    with torch.no_grad():
        a = loaded(pixel_values=x, input_ids=ids).logits_per_image
        b = model(pixel_values=x, input_ids=ids).logits_per_image
    torch.testing.assert_close(a, b)


def test_shipped_shapes_vqa_card_is_reproducible_and_meets_the_target():
    from gae_workbook.models.train import vqa_accuracy

    model = zoo.load("shapes-vqa")
    recorded = model.card.training["heldout"]
    assert recorded["accuracy"] >= 0.9, recorded
    measured = vqa_accuracy(model, ShapesWorld(seed=model.card.training["heldout_seed"]), n=recorded["n"])
    assert measured == pytest.approx(recorded, abs=1e-6)
