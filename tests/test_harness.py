"""The evaluation harness on small data made in every supported layout, checked against direct computation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from gae_utils import explain
from gae_utils.heatmaps import upsample_maps
from gae_workbook.evaluation import harness
from gae_workbook.evaluation.datasets import open_data, write_imagenet_seg
from gae_workbook.evaluation.metrics import (
    SEGMENTATION_COUNTS,
    perturbation_auc,
    perturbation_curve,
    replacement_curve,
    segmentation_counts,
    segmentation_from_counts,
    segmentation_scores,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_TIMM = [
    "--model",
    "timm:vit_tiny_patch16_224",
    "--model-kwargs",
    '{"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 3}',
]


def _scenes(n: int, seed: int = 11) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """ShapesWorld scenes as uint8 images, the class of each scene's largest object and its mask."""
    from shapesworld.scenes import ShapesWorld

    batch = ShapesWorld(seed=seed).batch(n)
    areas = batch.masks.flatten(2).sum(-1)  # (n, 16)
    labels = areas.argmax(1)  # (n,)
    images = [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in batch.images]
    masks = [batch.masks[i, labels[i]].numpy() for i in range(n)]
    return images, labels.tolist(), masks


def _image_folder(root: Path, n_per_class: int = 3, classes: int = 3, size=(40, 48)) -> tuple[Path, Path]:
    """An ImageFolder tree of random images and a folder of same-stem masks."""
    rng = np.random.default_rng(0)
    images, masks = root / "images", root / "masks"
    masks.mkdir(parents=True)
    for c in range(classes):
        (images / f"class{c}").mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                images / f"class{c}" / f"im{c}{i}.png"
            )
            mask = np.zeros(size, np.uint8)
            mask[5 + i : 25, 8 : 30 + c] = 255
            Image.fromarray(mask).save(masks / f"im{c}{i}.png")
    return images, masks


def _run(tmp_path: Path, *args: str, out: str = "run") -> dict:
    report = harness.main([*args, "--out", str(tmp_path / out), "--no-progress"])
    assert report == json.loads((tmp_path / out / "results.json").read_text())
    return report


# ----------------------------------------------------------------------------- data layouts


def test_imagenet_seg_file_reads_as_the_authors_code(tmp_path):
    images, _, masks = _scenes(3)
    images[1] = images[1][:, :40]  # a non-square image: H and W must not be swapped
    masks[1] = masks[1][:, :40]
    path = write_imagenet_seg(tmp_path / "gtsegs_ijcv.mat", images, masks)
    with h5py.File(path, "r") as f:  # the reads of the authors' Imagenet_Segmentation.__getitem__
        assert len(f["/value/img"]) == 3
        img = np.array(f[f["/value/img"][1, 0]]).transpose((2, 1, 0))
        target = np.array(f[f[f["/value/gt"][1, 0]][0, 0]]).transpose((1, 0))
    np.testing.assert_array_equal(img, images[1])
    np.testing.assert_array_equal(target, masks[1])
    data = open_data(path)
    assert len(data) == 3 and data.has_masks and not data.has_labels
    sample = data[1]
    np.testing.assert_array_equal(np.asarray(sample.image), images[1])
    np.testing.assert_array_equal(sample.mask, masks[1])


