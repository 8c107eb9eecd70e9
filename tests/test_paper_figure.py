"""From an explanation to a paper figure: Explanation.plot's grid, axes, titles and class names, the
images drawn as they are (never clipped silently), and the workbook's figure helpers."""

import types
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_hf_vit, tiny_timm_vit  # noqa: E402

import gae_utils as gu  # noqa: E402
from gae_utils.plotting import display_images  # noqa: E402


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible() and ax.images]


def _drawn_image(ax) -> torch.Tensor:
    """The greyscale image under a panel's heatmap, as drawn: ``(H, W)``."""
    return torch.as_tensor(ax.images[0].get_array(), dtype=torch.float32)


@pytest.fixture
def raw():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # [0, 1]


def test_eight_images_make_a_wide_grid_titled_by_method_label():
    vit = tiny_timm_vit()
    images = torch.rand(8, 3, 32, 32)
    fig = gu.explain(vit, images, method="attn_gradcam").plot(images)
    width, height = fig.get_size_inches()
    assert width > height  # 4 x 2 panels, not one column of 8
    assert len(_panels(fig)) == 8 and fig._suptitle.get_text() == "attention Grad-CAM relevance"
    plt.close(fig)
    fig = gu.explain(vit, images).plot(images, ncols=2)
    assert fig.get_size_inches()[1] > fig.get_size_inches()[0]  # 2 columns, 4 rows
    plt.close(fig)


@pytest.mark.parametrize(
    "kind",
    ["unit", "uint8", "float255", "minus_one_one_known", "minus_one_one_unknown", "channels_last"],
)
def test_images_are_drawn_with_their_own_range(raw, kind):
    """Each input range is drawn as the [0, 1] image it stands for (the drawn greyscale is checked)."""
    vit = tiny_timm_vit()  # built directly: no pretrained_cfg, so no known normalisation
    exp = gu.explain(vit, raw)
    expected = raw.mean(1)  # (B, H, W) greyscale of the raw image
    given, options = raw, {}
    if kind == "uint8":
        given = (raw * 255).round().to(torch.uint8)
        expected = (given.float() / 255).mean(1)
    elif kind == "float255":
        given = raw * 255
    elif kind == "minus_one_one_known":
        given, options = raw * 2 - 1, {"normalization": ([0.5] * 3, [0.5] * 3)}
    elif kind == "minus_one_one_unknown":
        given = raw * 2 - 1
        low = raw.flatten(1).amin(1)[:, None, None]
        high = raw.flatten(1).amax(1)[:, None, None]
        expected = (raw.mean(1) - low) / (high - low)  # min-max rescaled per image
    elif kind == "channels_last":
        given = raw.permute(0, 2, 3, 1).numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = exp.plot(given, **options)
    rescaled = [w for w in caught if "min-max rescaled" in str(w.message)]
    assert len(rescaled) == (1 if kind == "minus_one_one_unknown" else 0)  # once per call
    if rescaled:
        message = str(rescaled[0].message)
        assert "[-1" in message and "Pass the raw images" in message and "normalization=" in message
    for b, ax in enumerate(_panels(fig)):
        torch.testing.assert_close(_drawn_image(ax), expected[b], atol=1e-5, rtol=0)
    plt.close(fig)


def test_a_timm_models_normalisation_is_recorded_and_undone(raw):
    vit = tiny_timm_vit()
    vit.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    mean, std = torch.tensor(vit.pretrained_cfg["mean"]), torch.tensor(vit.pretrained_cfg["std"])
    pixel_values = (raw - mean[:, None, None]) / std[:, None, None]
    exp = gu.explain(vit, pixel_values)
    assert exp.normalization == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rescaling warning: the normalisation is known
        fig = exp.plot(pixel_values)
    for b, ax in enumerate(_panels(fig)):
        torch.testing.assert_close(_drawn_image(ax), raw[b].mean(0), atol=1e-5, rtol=0)
    plt.close(fig)


def test_a_resize_overshoot_is_cut_but_a_wider_range_is_rescaled(raw):
    overshoot = raw * 1.02 - 0.01  # [-0.01, 1.01], as bicubic resizing leaves
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(display_images(overshoot), overshoot.clamp(0, 1))
    with pytest.warns(UserWarning, match=r"min-max rescaled for display"):
        shown = display_images(raw * 1.2 - 0.1)
    torch.testing.assert_close(shown.flatten(1).amin(1), torch.zeros(2))
    torch.testing.assert_close(shown.flatten(1).amax(1), torch.ones(2))


