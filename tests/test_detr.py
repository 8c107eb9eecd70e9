"""DETR (encoder-decoder): the Hugging Face adapter, per-query targets, the rules, no side effects, shapes-detr."""

import time

import pytest
import torch

import gae_utils as gu
from gae_utils.adapters import find_adapter
from gae_utils.adapters.hf_detr import detr_grid
from gae_utils.explanation import Explanation
from gae_utils.layout import Readout, Segment, TokenLayout
from gae_workbook.evaluation.metrics import box_iou, detection_map
from gae_workbook.exploration import views
from gae_workbook.models import zoo
from gae_workbook.models.detection import detect, detections, object_heatmaps
from shapesworld.inputs import detr_pixels
from shapesworld.scenes import ShapesWorld
from shapesworld.targets import scene_targets
from tests.reference import reference_detr_gae


def tiny_detr(seed=0, attn="eager", confident_class=None):
    torch.manual_seed(seed)
    model = zoo.build(zoo.EMBEDDED["shapes-detr"]).eval()
    if attn != "eager":
        model.config._attn_implementation = attn  # as loaded with attn_implementation=attn
    if confident_class is not None:  # every query detects this class with probability ~1
        with torch.no_grad():
            model.class_labels_classifier.bias[confident_class] = 30.0
    return model


@pytest.fixture(scope="module")
def detr():
    return tiny_detr()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 5, 32, 40, generator=torch.Generator().manual_seed(3))  # shapes-detr: RGB + x, y


def test_adapter_sites_grid_and_directions(detr, pixels):
    assert find_adapter(detr).name == "hf-detr"
    rec = gu.record(detr, pixels, target=[[0], [1], [2]])
    kinds = [(layer.kind, layer.query, layer.key) for layer in rec.layers]
    assert kinds == [
        ("self", "image", "image"),
        ("self", "image", "image"),
        ("self", "query", "query"),
        ("cross", "query", "image"),
        ("self", "query", "query"),
        ("cross", "query", "image"),
    ]
    # 32 x 40 pixels, stride 8 (ceil at each halving) -> a 4 x 5 feature grid of image tokens
    assert rec.layout.segment("image").grid == (4, 5) and rec.layout.segment("query").n_tokens == 8
    assert rec.layers[3].attn_mean.shape == (3, 8, 20)
    assert detr_grid(20, (32, 40)) == (4, 5) and detr_grid(4, (13, 13)) == (2, 2)


