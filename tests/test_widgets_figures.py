"""Explorer callbacks and figure helpers: pure functions returning figures with the right content."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import tiny_timm_vit

import gae_utils as gu
from gae_workbook.exploration import figures, views, widgets


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
    shown = matrix
    if view == "relevancy":  # what layer 1 added: Abar_1 @ R_0 (Eq. 6)
        shown = matrix - views.layer_matrix(rec, 1, 2, 0, view)
        torch.testing.assert_close(shown, rec.layers[1].attn_bar[1, 2] @ views.layer_matrix(rec, 1, 2, 0, view))
    drawn = axes[2].images[0].get_array()
    assert torch.allclose(torch.as_tensor(drawn.data), shown.float())
    assert axes[2].images[0].get_clim() == pytest.approx((min(0.0, float(shown.min())), float(shown.max())))
    row = torch.as_tensor(axes[1].images[1].get_array().data)  # the explained row on the patch grid, raw
    torch.testing.assert_close(row, views.readout_grid(rec.layout, matrix))  # R's and R - I's agree there
    assert "layer 1" in axes[1].get_title()
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 2
    plt.close(fig)


def test_render_layer_in_place_equals_a_fresh_figure(setup):
    vit, images, rec = setup
    kept = widgets.render_layer(rec, images, index=0, target=1, layer=2, view="attn_bar")
    widgets.render_layer(rec, images, index=1, target=3, layer=0, view="relevancy", fig=kept)
    fresh = widgets.render_layer(rec, images, index=1, target=3, layer=0, view="relevancy")
    assert (_pixels(widgets.figure_png(kept)) == _pixels(widgets.figure_png(fresh))).all()
    with pytest.raises(ValueError, match="not made by this render function"):
        widgets.render_methods(rec, images, fig=kept)
    plt.close("all")


def test_layer_changes_are_visible_in_the_relevancy_view(setup):
    """R itself is dominated by its identity diagonal; what each layer added, with a raw colour bar, shows it."""
    vit, images, rec = setup
    drawn = [
        _pixels(widgets.figure_png(widgets.render_layer(rec, images, 0, 1, layer, "relevancy")))
        for layer in range(len(rec.layers))
    ]
    for before, after in zip(drawn, drawn[1:]):
        assert _changed(before, after) > 0.01
    plt.close("all")


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


# ----------------------------------------------------------------------------- the explorers as drawn


def _pixels(png: bytes) -> np.ndarray:
    """A PNG as an ``(H, W, 4)`` float array."""
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def _changed(before: np.ndarray, after: np.ndarray) -> float:
    """Fraction of pixels that changed visibly (any channel by more than 2 % of its range)."""
    if before.shape != after.shape:
        return 1.0
    return float((np.abs(before - after).max(-1) > 0.02).mean())


def _parts(box) -> tuple[list, dict]:
    """An explorer's ``Image`` views (in page order) and its controls by description."""
    ipywidgets = pytest.importorskip("ipywidgets")
    images, controls, stack = [], {}, [box]
    while stack:
        widget = stack.pop(0)
        if isinstance(widget, ipywidgets.Image):
            images.append(widget)
        elif isinstance(widget, ipywidgets.Box):
            stack = list(widget.children) + stack
        elif getattr(widget, "description", ""):
            controls[widget.description] = widget
    return images, controls


def _assert_picture(image) -> np.ndarray:
    """The view holds a drawn figure: a PNG of figure size with many colours (heatmaps, not a blank page)."""
    assert image.format == "png" and image.value[:4] == b"\x89PNG"
    pixels = _pixels(image.value)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 300
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: not a heatmap figure"
    return pixels


def _move(control, value, images) -> list[float]:
    """Set a control; the visible change of every view."""
    before = [_pixels(image.value) for image in images]
    control.value = value
    return [_changed(b, _pixels(image.value)) for b, image in zip(before, images)]