def test_open_data_folder_hf_and_errors(tmp_path):
    import datasets

    images, masks = _image_folder(tmp_path)
    folder = open_data(images, masks)
    assert len(folder) == 9 and folder.has_labels and folder.has_masks
    assert [folder[i].label for i in (0, 3, 8)] == [0, 1, 2]  # sorted class folders
    assert folder[4].mask.sum() == np.count_nonzero(np.asarray(Image.open(masks / "im11.png")))
    flat = open_data(images / "class1")
    assert len(flat) == 3 and not flat.has_labels and flat[0].label == -1

    (masks / "im22.png").unlink()
    with pytest.raises(ValueError, match="no mask"):
        open_data(images, masks)

    scene_images, labels, scene_masks = _scenes(4)
    rows = {
        "image": [Image.fromarray(i) for i in scene_images],
        "label": labels,
        "mask": [Image.fromarray(m.astype(np.uint8) * 255) for m in scene_masks],
    }
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows)}
    ).save_to_disk(str(tmp_path / "hf"))
    hf = open_data(tmp_path / "hf")  # the validation split by default
    assert len(hf) == 4 and hf.has_labels and hf.has_masks and hf[2].label == labels[2]
    np.testing.assert_array_equal(hf[2].mask, scene_masks[2])
    with pytest.raises(ValueError, match="split 'test'"):
        open_data(tmp_path / "hf", split="test")
    with pytest.raises(FileNotFoundError):
        open_data(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- metrics on hand-checked cases


def test_segmentation_counts_by_hand_and_additive():
    maps = torch.tensor([[[0.9, 0.1], [0.8, 0.2]]])  # mean 0.5: foreground = left column
    masks = torch.tensor([[[True, False], [False, False]]])
    counts = dict(zip(SEGMENTATION_COUNTS, segmentation_counts(maps, masks, ap_over_both_classes=True).tolist()))
    # fg & mask = {(0,0)}; fg | mask = left column; bg & ~mask = right column; ~fg | ~mask = 3 pixels
    # two-channel AP: scores [1-m, m] of the normalised map [[1, 0], [.875, .125]] against [~mask, mask]:
    # ties 1.0: 2 positives -> P = 1, 1; tie .875: 1 of 2 positive -> P = 3/4; tie .125: 1 of 2 -> P = 4/6
    ap = (1 + 1 + 0.75 + 4 / 6) / 4
    assert counts == pytest.approx(
        {
            "inter_fg": 1,
            "union_fg": 2,
            "inter_bg": 2,
            "union_bg": 3,
            "correct": 3,
            "labeled": 4,
            "ap_sum": ap,
            "images": 1,
        }
    )
    scores = segmentation_from_counts(segmentation_counts(maps, masks, ap_over_both_classes=True))
    assert scores == pytest.approx({"pixel_accuracy": 0.75, "miou": (1 / 2 + 2 / 3) / 2, "map": ap})

    gen = torch.Generator().manual_seed(0)
    maps, masks = torch.rand(6, 8, 8, generator=gen), torch.rand(6, 8, 8, generator=gen) > 0.6
    summed = segmentation_counts(maps[:2], masks[:2]) + segmentation_counts(maps[2:], masks[2:])
    assert segmentation_from_counts(summed) == pytest.approx(segmentation_scores(maps, masks))


def test_replacement_curve_by_hand():
    start = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    end = torch.zeros_like(start)
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.7]]])  # removal order: 2.0, 4.0, 3.0, 1.0
    curve = replacement_curve(lambda x, t: x.flatten(1).sum(1), start, end, maps, torch.tensor([0]), [0, 0.25, 0.5, 1])
    assert curve.tolist() == [[10.0, 8.0, 4.0, 0.0]]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        replacement_curve(lambda x, t: x.sum(), start, end, maps, torch.tensor([0]), [1.5])


# ----------------------------------------------------------------------------- the harness end to end