def test_relevance_matches_the_rules_written_out(detr, pixels):
    queries = [[0, 3], [5], [1, 2]]
    exp = gu.explain(detr, pixels, target=queries)
    assert exp.relevance["image"].shape == (3, 2, 20) and exp.relevance["query"].shape == (3, 2, 8)
    for b, row in enumerate(queries):
        for k, q in enumerate(row):
            image_row, query_row, cls = reference_detr_gae(detr, pixels[b : b + 1], q)
            torch.testing.assert_close(exp.relevance["image"][b, k], image_row, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(exp.relevance["query"][b, k], query_row, rtol=1e-4, atol=1e-6)
            assert int(exp.target[b, k]) == cls
            assert image_row.abs().sum() > 0
    # the padding slot of the image with one query carries nothing
    assert exp.extra["queries"] == [[0, 3], [5, -1], [1, 2]]
    assert exp.relevance["image"][1, 1].abs().sum() == 0 and int(exp.target[1, 1]) == -1


def test_each_target_reads_its_own_row(detr, pixels):
    rec = gu.record(detr, pixels, target=torch.tensor([[2, 6], [6, 2], [4, 4]]))
    both = rec.explanation("gae").relevance["image"]  # (3, 2, 20)
    for q in (2, 6):
        single = gu.explain(detr, pixels, target=q).relevance["image"][:, 0]  # (3, 20)
        torch.testing.assert_close(both[0, [2, 6].index(q)], single[0])
        torch.testing.assert_close(both[1, [6, 2].index(q)], single[1])
    torch.testing.assert_close(both[2, 0], both[2, 1])
    maps = rec.maps("gae")[("query", "image")]  # (3, 2, 8, 20): full maps, one per target
    torch.testing.assert_close(both[0, 0], maps[0, 0, 2])
    torch.testing.assert_close(both[0, 1], maps[0, 1, 6])


def test_baselines_read_the_cross_attention_row(detr, pixels):
    rec = gu.record(detr, pixels, target=[[1, 4], [0], [7]])
    raw = rec.explanation("raw_attention").relevance["image"]
    last_cross = rec.layers[-1]
    torch.testing.assert_close(raw[0, 1], last_cross.attn_mean[0, 4])
    torch.testing.assert_close(raw[2, 0], last_cross.attn_mean[2, 7])
    cam = rec.explanation("attn_gradcam").relevance["image"]
    attn, grad = last_cross.attn[0, :, 1], last_cross.grad[0, 0, :, 1]  # (H, 20) of query 1, target 0
    expected = (grad.mean(-1, keepdim=True) * attn).mean(0).clamp(min=0)
    torch.testing.assert_close(cam[0, 0], expected)
    assert rec.explanation("gae_last_layer").relevance["image"].shape == (3, 2, 20)
    rollout = rec.explanation("rollout").relevance["image"]  # the rules on head-mean attention
    bars = [layer.attn_mean[:, None].expand(-1, 2, -1, -1) for layer in rec.layers]
    expected = rec.layout.read(gu.propagate(rec.layers, bars))["image"]
    torch.testing.assert_close(rollout, expected)


def test_default_target_explains_every_confident_detection():
    model = tiny_detr(confident_class=5)
    pixels = torch.randn(2, 5, 32, 32)
    found = detect(model, pixels)
    assert [len(d) for d in found] == [8, 8] and all((d.labels == 5).all() for d in found)
    exp = gu.explain(model, pixels)
    assert exp.extra["queries"] == [list(range(8))] * 2 and (exp.target == 5).all()
    # images with different numbers of detections: the logits decide, no batch-size-1 assumption
    out = model(pixel_values=pixels)
    logits = out.logits.detach().clone()
    logits[0, 3:, :] = 0
    logits[0, 3:, -1] = 50  # image 0: only queries 0..2 are objects
    dets = detections(logits, out.pred_boxes, (32, 32))
    assert [len(d) for d in dets] == [3, 8]


def test_no_detection_and_bad_targets_name_the_fix(detr, pixels):
    with pytest.raises(ValueError, match="no object query.*target="):
        gu.explain(detr, pixels)  # random weights: nothing above 0.5
    with pytest.raises(ValueError, match="out of range.*8 object queries"):
        gu.explain(detr, pixels, target=8)
    with pytest.raises(ValueError, match="query indices"):
        gu.explain(detr, pixels, target=torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one list of query indices per image"):
        gu.explain(detr, pixels, target=[[0], [1]])
    with pytest.raises(TypeError, match="callable target"):
        gu.explain(detr, pixels, target=lambda out: out.logits[:, 0, 0])
    with pytest.raises(ValueError, match=r"images\[None\]"):
        gu.explain(detr, pixels[0], target=0)
    with pytest.raises(ValueError, match="expected 5 channels"):
        gu.explain(detr, pixels[:, :3], target=0)
    with pytest.raises(TypeError, match="pixel_values"):
        gu.explain(detr, {"images": pixels}, target=0)


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        model.config._attn_implementation,
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
    )


def _assert_same(model, before):
    after = _state(model)
    assert after[1:] == before[1:]
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v), k
    assert all(p.grad is None for p in model.parameters())


def test_model_is_unchanged_after_explaining_and_after_an_error(pixels):
    model = tiny_detr(attn="sdpa")
    model.train()
    model.model.backbone.requires_grad_(False)
    before = _state(model)
    assert before[3] == "sdpa"
    for method in ("gae", "raw_attention", "attn_gradcam"):
        gu.explain(model, pixels, target=[[0, 1], [2], [3]], method=method)
        _assert_same(model, before)
    with pytest.raises(ValueError, match="out of range"):
        gu.explain(model, pixels, target=[[0], [99], [1]])  # raises after the forward pass, inside the recorder
    _assert_same(model, before)
    with pytest.raises(ValueError):
        gu.explain(model, torch.full_like(pixels, float("nan")), target=0)
    _assert_same(model, before)


def test_eager_capture_reproduces_the_stock_model(pixels):
    model = tiny_detr(attn="sdpa")
    exp = gu.explain(model, pixels, target=0, verify=True)
    assert exp.relevance["image"].shape == (3, 1, 20)