def test_vit_explorer_draws_on_opening_and_each_control_redraws_its_view(setup):
    vit, images, _ = setup
    box = widgets.explorer(vit, images, class_names=[f"c{k}" for k in range(7)])
    (methods, layer_view), controls = _parts(box)
    for image in (methods, layer_view):
        _assert_picture(image)
    layer, view, head = controls["layer"], controls["layer view"], controls["head"]
    assert layer.value == 2 and view.value == "relevancy" and head.disabled
    for value in (1, 0, 2):  # every layer step changes the drawn R - I visibly; the methods row is not redrawn
        moved = _move(layer, value, [methods, layer_view])
        assert moved[0] == 0 and moved[1] > 0.01, moved
    for value in ("attn_bar", "head", "relevancy"):  # every layer view, at the default layer
        moved = _move(view, value, [layer_view])
        assert moved[0] > 0.01 and head.disabled == (value != "head")
        _assert_picture(layer_view)
    moved = _move(controls["class"], 4, [methods, layer_view])
    assert min(moved) > 0.01
    moved = _move(controls["method"], "rollout", [methods, layer_view])
    assert moved[0] > 0 and moved[1] == 0  # the frame moves to another panel
    moved = _move(controls["start_layer"], 1, [methods, layer_view])
    assert min(moved) > 0.01


def _coattention():
    from test_coattention import inputs, tiny_lxmert

    model = tiny_lxmert()
    x = inputs(batch=2, regions=4)
    rec = gu.record(model, x, target=torch.tensor([[0, 1], [2, 3]]), keep_heads=True)
    tokens = [["[CLS]", "what", "colour", "is", "it", "[SEP]"]] * 2
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return rec, images, tokens


def test_coattention_explorer_offers_only_layers_that_attend_the_selected_map():
    rec, images, tokens = _coattention()
    box = widgets.coattention_explorer(rec, images, tokens, target_names=["yes", "no"])
    (row, maps), controls = _parts(box)
    for image in (row, maps):
        _assert_picture(image)
    pair, view, layer, step, head = (controls[d] for d in ("map", "view", "layer", "after", "head"))
    assert pair.value == ("text", "image") and view.value == "relevancy" and layer.disabled and head.disabled
    assert [rec.layers[i].kind for _, i in layer.options] == ["cross", "cross"]  # the text->image layers
    _move(view, "head", [row])
    assert not layer.disabled and step.disabled
    for p in views.PAIRS:  # every map: the layer menu follows it, and the head view draws a figure
        moved = _move(pair, p, [row, maps])
        attending = [v for _, v in layer.options]
        assert attending == views.layers_attending(rec, p) and attending
        # it opens on the last layer the explained score reaches (a non-zero Eq. 5 map), else the last one
        reached = [i for i in attending if rec.layers[i].attn_bar[0, 0].any()]
        assert layer.value == (reached or attending)[-1]
        assert all((rec.layers[i].query, rec.layers[i].key) == p for i in attending)
        _assert_picture(row)
        assert moved[1] > 0.001  # the frame moves to the selected map
    pair.value = ("text", "image")
    first, last = (v for _, v in layer.options)
    assert _move(layer, first, [row])[0] > 0.01
    assert _move(head, 1, [row])[0] > 0.01
    _move(view, "relevancy", [row])
    assert _move(step, 0, [row, maps])[1] > 0.01
    assert min(_move(pair, ("image", "image"), [row, maps])) > 0.01
    assert _move(controls["row token"], 2, [row, maps])[1] == 0  # one row: only the row view is redrawn


def _unreached(rec, layer: int):
    """``rec`` with recorded layer ``layer`` as if the explained score never reached it (zero gradient),
    each of its heads attending mostly one key (a tiny random model's heads attend almost uniformly)."""
    from dataclasses import replace

    chosen = rec.layers[layer]
    b, h, nq, nk = chosen.attn.shape
    peaked = torch.full((b, h, nq, nk), 0.1 / max(nk - 1, 1))
    peaked[:, torch.arange(h), :, torch.arange(h) % nk] = 0.9  # head k attends key k
    zeroed = replace(
        chosen, attn=peaked, grad=torch.zeros_like(chosen.grad), attn_bar=torch.zeros_like(chosen.attn_bar),
        reached=False,
    )  # fmt: skip
    return replace(rec, layers=[zeroed if i == layer else entry for i, entry in enumerate(rec.layers)])


