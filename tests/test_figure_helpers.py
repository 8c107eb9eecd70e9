"""The notebooks' one-call figure helpers (``gae_workbook.exploration.figures``) draw what they say, on the
embedded models: the values in each panel are the explanation's, not a re-computation."""

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import gae_utils as gu
from gae_workbook.exploration import figures, views
from gae_workbook.models import zoo
from shapesworld.scenes import CLASS_NAMES, ShapesWorld


def _images(ax) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for im in ax.images]


def test_perturbation_panels_draw_each_test_with_its_auc():
    steps = [0.0, 0.5, 1.0]
    curves = {"gae": torch.tensor([[1.0, 0.2, 0.0], [1.0, 0.9, 0.8]]), "random": torch.tensor([[1.0, 0.5, 0.0]] * 2)}
    results = {"gae": {"pos_auc": 12.5, "neg_auc": 80.0}, "random": {"pos_auc": 50.0, "neg_auc": 51.0}}
    panels = [("positive", "pos_auc", "removed"), ("negative", "neg_auc", "removed")]
    fig = figures.plot_perturbation_panels(curves, results, steps, panels)
    axes = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in axes] == ["positive", "negative"]
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), [1.0, 0.9, 0.8])  # gae's second test
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["GAE (AUC 12.5)", "random (AUC 50.0)"]
    assert "AUC 80.0" in axes[1].get_legend().get_texts()[0].get_text()
    plt.close(fig)
    one = figures.plot_perturbation_panels(curves, results, steps, panels[:1])  # the first test only
    assert sum(bool(ax.lines) for ax in one.axes) == 1 and not one.axes[1].axison
    plt.close(one)
    with pytest.raises(ValueError, match="3 panels for curves of 2 tests"):
        figures.plot_perturbation_panels(curves, results, steps, panels + panels[:1])


def test_word_strips_one_row_per_question_one_column_per_target():
    words = [["what", "colour"], ["is", "there", "a"]]
    logit = torch.tensor([[0.0, 1.0, 3.0, 9.0, 9.0], [0.0, 2.0, 4.0, 6.0, 9.0]])  # [CLS], words, [SEP]/padding
    fig = figures.plot_word_strips({"logit": logit, "log-probability": logit / 10}, words)
    grid = np.array(fig.axes).reshape(2, 2)
    np.testing.assert_allclose(_images(grid[0, 0])[0][0], [0.0, 1.0])  # min-max of (1, 3): padding not drawn
    np.testing.assert_allclose(_images(grid[1, 0])[0][0], [0.0, 0.5, 1.0])
    assert grid[0, 0].get_ylabel() == "max 3.0e+00" and grid[0, 1].get_ylabel() == "max 3.0e-01"
    assert "log-probability" in grid[0, 1].get_title(loc="left")
    plt.close(fig)


def test_sentence_pairs_need_the_tokens():
    pair = SimpleNamespace(tokens_first=None, tokens_second=None)
    with pytest.raises(ValueError, match="tokenizer=tokenizer"):
        figures.plot_sentence_pairs(pair)


@pytest.fixture(scope="module")
def detr_setup():
    detr = zoo.load("shapes-detr")
    batch = ShapesWorld(seed=99).batch(2)
    from shapesworld.inputs import detr_pixels

    pixels = detr_pixels(batch.images)
    return detr, batch, pixels, views.explore_detr(detr, pixels)


