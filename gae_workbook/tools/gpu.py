"""The GPU table: one prepared run that measures what the README's GPU section reports.

    make gpu                      # or: python -m gae_workbook.tools.gpu --out outputs/gpu

On the first CUDA device, with random weights (no download), in one run:

1. ViT-B/16 (timm, 224 px) at batch 1, 8 and 64 (:func:`gae_workbook.tools.bench.run_benchmark`):
   ``explain`` against a plain forward, against the forward + input-gradient floor, with K = 5
   targets per image, and against a per-image loop (``retain_grad`` + ``.backward()``, the way the
   reference notebooks explain); peak allocated memory against a plain forward + backward.
2. The long-prompt benchmark (:func:`gae_workbook.tools.bench.run_lm_benchmark`) on the GPU: the random
   4-layer Llama at ``--lengths`` tokens in float32 and bfloat16; the model's own SDPA and eager
   forward + backward, GAE's readout row (``maps=False``) and GAE with the full maps. (SDPA with
   grouped-query heads has no fused float32 kernel: there it runs PyTorch's math path, which holds
   the probabilities as eager does; bfloat16 reaches the fused kernel.)
3. The harness under ``torchrun`` (1 process, nccl) with ``--device cuda --dtype bfloat16`` on a
   ShapesWorld ImageFolder of ``--images`` scenes with masks, every protocol.

Each part writes ``<out>/<part>.json``; ``<out>/table.md`` holds the tables built from them, and
``python -m gae_workbook.tools.gpu --render <out>`` prints them again from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import bench

__all__ = ["main"]


def _image_folder(root: Path, n: int, seed: int = 11) -> tuple[Path, Path]:
    """ShapesWorld scenes as an ImageFolder (class = the largest object's shape/colour index) with
    same-stem masks of that object."""
    from PIL import Image

    from shapesworld.scenes import ShapesWorld

    batch = ShapesWorld(seed=seed).batch(n)
    areas = batch.masks.flatten(2).sum(-1)  # (n, objects)
    labels = areas.argmax(1)  # (n,)
    images, masks = root / "images", root / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        folder = images / f"class{int(labels[i]):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (batch.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"scene{i:04d}.png")
        mask = (batch.masks[i, labels[i]].numpy() > 0).astype(np.uint8) * 255
        Image.fromarray(mask).save(masks / f"scene{i:04d}.png")
    return images, masks


def _harness(out: Path, n: int, batch: int, model: str, device: str) -> dict:
    images, masks = _image_folder(out / "data", n)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    command += ["-m", "gae_workbook.harness", "--model", f"timm:{model}", "--data", str(images)]
    command += ["--masks", str(masks), "--device", device, "--dtype", "bfloat16", "--batch-size", str(batch)]
    command += ["--shard-size", str(4 * batch), "--no-progress", "--out", str(out / "harness-run")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr[-4000:], "command": " ".join(command[2:])}
    report = json.loads((out / "harness-run" / "results.json").read_text())
    return {"command": "torchrun " + " ".join(command[3:]), "wall_s": wall, "report": report}


def _vit_table(runs: list[dict]) -> list[str]:
    lines = [
        "| batch | forward (fused) | forward (eager) | explain | explain / forward (eager) | K=5 targets "
        "| K=5 / forward | per-image loop | loop / explain | peak: explain / plain fwd+bwd | max diff vs loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, q = r["seconds"], r["ratios"]
        peak = q.get("gae peak / plain fwd+bwd peak")
        lines.append(
            f"| {r['batch']} | {s['forward_fused'] * 1e3:.1f} ms | {s['forward'] * 1e3:.1f} ms "
            f"| {s['gae'] * 1e3:.1f} ms | {q['gae / forward']:.2f}x | {s['gae_k5'] * 1e3:.1f} ms "
            f"| {q['gae_k5 / forward']:.2f}x | {s['authors_style'] * 1e3:.1f} ms "
            f"| {q['authors_style / gae (per image)']:.1f}x "
            f"| {'' if peak is None else f'{peak:.2f}x'} | {r['max_abs_diff_vs_authors_style']:.1e} |"
        )
    return lines


def _lm_table(result: dict) -> list[str]:
    lines = [
        "| tokens | SDPA fwd+bwd | eager fwd+bwd | GAE rows (`maps=False`) | GAE maps "
        "| GAE rows / SDPA: time, peak |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s, m = row["seconds"], row["peak_mib"]
        cell = {k: f"{s[k]:.3f} s, {m[k]:,.0f} MiB" for k in s}
        lines.append(
            f"| {row['tokens']:,} | {cell['sdpa_fwd_bwd']} | {cell['eager_fwd_bwd']} | {cell['gae_rows']} "
            f"| {cell['gae_maps']} | {row['time / sdpa fwd+bwd']['gae_rows']:.2f}x, "
            f"{row['peak / sdpa fwd+bwd']['gae_rows']:.1f}x |"
        )
    return lines


def _harness_table(result: dict) -> list[str]:
    if "error" in result:
        return [f"The harness run failed: `{result['error'].strip().splitlines()[-1]}`"]
    report = result["report"]
    lines = [f"`{result['command']}`: {result['wall_s']:.0f} s wall for {report['images']} images, all included."]
    lines += ["", "| method | s / image (its maps) | images / s |", "|---|---|---|"]
    for method, row in report["results"].items():
        if row["s_per_image"] > 0:
            lines.append(f"| {method} | {row['s_per_image']:.5f} | {1 / row['s_per_image']:,.0f} |")
    deviation = report.get("dtype_deviation_first_batch") or {}
    if deviation:
        worst = ", ".join(f"{m} {d['max_abs_map_diff']:.3g}" for m, d in deviation.items())
        lines += ["", f"bfloat16 against float32 on the first batch, max abs map difference: {worst}."]
    return lines


def render(results: dict) -> str:
    """The markdown tables of one run's results (the dict :func:`main` returns, or
    :func:`load` reads back)."""
    lines = [f"Device: {results['device']}; torch {results['torch']}; CUDA {results['cuda']}.", ""]
    if "vit" in results:
        model = results["vit"][0]["model"]
        lines += [f"### {model} (timm, random weights, float32)", "", *_vit_table(results["vit"]), ""]
    for key in sorted(k for k in results if k.startswith("lm_")):
        title = "random 4-layer Llama, width 256, 8 query / 2 key-value heads"
        lines += [f"### Long prompts ({title}, {results[key]['dtype']})", "", *_lm_table(results[key]), ""]
    if "harness" in results:
        lines += ["### Harness: torchrun, 1 process, nccl, `--device cuda --dtype bfloat16`", ""]
        lines += [*_harness_table(results["harness"]), ""]
    return "\n".join(lines)


def load(folder: Path) -> dict:
    """The results a run wrote to ``folder`` (``run.json``, ``vit.json``, ``lm-*.json``,
    ``harness.json``), as :func:`main` returned them."""
    results = json.loads((folder / "run.json").read_text())
    for path in sorted(folder.glob("*.json")):
        if path.name != "run.json":
            key = path.stem.replace("-", "_")
            results[key] = json.loads(path.read_text())
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Measure the README's GPU table on the first CUDA device.")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--lm-dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--images", type=int, default=256, help="harness: ShapesWorld scenes")
    parser.add_argument("--batch-size", type=int, default=32, help="harness: images per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", nargs="+", default=["vit", "lm", "harness"], choices=["vit", "lm", "harness"])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model (random weights)")
    parser.add_argument("--device", default="cuda", help="cpu runs the same parts (a check of this script)")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a finished run's folder")
    args = parser.parse_args(argv)
    if args.render is not None:
        results = load(args.render)
        print(render(results))
        return results
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make gpu needs a CUDA device; torch sees none (torch.cuda.is_available() is False).")
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results: dict = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    (args.out / "run.json").write_text(json.dumps(results, indent=2) + "\n")

    def save(key: str, value: object) -> None:
        results[key.replace("-", "_")] = value
        (args.out / f"{key}.json").write_text(json.dumps(value, indent=2) + "\n")

    if "vit" in args.parts:
        save("vit", [bench.run_benchmark(args.model, b, args.device, args.repeats) for b in args.batches])
    if "lm" in args.parts:
        for dtype in args.lm_dtypes:
            save(f"lm-{dtype}", bench.run_lm_benchmark(tuple(args.lengths), args.device, dtype))
    if "harness" in args.parts:
        save("harness", _harness(args.out, args.images, args.batch_size, args.model, args.device))
    table = render(results)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
