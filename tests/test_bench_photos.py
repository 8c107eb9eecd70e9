"""Benchmark script on a small model (numbers are reported, not asserted) and the photo helpers."""

from pathlib import Path

import pytest
import torch

import gae_utils as gu
from gae_workbook.models import zoo
from gae_workbook.models.photos import imagenet_label, load_photos, photo_batch
from gae_workbook.tools import bench


def test_benchmark_runs_and_agrees_with_the_authors_style_loop():
    result = bench.run_benchmark("vit_tiny_patch16_224", batch=2, repeats=1, memory=False)
    assert result["max_abs_diff_vs_authors_style"] < 1e-3
    assert set(result["ratios"]) >= {
        "gae / forward",
        "gae / floor",
        "gae_k5 / forward",
        "authors_style / gae (per image)",
    }
    assert all(v > 0 for v in result["seconds"].values())


def test_memory_probe_reports_positive_peaks():
    assert bench._peak_mib("gae", "vit_tiny_patch16_224", 1, "cpu") > 0


def test_photos_with_an_architecture_identical_random_model():
    pytest.importorskip("skimage")
    images = load_photos(size=64)
    assert images.shape == (3, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    model = zoo.load("vit_tiny_patch16_224", pretrained=False)
    photos, inputs = photo_batch(model)
    assert photos.shape == inputs.shape == (3, 3, 224, 224)
    with torch.no_grad():
        top2 = model(inputs).topk(2).indices
    exp = gu.explain(model, inputs, target=top2)
    assert exp.relevance["image"].shape == (3, 2, 196)
    assert imagenet_label(281).lower().startswith("tabby")


def test_dual_benchmark_runs_on_a_tiny_clip():
    result = bench.run_dual_benchmark(captions=6, repeats=1, per_pair=2, small=True)
    assert set(result["ratios"]) == {"explain_dual / forward", "per_pair_loop / explain_dual"}
    assert all(v > 0 for v in result["seconds"].values())


def test_long_prompt_benchmark_reports_ratios_for_each_mode():
    result = bench.run_lm_benchmark((24,))
    (row,) = result["rows"]
    assert row["tokens"] == 24 and result["threads"] >= 1
    assert set(row["seconds"]) == {"sdpa_fwd_bwd", "eager_fwd_bwd", "gae_rows", "gae_maps"}
    assert row["time / eager fwd+bwd"]["eager_fwd_bwd"] == 1.0
    assert all(s > 0 for s in row["seconds"].values())


def test_gpu_report_runs_on_cpu_and_renders_from_its_json(tmp_path):
    from gae_workbook.tools import gpu

    args = ["--device", "cpu", "--parts", "lm", "--lengths", "16", "--lm-dtypes", "float32", "--out", str(tmp_path)]
    results = gpu.main(args)
    (row,) = results["lm_float32"]["rows"]
    assert row["tokens"] == 16 and set(row["seconds"]) == {"sdpa_fwd_bwd", "eager_fwd_bwd", "gae_rows", "gae_maps"}
    table = (tmp_path / "table.md").read_text()
    assert table.strip() == gpu.render(gpu.load(tmp_path)).strip()
    assert f"| 16 | {row['seconds']['sdpa_fwd_bwd']:.3f} s" in table


def test_readme_gpu_table_is_the_rendering_of_the_committed_results():
    from gae_workbook.tools import gpu

    root = Path(__file__).resolve().parent.parent
    rendered = gpu.render(gpu.load(root / "docs" / "results" / "gpu-h200"))
    readme = (root / "README.md").read_text()
    for line in rendered.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            assert line in readme, line


def test_bench_prints_a_readable_table_and_takes_timm_names(tmp_path, capsys):
    result = bench.main(["--model", "vit_tiny_patch16_224", "--batch", "1", "--repeats", "1", "--no-memory"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model: vit_tiny_patch16_224, batch: 1")
    gae = next(line for line in lines if line.startswith("gae / forward"))
    assert float(gae.split()[-1]) == pytest.approx(result["ratios"]["gae / forward"], rel=1e-3)
    rows = {"tokens": 24, "seconds": {"gae_rows": 0.5, "eager_fwd_bwd": 0.25}, "peak_mib": {"gae_rows": 3.0}}
    table = bench.format_report({"model": "Llama", "rows": [rows]})
    assert [line.split() for line in table.splitlines()] == [
        ["model:", "Llama"],
        ["rows:", "tokens", "24:"],
        ["seconds", "peak_mib"],
        ["gae_rows", "0.5", "3"],
        ["eager_fwd_bwd", "0.25", "-"],
    ]
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--model", "google/vit-base-patch16-224"])
    assert exit_.value.code == 2 and "is not a timm model name" in capsys.readouterr().err