def test_detection_helpers_show_the_recorded_maps(detr_setup):
    detr, batch, pixels, rec = detr_setup
    slots = figures.first_detection_per_class(rec, n_images=2)
    assert slots and all(rec.extra["queries"][b][k] >= 0 for b, k in slots)
    for b in (0, 1):  # one slot per class of each image
        classes = [int(rec.target[b, k]) for bb, k in slots if bb == b]
        assert len(classes) == len(set(classes))
    fig = figures.plot_detection_methods(rec, batch.images, slots, CLASS_NAMES, ["gae", "rollout"])
    rows = np.array([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]).reshape(len(slots), 3)
    b, k = slots[-1]
    assert CLASS_NAMES[int(rec.target[b, k])] in rows[-1, 0].get_ylabel()
    heat = rec.explanation("rollout").heatmap(tuple(batch.images.shape[-2:]))[b, k]
    np.testing.assert_allclose(_images(rows[-1, 2])[-1], heat.numpy(), atol=1e-6)
    plt.close(fig)

    fig = figures.plot_query_mixing(rec, *slots[0])
    expected = rec.explanation("gae").maps[("query", "query")][slots[0]] - torch.eye(8)
    np.testing.assert_allclose(_images(fig.axes[0])[0], expected.numpy(), atol=1e-7)
    assert f"query {rec.extra['queries'][slots[0][0]][slots[0][1]]}" in fig.axes[0].get_title()
    plt.close(fig)


def test_segmentation_examples_pair_maps_with_true_masks(detr_setup):
    detr, batch, pixels, rec = detr_setup
    fig = figures.plot_segmentation_examples(rec, detr, pixels, batch.images, batch.scenes, n_images=1)
    rows = np.array(fig.axes).reshape(-1, 4)  # input, GAE map, Otsu foreground, ground truth
    masks = {tuple(np.flatnonzero(o.mask)[:5]) for o in batch.scenes[0].objects}
    for row in rows:
        truth = _images(row[3])[-1] > 0.5
        assert tuple(np.flatnonzero(truth)[:5]) in masks  # each row's truth is one object of image 0
        heat, otsu = _images(row[1])[-1], _images(row[2])[-1]
        assert otsu.any() and heat[otsu > 0.5].mean() > heat[otsu < 0.5].mean()  # foreground = high relevance
    plt.close(fig)


def test_token_methods_and_alignment_methods_draw_every_method():
    from gae_utils.generation import record_generation
    from gae_workbook.models.translator import greedy_decode
    from shapesworld.inputs import encode_sources, translate_vocabulary
    from shapesworld.language import caption
    from shapesworld.stories import draw_stories, encode_stories, story_vocabulary

    lm, vocab = zoo.load("shapes-lm"), story_vocabulary()
    inputs = encode_stories(draw_stories(seed=3, n=2, rng=np.random.default_rng(0)), vocab)
    rec = gu.record(lm, inputs)
    n = int(inputs["attention_mask"][1].sum())
    tokens = vocab.decode(inputs["input_ids"][1, :n], skip_special=False)
    fig = figures.plot_token_methods(rec, ["gae", "raw_attention"], 1, tokens, frame=3, title="t")
    strips = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(fig.axes) == 2 * len(strips)  # one colour bar per strip: raw values
    relevance = rec.explanation("raw_attention").relevance["text"][1, :n]
    drawn = strips[1].images[0].get_array()  # a masked array
    assert drawn.mask[0, n - 1] and not drawn.mask[0, : n - 1].any()  # the explained position is left out
    np.testing.assert_allclose(drawn[0, : n - 1], relevance[: n - 1].numpy(), atol=1e-6)  # raw, not min-max
    vmin, vmax = strips[1].images[0].get_clim()
    assert vmin == 0.0 and vmax == pytest.approx(float(relevance[: n - 1].max()))  # the scale ignores A:
    assert [p.get_x() for p in strips[0].patches] == [n - 1.5, 2.5]  # the explained position, the framed token
    plt.close(fig)

    model, tv = zoo.load("shapes-translate"), translate_vocabulary()
    cap = caption(ShapesWorld(seed=5).scene(0))
    src = encode_sources([cap], tv, length=None)
    generated = greedy_decode(model, src, tv.bos_id, tv.eos_id, tv.pad_id)
    grec = record_generation(model, src, generated)
    target_tokens = tv.decode(generated[0, 1:], skip_special=False)
    fig = figures.plot_alignment_methods(grec, [*cap.words, "</s>"], target_tokens, gu.method_names(), highlight=0)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == [gu.methods.method_label(m) for m in gu.method_names()]
    assert len(fig.axes) == len(panels) + 1  # one shared colour bar
    plt.close(fig)