def test_a_processor_gives_the_normalisation(raw):
    processor = types.SimpleNamespace(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    torch.testing.assert_close(display_images(raw * 2 - 1, processor), raw, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="un-normalising them did not give"):
        display_images(raw * 10 - 5, processor)


def test_class_names_from_id2label_are_titles_and_survive_save_load(tmp_path, raw):
    model = tiny_hf_vit()
    assert gu.explain(model, raw).labels is None  # the default LABEL_i names are no names
    model.config.id2label = {i: f"kind {i}" for i in range(7)}
    exp = gu.explain(model, raw, target=torch.tensor([2, 5]))
    assert exp.labels == {i: f"kind {i}" for i in range(7)}
    fig = exp.plot(raw)
    assert [ax.get_title() for ax in _panels(fig)] == ["kind 2", "kind 5"]
    plt.close(fig)
    exp.save(tmp_path / "exp")
    loaded = gu.Explanation.load(tmp_path / "exp")
    assert loaded.labels == exp.labels and loaded.normalization is None
    fig = loaded.plot(raw, labels=["a", "b", "c", "d", "e", "f", "g"])  # names given win
    assert [ax.get_title() for ax in _panels(fig)] == ["c", "f"]
    plt.close(fig)
    two = gu.explain(model, raw, target=torch.tensor([[2, 5], [1, 0]]))  # K=2: a row per example
    fig = two.plot(raw)
    assert [ax.get_title() for ax in _panels(fig)] == ["#0 kind 2", "#0 kind 5", "#1 kind 1", "#1 kind 0"]
    plt.close(fig)


def test_a_timm_imagenet_model_knows_imagenet_names():
    from gae_utils.plotting import class_names

    vit = tiny_timm_vit(num_classes=1000)
    assert class_names(vit)[281] == "tabby"
    assert class_names(tiny_timm_vit()) is None  # 7 classes: no names


def test_titles_axes_cmap_alpha(raw):
    vit = tiny_timm_vit()
    exp = gu.explain(vit, raw, target=torch.tensor([[1, 2], [3, 4]]))
    fig = exp.plot(raw, titles=lambda b, t: f"image {b}: {t}", cmap="gray", alpha=0.3)
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["image 0: 1", "image 0: 2", "image 1: 3", "image 1: 4"]
    heat = panels[0].images[1]
    assert heat.get_cmap().name == "gray" and heat.get_alpha() == 0.3
    plt.close(fig)
    mine, axes = plt.subplots(1, 5)
    out = exp.plot(raw, ax=axes, titles=["a", "b", "c", "d"], colorbar=False)
    assert out is mine and [ax.get_title() for ax in axes[:4]] == ["a", "b", "c", "d"]
    assert not axes[4].axison  # the unused axes is hidden
    plt.close(mine)
    mine, one = plt.subplots()  # a single axes: one example, one target
    assert gu.explain(vit, raw, target=3).plot(raw, index=1, ax=one) is mine and one.get_title() == "class 3"
    with pytest.raises(ValueError, match=r"ax has 2 axes for 4 panels; pass at least 4 axes"):
        exp.plot(raw, ax=plt.subplots(1, 2)[1])
    plt.close("all")


def test_save_figure_writes_to_the_current_directory_by_default(tmp_path, monkeypatch):
    from gae_workbook.exploration import figures

    monkeypatch.delenv("GAE_FIGURES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    paths = figures.save_figure(fig, "mine")
    assert [p.parent for p in paths] == [tmp_path / "figures"] * 2 and all(p.stat().st_size for p in paths)
    plt.close(fig)


def test_workbook_helpers_take_strings_and_show_method_labels(raw):
    from gae_workbook.exploration import figures

    vit = tiny_timm_vit()
    rec = gu.record(vit, raw)
    fig = figures.plot_heatmap_grid(raw, {m: rec.explanation(m).heatmap(32) for m in ("gae", "attn_gradcam")})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "GAE", "attention Grad-CAM"]
    plt.close(fig)
    dual = types.SimpleNamespace(
        logits=torch.tensor([[2.5, -1.0]]), image=gu.explain(vit, raw[:1], target=torch.tensor([[0, 1]]))
    )
    fig = figures.plot_caption_maps(raw[:1], dual, ["a red circle", "a blue square"], [True, False])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[1:] == ["a red circle\nTRUE, logit 2.5", "a blue square\nFALSE, logit -1.0"]
    plt.close(fig)