def test_harness_matches_direct_computation_on_a_segmentation_file(tmp_path):
    """shapes-vit on a gtsegs_ijcv.mat file: GAE's numbers equal the metric functions applied by hand."""
    from gae_workbook.models.zoo import load

    images, _, masks = _scenes(6)
    write_imagenet_seg(tmp_path / "seg.mat", images, masks)
    report = _run(
        tmp_path, "--model", "shapes-vit", "--data", str(tmp_path / "seg.mat"), "--methods", "gae", "rollout", "random",
        "--batch-size", "4", "--shard-size", "4",
    )  # fmt: skip
    assert report["plan"]["classes"] == ["pred"]  # no labels in the file
    gae = report["results"]["gae"]

    model = load("shapes-vit")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # shapes-vit reads [0, 1]
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    pixels = upsample_maps(explain(model, x, predicted).grid_relevance(), (64, 64))  # (6, 64, 64)
    expected = segmentation_scores(pixels, torch.from_numpy(np.stack(masks)), ap_over_both_classes=True)
    for key, value in expected.items():
        assert gae[key] == pytest.approx(value, abs=1e-6)

    def correct(images, targets):
        return model(images).argmax(-1) == targets

    for sign, positive in (("pos", True), ("neg", False)):
        curve = perturbation_curve(correct, x, pixels, predicted, positive)
        assert gae[f"{sign}_auc_pred"] == pytest.approx(perturbation_auc(curve), abs=1e-6)
    assert gae["pos_auc_pred"] < gae["neg_auc_pred"]  # a trained model: GAE's most relevant pixels matter most
    assert report["results"]["random"]["s_per_image"] == 0
    assert 0 <= gae["deletion_auc"] <= 1 and 0 <= gae["insertion_auc"] <= 1
    assert len(report["curves"]["gae"]["deletion"]) == 17


def test_harness_timm_image_folder_every_protocol_and_a_user_method(tmp_path, monkeypatch):
    images, masks = _image_folder(tmp_path)
    (tmp_path / "user_maps.py").write_text(
        "import torch\n\ndef center(model, pixel_values, target):\n"
        "    maps = torch.zeros(pixel_values.shape[0], 5, 5)\n    maps[:, 2, 2] = 1\n    return maps\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    report = _run(
        tmp_path, *TINY_TIMM, "--data", str(images), "--masks", str(masks), "--methods", "gae", "attn_gradcam",
        "saliency", "lxt_cp_lrp", "--method", "center=user_maps:center", "--batch-size", "4", "--shard-size", "4",
    )  # fmt: skip
    results = report["results"]
    assert list(results) == ["gae", "attn_gradcam", "saliency", "center"]  # LXT cannot run a timm ViT: skipped
    metrics = {"pos_auc_pred", "neg_auc_pred", "pos_auc_gt", "neg_auc_gt", "pixel_accuracy", "miou", "map"}
    metrics |= {"deletion_auc", "insertion_auc", "s_per_image", "images"}
    for row in results.values():
        assert set(row) == metrics and row["images"] == 9
        assert all(np.isfinite(v) for v in row.values())
        assert 0 <= row["pos_auc_gt"] <= 90 and 0 <= row["miou"] <= 1
    assert results["gae"]["s_per_image"] > 0
    assert results["center"]["pixel_accuracy"] != results["gae"]["pixel_accuracy"]


def test_harness_hugging_face_model_and_dataset(tmp_path):
    from conftest import tiny_hf_vit
    from transformers import ViTImageProcessor

    model = tiny_hf_vit()
    model.save_pretrained(tmp_path / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    import datasets

    scene_images, labels, scene_masks = _scenes(5)
    datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(i) for i in scene_images],
            "label": [label % 7 for label in labels],
            "mask": [Image.fromarray(m.astype(np.uint8) * 255) for m in scene_masks],
        }
    ).save_to_disk(str(tmp_path / "hf"))
    report = _run(
        tmp_path, "--model", str(tmp_path / "model"), "--data", str(tmp_path / "hf"), "--methods", "gae", "random",
        "--batch-size", "2", "--shard-size", "3", "--curve-steps", "4",
    )  # fmt: skip
    assert report["plan"] == {"classes": ["pred", "gt"], "protocols": list(harness.PROTOCOLS), "curve_steps": 4}
    assert report["results"]["gae"]["images"] == 5
    assert len(report["curves"]["gae"]["perturbation_gt_neg"]) == 10