def test_head_view_shows_what_an_unreached_head_attends_beside_its_zero_contribution():
    rec, images, tokens = _coattention()
    last = views.layers_attending(rec, ("text", "image"))[-1]
    rec = _unreached(rec, last)
    fig = widgets.render_stream_row(rec, images, tokens, 0, 1, last, ("text", "image"), 0, "head", 1)
    attention, contribution = (ax.images[1].get_array() for ax in fig.axes[1:3])  # grid overlays over the image
    torch.testing.assert_close(torch.as_tensor(attention.data).flatten(), rec.layers[last].attn[0, 1, 0])
    assert not contribution.any() and attention.max() > 0
    assert "is 0 for every head" in fig.get_suptitle() and "contributes nothing" in fig.get_suptitle()
    plt.close(fig)
    text_fig = widgets.render_stream_row(rec, images, tokens, 0, 1, 0, ("text", "text"), 0, "head", 1)
    heights = [[bar.get_height() for bar in ax.patches] for ax in text_fig.axes]
    drawn = torch.tensor(heights[0], dtype=torch.float32)
    torch.testing.assert_close(drawn, rec.layers[0].attn[0, 1, 0, : len(tokens[0])])
    plt.close(text_fig)
    # in the explorer the head slider changes the picture on that layer too: the attention panel follows it
    box = widgets.coattention_explorer(rec, images, tokens, target_names=["yes", "no"])
    (row, maps), controls = _parts(box)
    _move(controls["view"], "head", [row])
    _move(controls["layer"], last, [row])
    for head in range(1, controls["head"].max + 1):
        assert _move(controls["head"], head, [row])[0] > 0.005


@pytest.mark.parametrize("which", ["layer", "methods", "flow", "head"])
def test_an_explorer_redraw_equals_a_full_draw(setup, which):
    """The explorers draw only what changed (static parts kept, texts and colour bars stamped):
    after a series of changes the picture is the one a full draw of the same figure makes."""
    vit, images, rec = setup
    if which in ("flow", "head"):
        rec, images, tokens = _coattention()
    calls = {
        "layer": [lambda f, k=k: widgets.render_layer(rec, images, k % 2, k, 2 - k % 3, widgets.VIEWS[k % 3], k % 4,
                                                      fig=f) for k in range(5)],
        "methods": [lambda f, k=k: widgets.render_methods(rec, images, k % 2, k, highlight="rollout" if k % 2 else
                                                          "gae", fig=f) for k in range(4)],
        "flow": [lambda f, k=k: widgets.render_flow_step(rec, k % 2, k % 2, -1 - k, views.PAIRS[k % 4], tokens[0],
                                                         fig=f) for k in range(4)],
        "head": None,
    }[which]  # fmt: skip
    if which == "head":
        layer = views.layers_attending(rec, ("text", "image"))[-1]
        calls = [lambda f, k=k: widgets.render_stream_row(rec, images, tokens, k % 2, 0, layer, ("text", "image"), k,
                                                          "head", k % 2, fig=f) for k in range(4)]  # fmt: skip
    fig = calls[0](None)
    blitter = widgets._Blitter(fig)
    blitter.png()
    for call in [*calls[1:], calls[0]]:
        call(fig)
        blitted = _pixels(blitter.png())
        full = _pixels(widgets.figure_png(fig))
        assert blitted.shape == full.shape
        assert _changed(blitted, full) == 0.0
        assert np.abs(blitted - full).max() < 0.02
    plt.close(fig)


def test_a_redraw_after_hiding_a_panel_equals_a_full_draw():
    """A panel the explorer hides (fewer detections in the next image) is not drawn from its old artists."""
    fig = widgets._new_figure((6, 2), live=True)
    axes = fig.subplots(1, 3)
    rng = np.random.default_rng(0)
    images = [ax.imshow(rng.random((4, 4))) for ax in axes]
    for ax, k in zip(axes, range(3)):
        ax.set_title(f"panel {k}")
    blitter = widgets._Blitter(fig)
    blitter.png()
    for shown in (2, 1, 3, 2):
        for k, (ax, image) in enumerate(zip(axes, images)):
            ax.set_visible(k < shown)
            image.set_data(rng.random((4, 4)))
        assert _changed(_pixels(blitter.png()), _pixels(widgets.figure_png(fig))) == 0.0


def test_render_flow_step_frames_the_map_and_subtracts_the_identity():
    rec, images, tokens = _coattention()
    fig = widgets.render_flow_step(rec, index=1, target=1, step=-1, pair=("image", "text"), tokens=tokens[1])
    history = rec.history()
    for ax, (a, b) in zip(fig.axes[:4], views.PAIRS):
        expected = history[-1][(a, b)][1, 1]
        if a == b:
            expected = expected - torch.eye(expected.shape[-1])
        torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array().data), expected)
        assert (ax.spines["top"].get_linewidth() == 3) == ((a, b) == ("image", "text"))
    plt.close(fig)


