"""Explorer callbacks and figure helpers: pure functions returning figures with the right content."""

import matplotlib.pyplot as plt
import pytest
import torch
from conftest import tiny_timm_vit

import gae_utils as gu
from gae_workbook import figures, views, widgets


@pytest.fixture(scope="module")
def setup():
    vit = tiny_timm_vit()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    rec = views.explore_record(vit, images)
    return vit, images, rec


def test_explore_record_covers_every_class(setup):
    vit, images, rec = setup
    assert rec.scores.shape == (2, 7) and rec.target.shape == (2, 7)
    assert all(layer.attn is not None and layer.grad.shape[1] == 7 for layer in rec.layers)
    single = gu.explain(vit, images, target=4).relevance["image"]
    torch.testing.assert_close(rec.explanation("gae").relevance["image"][:, 4], single)


def test_layer_matrix_views(setup):
    vit, images, rec = setup
    last = views.layer_matrix(rec, 1, 4, 2, "relevancy")
    torch.testing.assert_close(last, rec.maps("gae")[("image", "image")][1, 4])
    first = views.layer_matrix(rec, 1, 4, 0, "relevancy")
    torch.testing.assert_close(first, torch.eye(17) + rec.layers[0].attn_bar[1, 4])
    torch.testing.assert_close(views.layer_matrix(rec, 0, 2, 1, "attn_bar"), rec.layers[1].attn_bar[0, 2])
    heads = torch.stack([views.layer_matrix(rec, 0, 2, 1, "head", head=h) for h in range(4)])
    torch.testing.assert_close(heads.mean(0), rec.layers[1].attn_bar[0, 2])  # Eq. 5 is the head mean
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        views.layer_matrix(rec, 0, 0, 5, "attn_bar")
    with pytest.raises(ValueError, match="head 9 is out of range"):
        views.layer_matrix(rec, 0, 0, 1, "head", head=9)
    with pytest.raises(ValueError, match="before start_layer"):
        views.layer_matrix(rec, 0, 0, 0, "relevancy", start_layer=1)
    with pytest.raises(ValueError, match="unknown view"):
        views.layer_matrix(rec, 0, 0, 0, "lrp")


def test_row_heatmap_is_the_readout(setup):
    vit, images, rec = setup
    matrix = rec.maps("gae")[("image", "image")][0, 3]
    heat = views.row_heatmap(rec.layout, matrix)
    expected = gu.explain(vit, images, target=3).heatmap()[0]
    torch.testing.assert_close(heat, expected)


@pytest.mark.parametrize("view", views.VIEWS)
def test_render_layer_draws_the_chosen_matrix(setup, view):
    vit, images, rec = setup
    fig = widgets.render_layer(rec, images, index=1, target=2, layer=1, view=view, head=3)
    axes = fig.axes
    matrix = views.layer_matrix(rec, 1, 2, 1, view, head=3)
    shown = axes[2].images[0].get_array()
    assert torch.allclose(torch.as_tensor(shown.data), matrix.float())
    assert "layer 1" in axes[1].get_title()
    plt.close(fig)


def test_render_methods_and_steps(setup):
    vit, images, rec = setup
    fig = widgets.render_methods(rec, images, index=0, target=1, highlight="gae")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    labels = [gu.METHODS[m].label for m in gu.method_names()]
    assert len([t for t in titles if t in labels]) == len(labels)
    gae_ax = next(ax for ax in fig.axes if ax.get_title() == gu.METHODS["gae"].label)
    heat = torch.as_tensor(gae_ax.images[1].get_array().data)
    torch.testing.assert_close(heat, rec.explanation("gae").heatmap(32)[0, 1])
    plt.close(fig)
    fig = widgets.render_steps(rec, images, index=0, target=1)
    assert len(fig.axes) == 2 * (len(rec.layers) + 1)
    plt.close(fig)


def test_explorer_builds_and_reacts(setup):
    pytest.importorskip("ipywidgets")
    vit, images, _ = setup
    box = widgets.explorer(vit, images, class_names=[f"c{k}" for k in range(7)])
    controls = [w for row in box.children for w in (row.children if hasattr(row, "children") else [row])]
    layer = next(w for w in controls if getattr(w, "description", "") == "layer")
    layer.value = 0  # triggers a re-render without error
    assert layer.value == 0


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = figures.save_figure(fig, "demo", tmp_path)
    assert [p.name for p in paths] == ["demo.png", "demo.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    plt.close(fig)


def test_heatmap_colour_map_survives_greyscale():
    """Lightness of the heatmap colour map rises monotonically from 0 to 1."""
    cmap = plt.get_cmap(figures.HEATMAP_CMAP)
    rgb = torch.tensor(cmap(torch.linspace(0, 1, 64).numpy())[:, :3])
    luminance = rgb @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=rgb.dtype)
    assert (luminance.diff() > 0).all()


def test_plot_explanation_and_perturbation_curves(setup):
    vit, images, _ = setup
    exp = gu.explain(vit, images, target=torch.tensor([[1, 2], [3, 4]]))
    fig = exp.plot(images)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and "class 4" in panels[3].get_title()
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"] == ["relevance (min-max per map)"]
    plt.close(fig)
    fig = figures.plot_perturbation_curves(
        {"gae": [1, 0.5, 0.2], "rollout": [1, 0.7, 0.4]}, [0, 0.1, 0.2], "t", auc={"gae": 1.0}
    )
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and ax.lines[0].get_linestyle() != ax.lines[1].get_linestyle()
    plt.close(fig)


def test_plot_alignment_is_a_row_normalised_seaborn_heatmap():
    matrix = torch.tensor([[1.0, 3.0, 2.0, 9.0], [0.0, 0.5, 1.0, 9.0]])  # (T, S); the last column is cut
    fig, ax = plt.subplots()
    mesh = figures.plot_alignment(ax, matrix, ["a", "red", "circle"], ["circle", "red"], "t", highlight=1)
    values = mesh.get_array().reshape(2, 3)
    torch.testing.assert_close(
        torch.as_tensor(values.data, dtype=torch.float32), torch.tensor([[0, 1, 0.5], [0, 0.5, 1]])
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "red", "circle"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["circle", "red"]
    frame = ax.patches[-1]
    assert (frame.get_xy(), frame.get_width(), frame.get_height()) == ((0, 1), 3, 1)  # row 1, all columns
    plt.close(fig)