def test_bfloat16_reports_the_deviation_from_float32(tmp_path):
    images, masks = _image_folder(tmp_path, n_per_class=2)
    report = _run(
        tmp_path, *TINY_TIMM, "--data", str(images), "--methods", "gae", "--protocols", "perturbation",
        "--dtype", "bfloat16", "--batch-size", "3",
    )  # fmt: skip
    deviation = report["dtype_deviation_first_batch"]["gae"]
    assert 0 < deviation["max_abs_map_diff"] < 1  # bf16 maps differ, but are the same maps
    assert set(deviation) == {"max_abs_map_diff", "pos_auc_pred", "neg_auc_pred", "pos_auc_gt", "neg_auc_gt"}


def test_clear_errors(tmp_path):
    images, masks = _image_folder(tmp_path, n_per_class=1)
    with pytest.raises(ValueError, match="no masks"):
        _run(tmp_path, *TINY_TIMM, "--data", str(images), "--protocols", "segmentation")
    with pytest.raises(ValueError, match="unknown method 'gea'"):
        _run(tmp_path, *TINY_TIMM, "--data", str(images), "--methods", "gea")
    with pytest.raises(ValueError, match="name=module:function"):
        _run(tmp_path, *TINY_TIMM, "--data", str(images), "--method", "oops")
    common = [*TINY_TIMM, "--data", str(images), "--methods", "random", "--protocols", "perturbation"]
    _run(tmp_path, *common, out="same")
    with pytest.raises(ValueError, match="another configuration"):
        _run(tmp_path, *common, "--start-layer", "1", out="same")
    with pytest.raises(ValueError, match="another configuration"):  # --n moved the shard's last image
        _run(tmp_path, *common, "--n", "2", out="same")


def test_shards_are_disjoint_and_complete():
    for world in (1, 2, 3):
        covered = [i for rank in range(world) for _, items in harness.shards_of(10, 3, rank, world) for i in items]
        assert sorted(covered) == list(range(10))


RUN = ["--methods", "gae", "rollout", "random", "--batch-size", "2", "--shard-size", "2", "--curve-steps", "4"]


def test_one_and_two_torchrun_processes_agree_and_resume(tmp_path):
    images, masks = _image_folder(tmp_path, n_per_class=3, classes=3)  # 9 images: 5 shards, uneven over 2 ranks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "gae_workbook.harness", *TINY_TIMM, "--data", str(images), *RUN]
    command += ["--no-progress", "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and two["shards_computed_by_rank0"] == 3  # shards 0, 2, 4; rank 1 had 1, 3
    assert len(list((tmp_path / "two" / "shards").glob("*.json"))) == 5

    one = _run(tmp_path, *TINY_TIMM, "--data", str(images), *RUN, out="one")  # one process, same code path
    assert one["processes"] == 1 and one["shards_computed_by_rank0"] == 5
    for method, row in one["results"].items():
        for metric, value in row.items():
            if metric != "s_per_image":
                assert two["results"][method][metric] == pytest.approx(value, rel=1e-12, abs=1e-12), (method, metric)

    again = _run(tmp_path, *TINY_TIMM, "--data", str(images), *RUN, out="two")  # all shards on disk: none recomputed
    assert again["shards_resumed_by_rank0"] == 5 and again["shards_computed_by_rank0"] == 0
    assert again["results"] == two["results"]


def _without_thread_settings() -> dict:
    """The environment of a user's shell: no thread count set, so each launcher picks its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(ROOT)}


def test_a_plain_run_and_torchrun_give_the_same_numbers(tmp_path):
    """A plain run (torch's default threads) and torchrun (one thread per worker) agree to the last bit."""
    images, _ = _image_folder(tmp_path, n_per_class=3, classes=3)
    args = [*TINY_TIMM, "--data", str(images), *RUN, "--no-progress"]
    env = _without_thread_settings()
    plain = [sys.executable, "-m", "gae_workbook.harness", *args, "--out", str(tmp_path / "plain")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two += ["-m", "gae_workbook.harness", *args, "--out", str(tmp_path / "two")]
    for command in (plain, two):
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / out / "results.json").read_text()) for out in ("plain", "two")]
    assert [r["processes"] for r in reports] == [1, 2]
    assert [r["threads_per_process"] for r in reports] == [1, 1]
    for report in reports:
        for row in report["results"].values():
            row.pop("s_per_image")
    assert reports[0]["results"] == reports[1]["results"]  # exactly
    assert reports[0]["curves"] == reports[1]["curves"]