def test_dual_explorer_records_once_and_matches_explain_dual():
    from test_dual import CAPTIONS, tiny_clip, tokenized

    from gae_utils.dual import explain_dual

    model = tiny_clip()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    texts = tokenized(CAPTIONS)
    words = [["a", "b"], ["c", "d", "e", "f"], ["g"]]
    rec = views.dual_record(model, images, texts)
    one = explain_dual(model, images[2:3], {k: v[1:2] for k, v in texts.items()}, pairs="diagonal")
    image_tower, text_tower = views.dual_tower(rec, "image"), views.dual_tower(rec, "text")
    torch.testing.assert_close(image_tower.relevance["image"][2, 1], one.image.relevance["image"][0])
    torch.testing.assert_close(text_tower.relevance["text"][1, 2], one.text.relevance["text"][0])
    box = widgets.dual_explorer(model, images, texts, words)
    (view,), controls = _parts(box)
    _assert_picture(view)
    assert controls["start_layer"].max == 2  # the image tower's 3 layers
    for name, value in (("caption", 1), ("image", 2), ("method", "rollout"), ("start_layer", 1)):
        assert _move(controls[name], value, [view])[0] > 0.01, name


def test_translation_explorer_draws_and_redraws():
    from test_seq2seq import batch, tiny_marian

    model = tiny_marian()
    inputs, generated = batch()
    src, tgt = [f"s{i}" for i in range(7)], [f"t{i}" for i in range(5)]
    box = widgets.translation_explorer(model, {k: v[:1] for k, v in inputs.items()}, generated[:1], src, tgt)
    (methods, layer_view), controls = _parts(box)
    for image in (methods, layer_view):
        _assert_picture(image)
    assert min(_move(controls["token"], 3, [methods, layer_view])) > 0.005
    assert _move(controls["method"], "rollout", [methods, layer_view])[1] == 0
    assert _move(controls["head"], 1, [methods, layer_view])[0] == 0
    assert _move(controls["cross layer"], 0, [layer_view])[0] > 0.01


def test_detr_explorer_draws_and_redraws():
    from test_detr import tiny_detr

    from shapesworld.inputs import detr_pixels

    model = tiny_detr(confident_class=2)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    box = widgets.detr_explorer(model, detr_pixels(images), images)
    (all_view, one_view), controls = _parts(box)
    for image in (all_view, one_view):
        _assert_picture(image)
    assert controls["detection"].value == 0
    assert _move(controls["detection"], 3, [all_view, one_view])[1] > 0.01
    decoder = list(controls["decoder layer"].options)
    assert _move(controls["decoder layer"], decoder[0], [one_view])[0] > 0.01
    assert min(_move(controls["image"], 1, [all_view, one_view])) > 0.01
    assert controls["detection"].value == 0


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


def test_explorers_keep_their_state_on_their_own_figure_class():
    """Painters, blitters, live axes and colour bars live on ExplorerFigure, not as private
    attributes set on (or read from) matplotlib's objects."""
    import re
    from pathlib import Path

    from gae_workbook.exploration import widgets

    source = Path(widgets.__file__).read_text()
    assert not re.search(r"\._gae_\w+|\b_colorbar\b|__class__\.__name__", source)
    fig = widgets._new_figure((2, 2), live=True)
    ax = fig.subplots()
    bar = fig.colorbar(ax.imshow([[0.0, 1.0]]), ax=ax)
    assert fig.colorbars == {bar.ax: bar} and widgets.live_axes(ax) is ax and fig.live_axes == [ax]


def test_relevancy_after_a_layer_of_a_co_attention_block_is_that_block_s_history_entry():
    from gae_utils.propagation import layer_steps

    rec, _, _ = _coattention()
    history = rec.history()
    steps = layer_steps(rec.layers)
    assert len(history) == len(steps) < len(rec.layers)  # blocks share an entry: indexing by layer is wrong
    for step, layers in enumerate(steps):
        for layer in layers:
            key = (rec.layers[layer].query, rec.layers[layer].key)
            assert views.history_step(rec, layer) == step
            shown = views.layer_matrix(rec, 0, 0, layer, "relevancy", history=history)
            assert torch.equal(shown, history[step][key][0, 0])
    checked = 0
    for layer, record in enumerate(rec.layers):  # what a layer added: its step's entry less the one before
        step = views.history_step(rec, layer)
        if record.query == record.key and step > 0:
            key = (record.query, record.key)
            added = views.relevancy_added(rec, 0, 0, layer, history=history)
            assert torch.equal(added, history[step][key][0, 0] - history[step - 1][key][0, 0])
            checked += 1
    assert checked > 0