def test_per_target_row_weights_in_the_layout():
    segments = (Segment("image", 3, 0, (1, 3)), Segment("query", 2))
    layout = TokenLayout(
        segments,
        (Readout("image", "query", "image", per_example_rows=True),),
        {"image": torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])},  # (B=2, K=2, Q=2)
    )
    full = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 2, 3)  # (B, K, Q, N)
    row = layout.read({("query", "image"): full})["image"]  # (2, 2, 3)
    torch.testing.assert_close(row[0, 0], full[0, 0, 0])
    torch.testing.assert_close(row[0, 1], full[0, 1, 1])
    torch.testing.assert_close(row[1, 0], full[1, 0, 1])
    assert row[1, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="row weights for"):
        layout.read({("query", "image"): full[:, :1]})


def test_explanation_with_queries_round_trips(detr, pixels, tmp_path):
    exp = gu.explain(detr, pixels, target=[[1, 2], [3], [0]])
    exp.save(tmp_path / "detr")
    back = Explanation.load(tmp_path / "detr")
    torch.testing.assert_close(back.relevance["image"], exp.relevance["image"])
    torch.testing.assert_close(back.layout.weights["image"], exp.layout.weights["image"])
    assert back.extra["queries"] == [[1, 2], [3, -1], [0, -1]]
    assert back.heatmap((32, 40)).shape == (3, 2, 32, 40)
    heat = object_heatmaps(exp.relevance["image"], (4, 5), (32, 40))
    torch.testing.assert_close(heat, exp.heatmap((32, 40)))


# ----------------------------------------------------------------------------- metrics


def test_box_iou_and_detection_map_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0]], dtype=torch.float64))
    # class 0: two ground-truth boxes (image 0 and 1); detections by score:
    #   0.9 image 0 hit, 0.8 image 0 duplicate (FP), 0.7 image 1 hit (IoU 0.68), 0.6 image 1 wrong place (FP)
    # precision 1, 1/2, 2/3, 2/4 at recall 1/2, 1/2, 1, 1 -> envelope 1, 2/3, 2/3, 1/2 -> AP = 1/2*1 + 1/2*2/3 = 5/6
    # class 1: one box, its only detection has IoU 25/175 < 0.5 -> AP 0.  Class 2: detections, no boxes -> skipped.
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    predictions = [
        (torch.stack([box, box, box + 40]), torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0, 0, 2])),
        (
            torch.stack([box + torch.tensor([2.0, 0, 2, 0]), box + 30, box + torch.tensor([5.0, 5, 5, 5])]),
            torch.tensor([0.7, 0.6, 0.5]),
            torch.tensor([0, 0, 1]),
        ),
    ]
    truth = [(box[None], torch.tensor([0])), (torch.stack([box, box]), torch.tensor([0, 1]))]
    result = detection_map(predictions, truth)
    assert result["per_class"] == {0: pytest.approx(5 / 6), 1: 0.0}
    assert result["map"] == pytest.approx(5 / 12) and result["num_classes"] == 2
    perfect = detection_map([(box[None], torch.tensor([0.5]), torch.tensor([0]))], [(box[None], torch.tensor([0]))])
    assert perfect["map"] == 1.0
    with pytest.raises(ValueError, match="images of predictions"):
        detection_map(predictions, truth[:1])


def test_detr_pixels_add_coordinate_channels():
    images = torch.rand(2, 3, 4, 6)
    x = detr_pixels(images)
    assert x.shape == (2, 5, 4, 6)
    torch.testing.assert_close(x[:, :3], (images - 0.5) / 0.25)
    torch.testing.assert_close(x[0, 3, 0], torch.linspace(-1, 1, 6))  # x varies along the width
    torch.testing.assert_close(x[1, 4, :, 2], torch.linspace(-1, 1, 4))  # y along the height


def test_scene_targets_are_detr_boxes_and_flip():
    scene = ShapesWorld(seed=0).scene(0)
    target = scene_targets([scene])[0]
    x0, y0, x1, y1 = scene.objects[0].box
    torch.testing.assert_close(
        target["boxes"][0], torch.tensor([(x0 + x1) / 128, (y0 + y1) / 128, (x1 - x0) / 64, (y1 - y0) / 64])
    )
    flipped = scene_targets([scene], torch.tensor([True]))[0]
    torch.testing.assert_close(flipped["boxes"][:, 0], 1 - target["boxes"][:, 0])
    assert target["class_labels"].tolist() == [o.label for o in scene.objects]