def test_another_configuration_in_the_same_out_is_one_line(tmp_path, capsys):
    images, _ = _image_folder(tmp_path, n_per_class=1)
    common = [*TINY_TIMM, "--data", str(images), "--methods", "random", "--protocols", "perturbation"]
    _run(tmp_path, *common, out="same")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        harness.command_line([*common, "--start-layer", "1", "--out", str(tmp_path / "same"), "--no-progress"])
    message = capsys.readouterr().err
    assert exit_.value.code == 2  # a user error, as argparse's
    assert "another configuration" in message and message.count("\n") == 1
    command = [sys.executable, "-m", "gae_workbook.harness", *common, "--seed", "3", "--out", str(tmp_path / "same")]
    done = subprocess.run(command, env=_without_thread_settings(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("gae_workbook.harness: error: ")
    assert "another configuration" in done.stderr


def test_costs_are_reported_with_their_clock_and_threads(tmp_path):
    images, _ = _image_folder(tmp_path, n_per_class=1)
    report = _run(tmp_path, *TINY_TIMM, "--data", str(images), "--methods", "gae", "--protocols", "perturbation")
    assert report["threads_per_process"] == 1 and report["cost"] == "process CPU time, 1 thread"
    assert report["results"]["gae"]["s_per_image"] > 0


# ----------------------------------------------------------------------------- what the table cannot show


def _hf_classifier(path: Path, names: list[str], constant: int | None = None) -> Path:
    """A tiny Hugging Face ViT saved with ``id2label`` names; ``constant``: it predicts that class for every image."""
    from conftest import tiny_hf_vit
    from transformers import ViTImageProcessor

    model = tiny_hf_vit()
    config = model.config
    config.num_labels, config.id2label = len(names), dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    model = type(model)(config).eval()
    if constant is not None:  # the head ignores its input: every gradient reaching the attention is zero
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(constant), len(names)).float())
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _named_folder(root: Path, classes: list[str], n_per_class: int = 2, size=(36, 40)) -> Path:
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def test_a_one_class_model_is_reported_its_ties_said_and_blank_maps_never_starred(tmp_path, capsys):
    """The issue's case: a model predicting one class ties every method; attention Grad-CAM's zero maps win
    threshold-at-mean segmentation unless they are counted and kept from the star."""
    images, masks = _image_folder(tmp_path)  # class0, class1, class2: 3 images each
    model = _hf_classifier(tmp_path / "model", ["class0", "class1", "class2"], constant=1)
    report = _run(
        tmp_path, "--model", str(model), "--data", str(images), "--masks", str(masks), "--methods", "gae",
        "attn_gradcam", "rollout", "random", "--batch-size", "9", "--curve-steps", "2", "--figures", "3",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert report["clean_accuracy"] == pytest.approx(3 / 9)  # every image called class1; 3 of 9 are class1
    assert report["images_scored"] == 9 and "clean accuracy 33.3% on the 9 scored images" in printed
    assert report["predicted_classes"] == {"class1 (1)": 9}
    single = [w for w in report["warnings"] if w.startswith("single class")]
    assert single and "class 1 (class1) for all 9 images" in single[0] and "all methods tie" in single[0]
    ties = [w for w in report["warnings"] if w.startswith("all methods tie")]
    assert ties and "pos_auc_pred" in ties[0] and "neg_auc_gt" in ties[0]
    results = report["results"]
    assert [results[m]["pos_auc_pred"] for m in results] == pytest.approx([30.0] * 4)  # 1/3 correct at each step
    # zero gradients: attention Grad-CAM's maps and GAE's (I + 0) are all blank, rollout's are not
    assert report["blank_maps"] == {"gae": 18.0, "attn_gradcam": 18.0, "rollout": 0.0, "random": 0.0}
    assert any(w.startswith("blank maps: attn_gradcam gave 18 of 18") for w in report["warnings"])
    rows = {line.split()[0]: line for line in printed.splitlines() if line.split() and line.split()[0] in results}
    assert "*" not in rows["gae"] and "*" not in rows["attn_gradcam"]
    assert results["attn_gradcam"]["pixel_accuracy"] > results["rollout"]["pixel_accuracy"]  # blank maps "win"...
    unguarded = {line.split()[0]: line for line in harness.format_results(results).splitlines()[1:-1]}
    assert "*" in unguarded["attn_gradcam"]  # ...and, not counted, would be starred best
    assert "warning: single class" in printed
    for method in results:
        figure = Image.open(report["figures"][method])
        assert figure.size[0] > figure.size[1]  # 3 columns of examples, 2 rows
    assert "example figures (the first 3 images)" in printed


def test_chance_level_is_warned():
    from gae_workbook.evaluation.checks import prediction_warnings

    spread = torch.tensor([3.0, 3.0, 4.0])  # three classes predicted
    low = prediction_warnings(spread, correct=3, label_counts=torch.tensor([4.0, 3.0, 3.0]), class_names=[])
    assert len(low) == 1 and low[0].startswith("chance level: clean accuracy 30.0%") and "40.0%" in low[0]
    assert prediction_warnings(spread, correct=9, label_counts=torch.tensor([4.0, 3.0, 3.0]), class_names=[]) == []
    assert prediction_warnings(torch.tensor([0.0, 5.0]), None, None, ["a", "b"])[0].startswith("single class")


def test_labels_are_matched_to_the_model_by_name_or_warned(tmp_path, capsys):
    model = _hf_classifier(tmp_path / "model", ["pear", "apple", "fig", "plum", "kiwi"])
    quick = ["--methods", "random", "--protocols", "perturbation", "--figures", "0", "--model", str(model)]
    # folders named after the model's labels, in another order: mapped by name (sorted: apple, pear, plum)
    named = _named_folder(tmp_path / "named", ["pear", "apple", "plum"])
    report = _run(tmp_path, *quick, "--data", str(named), out="named_run")
    assert report["label_map"] == {"apple": 1, "pear": 0, "plum": 3}
    assert not any("label mismatch" in w for w in report["warnings"])
    assert "labels mapped to the model's classes" in capsys.readouterr().out
    # folders the model does not name: a warning naming both sets and the fix
    other = _named_folder(tmp_path / "other", ["red", "green", "blue"])
    report = _run(tmp_path, *quick, "--data", str(other), out="other_run")
    mismatch = [w for w in report["warnings"] if w.startswith("label mismatch")]
    assert mismatch and "['blue', 'green', 'red']" in mismatch[0] and "'pear', 'apple', 'fig'" in mismatch[0]
    assert "--label-map" in mismatch[0] and report["label_map"] is None
    # the fix: a map by index or by the model's label name
    fix = json.dumps({"blue": 4, "green": "fig", "red": "pear"})
    report = _run(tmp_path, *quick, "--data", str(other), "--label-map", fix, out="mapped_run")
    assert report["label_map"] == {"blue": 4, "green": 2, "red": 0} and report["warnings"] == [
        w for w in report["warnings"] if not w.startswith("label mismatch")
    ]
    with pytest.raises(harness.UsageError, match=r"no entry for the dataset classes \['red'\]"):
        _run(tmp_path, *quick, "--data", str(other), "--label-map", '{"blue": 4, "green": 2}', out="bad_map")
    with pytest.raises(harness.UsageError, match="sends 'red' to 'cherry', which is not a class of the model"):
        _run(tmp_path, *quick, "--data", str(other), "--label-map", fix.replace("pear", "cherry"), out="bad_map")
    seven = _named_folder(tmp_path / "seven", [f"c{i}" for i in range(7)], n_per_class=1)
    with pytest.raises(harness.UsageError, match="reach class 6, but the model has 5 classes"):
        _run(tmp_path, *quick, "--data", str(seven), out="seven_run")


def test_imagenet_synset_folders_map_to_the_standard_index():
    from gae_workbook.evaluation.checks import match_labels

    mapping, warning = match_labels(["n01443537", "n01440764"], ["tench, Tinca tinca"] * 1000, 1000)
    assert mapping == [1, 0] and warning is None  # goldfish is class 1, tench class 0
    assert match_labels(["n01440764", "n01484850"], [], 1000) == ([0, 2], None)  # a subset: not folder order
    assert match_labels(["n01440764", "n01443537"], [], 1000) == (None, None)  # the index is the folder order


def test_the_split_of_a_dataset_dict_is_printed_and_stored(tmp_path, capsys):
    import datasets

    scene_images, labels, _ = _scenes(4)
    rows = {"image": [Image.fromarray(i) for i in scene_images], "label": [label % 3 for label in labels]}
    part = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": part, "validation": part.select(range(2))}).save_to_disk(str(tmp_path / "hf"))
    quick = [*TINY_TIMM, "--data", str(tmp_path / "hf"), "--methods", "random", "--figures", "0"]
    report = _run(tmp_path, *quick, "--protocols", "perturbation", out="default")
    assert report["split"] == "validation" and report["images"] == 2
    assert "(split 'validation'): 2 images" in capsys.readouterr().out
    report = _run(tmp_path, *quick, "--protocols", "perturbation", "--split", "train", out="train")
    assert report["split"] == "train" and report["images"] == 4
    report = _run(tmp_path, *quick, "--protocols", "perturbation", "--label-map", '{"0": 2, "1": 1, "2": 0}', out="map")
    assert report["label_map"] == {"0": 2, "1": 1, "2": 0}  # integer labels: the map's keys are label indices
    named = part.cast_column("label", datasets.ClassLabel(names=["cat", "dog", "fig"]))
    named.save_to_disk(str(tmp_path / "named"))
    assert open_data(tmp_path / "named").class_names == ["cat", "dog", "fig"]  # matched against id2label
    assert open_data(tmp_path / "named").split is None and open_data(tmp_path / "hf").class_names == []


def _break_images(folder: Path) -> tuple[Path, Path]:
    """A truncated JPEG and a PNG of junk bytes in ``folder``."""
    buffer = folder / "whole.jpg"
    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(buffer, quality=95)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])
    buffer.unlink()
    junk = folder / "junk.png"
    junk.write_bytes(b"not an image at all" * 10)
    return truncated, junk