def test_coattention_flow_shows_the_steps_around_each_block():
    from shapesworld.inputs import vqa_inputs
    from shapesworld.language import Vocabulary, questions

    vqa = zoo.load("shapes-vqa")
    scene = ShapesWorld(seed=123).scene(0)
    chosen = questions(scene)[:2]
    x = vqa_inputs(ShapesWorld(seed=123).batch(1).images.expand(2, -1, -1, -1), chosen, Vocabulary.questions())
    rec = gu.record(vqa, x)
    tokens = ["[CLS]", *chosen[1].words, "[SEP]"]
    fig = figures.plot_coattention_flow(rec, tokens, example=1)
    panels = np.array([ax for ax in fig.axes if ax.images]).reshape(-1, 4)  # R[t,t]-I, R[t,i], R[i,t], R[i,i]-I
    blocks = sum(len(step) == 2 for step in gu.propagation.layer_steps(rec.layers))
    assert panels.shape[0] == blocks + 2  # before the first block, after each block, at the end
    assert not _images(panels[0, 1])[0].any() and not _images(panels[0, 2])[0].any()  # streams not yet connected
    final = rec.history()[-1][("text", "image")][1, 0][: len(tokens)]
    np.testing.assert_allclose(_images(panels[-1, 1])[0], final.numpy(), atol=1e-7)
    assert panels[0, 0].get_ylabel().startswith("after the")
    plt.close(fig)


def test_rule_steps_show_which_rows_of_abar_are_non_zero():
    model = zoo.load("shapes-vit")
    images = ShapesWorld(seed=2024).batch(1).images
    rec = gu.record(model, images)
    fig = figures.plot_rule_steps(rec, images)
    bars = [ax for ax in fig.axes if ax.patches and ax.get_yscale() == "log"]
    assert len(bars) == len(rec.layers)
    for ax, layer in zip(bars, rec.layers):
        sums = layer.attn_bar[0, 0].clamp(min=0).sum(-1)
        np.testing.assert_allclose([p.get_height() for p in ax.patches], sums.numpy(), rtol=1e-6)
        assert f"non-zero rows: {int((sums > 0).sum())} of" in " ".join(t.get_text() for t in ax.texts)
    assert "non-zero rows: 1 of 65" in " ".join(t.get_text() for t in bars[-1].texts)  # only CLS in the last
    plt.close(fig)


def test_region_maps_print_each_panels_own_maximum_under_it():
    image = torch.rand(3, 64, 64)
    rows = {"a": torch.arange(32.0).reshape(2, 16), "b": torch.ones(2, 16)}
    fig = figures.plot_region_maps(image, rows, ["q0", "q1"])
    panels = np.array(fig.axes[:-1]).reshape(2, 3)[:, 1:]
    assert [ax.get_xlabel() for ax in panels[0]] == ["raw max 1.5e+01", "raw max 3.1e+01"]
    assert panels[0, 0].get_ylabel() == "a"  # the row label holds no value
    plt.close(fig)


def test_small_matrices_write_every_value_in_its_cell():
    a = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    fig = figures.plot_small_matrices({"A": a, "I + A": torch.eye(3) + a}, ["[CLS]", "p1", "p2"], title="t")
    assert [ax.get_title() for ax in fig.axes] == ["A", "I + A"]
    np.testing.assert_allclose(_images(fig.axes[1])[0], (torch.eye(3) + a).numpy())
    assert [t.get_text() for t in fig.axes[0].texts] == [f"{v:.2f}" for v in a.flatten().tolist()]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["[CLS]", "p1", "p2"]
    plt.close(fig)