# ----------------------------------------------------------------------------- zoo, training, evaluation


def test_pretrained_detr_fails_fast_offline(monkeypatch):
    monkeypatch.setattr(zoo, "hub_reachable", lambda *a, **k: False)
    started = time.perf_counter()
    with pytest.raises(
        zoo.PretrainedUnavailableError, match=r"(?s)facebook/detr-resnet-50.*shapes-detr.*pretrained=False"
    ):
        zoo.load("facebook/detr-resnet-50", pretrained=True)
    assert time.perf_counter() - started < 30


def test_short_detr_training_run_lowers_the_loss_and_round_trips(tmp_path):
    from gae_workbook.models.train import train_shapes_detr

    model, card = train_shapes_detr(
        steps=20, batch_size=8, train_scenes=160, warmup=5, eval_n=20, out=tmp_path, progress=False
    )
    assert card.training["loss_last_10"] < card.training["loss_first_10"]
    assert 0.0 <= card.training["heldout"]["map50"] <= 1.0
    loaded = zoo.load("shapes-detr", directory=tmp_path)
    x = detr_pixels(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)


# ----------------------------------------------------------------------------- widgets


def test_detr_render_callbacks():
    import matplotlib.pyplot as plt

    from gae_workbook.exploration import widgets

    model = tiny_detr(confident_class=2)
    images = torch.rand(2, 3, 32, 32)
    rec = views.explore_detr(model, detr_pixels(images))
    assert rec.layers[-1].attn is not None and rec.layers[2].grad is not None  # per-head maps kept
    boxes = views.detr_boxes(rec, (32, 32))
    assert boxes.shape == (2, 8, 4)
    fig = widgets.render_detections(rec, images, index=1, method="raw_attention")
    assert len(fig.axes) == 9
    plt.close(fig)
    for layer, view, head in ((-1, "attention", None), (-1, "attn_bar", 1), (2, "attention", 0), (4, "attn_bar", None)):
        fig = widgets.render_detr_query(rec, images, index=0, detection=3, layer=layer, view=view, head=head)
        assert len(fig.axes) == 3
        plt.close(fig)
    cross = rec.layers[-1]
    torch.testing.assert_close(views.detr_layer_map(rec, 1, 3, -1), cross.attn_mean[1, 3])
    torch.testing.assert_close(views.detr_layer_map(rec, 1, 3, -1, "attention", 2), cross.attn[1, 2, 3])
    bar = views.detr_layer_map(rec, 1, 3, -1, "attn_bar", 2)
    torch.testing.assert_close(bar, (cross.grad[1, 3, 2, 3] * cross.attn[1, 2, 3]).clamp(min=0))
    with pytest.raises(ValueError, match="encoder layer"):
        views.detr_layer_map(rec, 0, 0, 0)
    with pytest.raises(ValueError, match="out of range"):
        widgets.render_detr_query(rec, images, index=0, detection=8)
    with pytest.raises(ValueError, match="head 9"):
        views.detr_layer_map(rec, 0, 0, -1, head=9)
    with pytest.raises(ValueError, match="unknown view"):
        views.detr_layer_map(rec, 0, 0, -1, view="heads")


# ----------------------------------------------------------------------------- the shipped checkpoint


@pytest.fixture(scope="module")
def shipped():
    return zoo.load("shapes-detr")


def test_shipped_shapes_detr_card_is_reproducible(shipped):
    from gae_workbook.models.detection import evaluate_detection
    from gae_workbook.models.train import HELDOUT_SEED
    from shapesworld.scenes import CLASS_NAMES

    assert find_adapter(shipped).name == "hf-detr" and not shipped.training
    assert shipped.card.classes == list(CLASS_NAMES)
    recorded = shipped.card.training["heldout"]
    fresh = evaluate_detection(shipped, ShapesWorld(seed=HELDOUT_SEED), n=recorded["n"])
    assert fresh["map50"] == pytest.approx(recorded["map50"], abs=1e-4)
    assert fresh["confident_recall"] == pytest.approx(recorded["confident_recall"], abs=1e-4)
    with pytest.raises(ValueError, match="'confident' or 'matched'"):
        from gae_workbook.evaluate import evaluate_detr

        evaluate_detr(shipped, n=2, queries="all")