def test_unreadable_images_are_named_and_can_be_skipped(tmp_path, capsys):
    images, _ = _image_folder(tmp_path, n_per_class=2)
    truncated, junk = _break_images(images / "class1")
    quick = [*TINY_TIMM, "--data", str(images), "--methods", "gae", "--protocols", "perturbation", "--figures", "2"]
    with pytest.raises(harness.UsageError, match="--skip-bad-images") as error:
        _run(tmp_path, *quick, out="stops")
    assert str(junk) in str(error.value) and "UnidentifiedImageError" in str(error.value)
    with pytest.raises(SystemExit) as exit_:
        harness.command_line([*quick, "--out", str(tmp_path / "stops"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "cannot read image" in err
    report = _run(tmp_path, *quick, "--skip-bad-images", "--batch-size", "3", out="skips")
    assert sorted(s["source"] for s in report["skipped_images"]) == sorted([str(junk), str(truncated)])
    assert "OSError" in next(s["error"] for s in report["skipped_images"] if s["source"] == str(truncated))
    assert report["images"] == 8 and report["images_scored"] == 6 and report["results"]["gae"]["images"] == 6
    assert any(w.startswith("skipped 2 unreadable image(s)") for w in report["warnings"])
    assert "warning: skipped 2 unreadable image(s)" in capsys.readouterr().out
    again = _run(tmp_path, *quick, "--skip-bad-images", "--batch-size", "3", out="skips")  # resumed: still listed
    assert again["shards_resumed_by_rank0"] == 1 and again["skipped_images"] == report["skipped_images"]
    junk.unlink()  # the truncated JPEG alone: named too, with PIL's error
    with pytest.raises(harness.UsageError, match="--skip-bad-images") as error:
        _run(tmp_path, *quick, out="truncated")
    assert f"cannot read image {truncated} (OSError: " in str(error.value)


@pytest.mark.parametrize(
    ("model", "data", "extra", "message"),
    [
        (TINY_TIMM, "{tmp}/nowhere", [], "data path {tmp}/nowhere does not exist"),
        (["--model", "timm:vit_nonexistent"], "{images}", [], "timm has no model 'vit_nonexistent'; list the names"),
        (["--model", "{tmp}/no_model"], "{images}", [], "cannot load --model '{tmp}/no_model' as a Hugging Face"),
        (TINY_TIMM, "{images}", ["--method", "mine=no_such_module:fn"], "'no_such_module'; put no_such_module.py on"),
        (TINY_TIMM, "{images}", ["--device", "cuda"], "--device cuda but torch sees no CUDA device; use --device cpu"),
        (["--model", "timm:resnet10t", "--model-kwargs", '{"num_classes": 3}'], "{images}", [], "ResNet"),
    ],
)
def test_user_errors_are_one_line_and_exit_code_2(tmp_path, capsys, model, data, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    images, _ = _image_folder(tmp_path, n_per_class=1)
    argv = [*model, "--data", data, *extra, "--methods", "random", "--out", str(tmp_path / "run"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        harness.command_line([a.replace("{tmp}", str(tmp_path)).replace("{images}", str(images)) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("gae_workbook.harness: error: ") and message.format(tmp=tmp_path) in err


def _options_without_help(parser) -> list[str]:
    return [a.dest for a in parser._actions if a.option_strings and not a.help]


def test_help_shows_every_option_and_its_default(capsys):
    from gae_workbook.evaluation import probe
    from gae_workbook.tools import bench

    for parser in (harness.build_parser(), bench.build_parser(), probe.build_parser()):
        assert _options_without_help(parser) == []
        text = parser.format_help()
        assert "(default:" in text and "(default: None)" not in text and "(default: False)" not in text
    text = " ".join(harness.build_parser().format_help().split())
    for shown in ("--batch-size BATCH_SIZE images per batch", "(default: 16)", "--skip-bad-images", "(default: 8)"):
        assert shown in text
    assert "Hugging Face models are not taken here" in " ".join(bench.build_parser().format_help().split())


def test_command_line_mistakes_are_one_line_too(capsys):
    from gae_workbook.evaluation import probe
    from gae_workbook.tools import bench

    calls = [
        (harness.command_line, ["--model", "m", "--data", "d", "--out", "o", "--n", "0"], "must be an integer >= 1"),
        (harness.command_line, ["--model", "m"], "required: --data, --out"),
        (bench.main, ["--repeats", "x"], "invalid int value: 'x'"),
        (probe.main, ["--kind", "audio"], "invalid choice: 'audio'"),
    ]
    for call, argv, message in calls:
        with pytest.raises(SystemExit) as exit_:
            call(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and message in err and err.endswith("(see --help)\n")