def test_shipped_detector_explains_each_object_of_a_batch(shipped):
    from gae_workbook.models.detection import box_matched_queries

    batch = ShapesWorld(seed=11).batch(6)
    pixels = detr_pixels(batch.images)
    with torch.no_grad():
        out = shipped(pixel_values=pixels)
    matched = box_matched_queries(out.pred_boxes, batch.scenes)
    assert sum(map(len, matched)) >= 0.8 * sum(len(s.objects) for s in batch.scenes)  # it localises
    queries = [[q for q, _ in row] for row in matched]
    exp = gu.explain(shipped, pixels, target=queries)
    k = max(map(len, queries))
    assert exp.relevance["image"].shape == (6, k, 64)
    for b, row in enumerate(queries):
        assert exp.extra["queries"][b] == row + [-1] * (k - len(row))
        assert exp.target[b, : len(row)].tolist() == out.logits[b, row, :-1].argmax(-1).tolist()
    found = detect(shipped, pixels)
    assert sum(map(len, found)) >= sum(
        len(s.objects) for s in batch.scenes
    )  # confident detections for every object (some duplicated)
    default = gu.explain(shipped, pixels)  # the paper's default: every confident detection
    assert [[q for q in r if q >= 0] for r in default.extra["queries"]] == [d.queries.tolist() for d in found]


def test_shipped_detector_meets_the_aim_and_gae_segments_its_detections(shipped):
    from gae_workbook.evaluate import evaluate_detr

    assert shipped.card.training["heldout"]["map50"] >= 0.8  # the aim, recomputed by the test above
    results = evaluate_detr(shipped, n=40, seed=5, methods=["gae", "rollout"], progress=False)
    assert results["gae"]["pairs"] >= 60  # confident detections matched to an object
    assert results["gae"]["pointing"] >= 0.95
    assert results["gae"]["miou"] > results["random"]["miou"] + 0.3
    assert results["gae"]["miou"] > results["rollout"]["miou"]


def test_evaluate_detr_scores_every_method(shipped):
    from gae_workbook.evaluate import evaluate_detr, main

    results = evaluate_detr(shipped, n=12, batch_size=6, progress=False, queries="matched")
    assert set(results) == {"gae", "gae_last_layer", "raw_attention", "rollout", "attn_gradcam", "random"}
    for row in results.values():
        assert 0 <= row["miou"] <= 1 and 0 <= row["pointing"] <= 1 and row["pairs"] > 0
    argv = ["--model", "shapes-detr", "--n", "6", "--batch-size", "6", "--no-progress", "--methods", "gae"]
    out = main([*argv, "--queries", "matched"])
    assert set(out) == {"gae", "random"}


def test_detr_benchmark_reports_ratios(shipped):
    from gae_workbook.tools.bench import run_detr_benchmark

    result = run_detr_benchmark("shapes-detr", batch=2, repeats=1)
    seconds = result["seconds"]  # timings are the benchmark's to report, not a test's to bound
    assert all(t > 0 for t in seconds.values())
    ratio = result["ratios"]["explain_all_detections / forward"]
    assert ratio == pytest.approx(seconds["explain_all_detections"] / seconds["forward"])
    with pytest.raises(ValueError, match="detr-r50"):
        run_detr_benchmark("detr-r18")


def test_detr_explorer_opens_on_the_first_detection_with_the_head_mean(monkeypatch):
    ipywidgets = pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    from gae_workbook.exploration import widgets

    drawn = []
    monkeypatch.setattr(widgets, "_show", lambda out, fig: (drawn.append(fig), plt.close(fig)))
    model = tiny_detr(confident_class=2)
    images = torch.rand(2, 3, 32, 32)
    box = widgets.detr_explorer(model, detr_pixels(images), images)
    controls = [w for child in box.children for w in getattr(child, "children", (child,))]
    detection, head = (next(w for w in controls if getattr(w, "description", "") == d) for d in ("detection", "head"))
    assert isinstance(detection, ipywidgets.Dropdown) and detection.value == 0  # not None: update() draws
    assert head.value == widgets.MEAN_HEAD and head.label == "mean"
    assert len(drawn) == 2  # both views drew a figure on opening, before any click
    head.value = 1  # a head, then back to the mean: the menu keeps a selection
    head.value = widgets.MEAN_HEAD
    assert head.label == "mean"
    index = next(w for w in controls if getattr(w, "description", "") == "image")
    index.value = 1
    assert detection.value == 0
