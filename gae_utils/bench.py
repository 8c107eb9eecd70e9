"""Speed and memory of an explanation, as ratios measured in one run.

    python -m gae_utils.bench --model vit_base_patch16_224 --batch 8 --device cpu --json bench.json

On one model with random weights (no download) and one batch, it times (median of ``--repeats``):

- ``forward``: plain eager-attention forward, no graph (the unit every ratio divides by);
- ``floor``: forward with a graph + one backward over activations only (gradient w.r.t. the
  input, no parameter gradients): the least any gradient-based explanation can cost;
- ``gae``: :func:`gae_utils.explain`; ``gae_k5``: five targets per image in one call;
- ``authors_style``: one image at a time, attention maps kept with ``retain_grad()``,
  ``.backward()`` on the one-hot logit (parameter gradients included), the rules in a loop, as
  the reference notebooks do.

Peak memory is measured in fresh subprocesses (CPU: resident set size sampled every millisecond;
CUDA: ``max_memory_allocated``), each relative to the memory held before the call, for a plain
forward+backward (``loss.backward()``, parameter gradients created) and for ``gae``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .explainer import explain

__all__ = ["run_benchmark", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(name: str, device: torch.device, eager: bool) -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(device).eval()
    if eager:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    return model


def _floor(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    x = images.detach().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)


def _authors_style(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-1 loop with retain_grad() and .backward(), the way the reference notebooks explain."""
    rows = []
    for i in range(images.shape[0]):
        kept: list[torch.Tensor] = []

        def keep(module, args, output):
            output.retain_grad()
            kept.append(output)

        handles = [blk.attn.attn_drop.register_forward_hook(keep) for blk in model.blocks]
        try:
            logits = model(images[i : i + 1])
            model.zero_grad()
            logits[0, int(target[i])].backward()
        finally:
            for h in handles:
                h.remove()
        n = kept[0].shape[-1]
        relevancy = torch.eye(n, device=images.device)
        for attn in kept:
            cam = (attn.grad * attn).clamp(min=0).mean(dim=1)[0]
            relevancy = relevancy + cam @ relevancy
        rows.append(relevancy[0, 1:].detach())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def _memory_worker(mode: str, name: str, batch: int, device_name: str, queue) -> None:
    torch.set_num_threads(int(os.environ.get("GAE_BENCH_THREADS", torch.get_num_threads())))
    device = torch.device(device_name)
    model = _build(name, device, eager=True)
    size = model.patch_embed.img_size
    images = torch.rand(batch, 3, *size, device=device)
    target = torch.zeros(batch, dtype=torch.long, device=device)

    def plain():
        loss = model(images).gather(1, target[:, None]).sum()
        loss.backward()

    fn = {"plain_fwd_bwd": plain, "gae": lambda: explain(model, images, target)}[mode]
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        queue.put((torch.cuda.max_memory_allocated() - before) / 2**20)
        return
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    before = rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    stop.set()
    thread.join()
    queue.put((max(peak[0], rss()) - before) / 2**20)


def _peak_mib(mode: str, name: str, batch: int, device: str) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(mode, name, batch, device, queue))
    proc.start()
    value = queue.get(timeout=1200)
    proc.join()
    return value


def run_benchmark(
    name: str = "vit_base_patch16_224", batch: int = 8, device: str = "cpu", repeats: int = 3, memory: bool = True
) -> dict:
    """Time and memory figures (seconds, MiB) and their ratios; see the module docstring."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    eager = _build(name, dev, eager=True)
    stock = _build(name, dev, eager=False)
    size = eager.patch_embed.img_size
    images = torch.rand(batch, 3, *size, device=dev, generator=None)
    target = torch.arange(batch, device=dev) % eager.num_classes
    targets5 = (torch.arange(batch * 5, device=dev).reshape(batch, 5) * 7) % eager.num_classes

    def fwd():
        with torch.no_grad():
            eager(images)

    def fwd_fused():
        with torch.no_grad():
            stock(images)

    jobs = {
        "forward": fwd,
        "forward_fused": fwd_fused,
        "floor": lambda: _floor(eager, images, target),
        "gae": lambda: explain(stock, images, target),
        "gae_k5": lambda: explain(stock, images, targets5),
        "authors_style": lambda: _authors_style(eager, images, target),
    }
    seconds = {}
    for key, fn in tqdm(jobs.items(), desc="timing", total=len(jobs)):
        seconds[key] = _time(fn, dev, repeats)
    ours = explain(stock, images, target).relevance["image"]
    theirs = _authors_style(eager, images, target)
    result = {
        "model": name,
        "batch": batch,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": seconds,
        "ratios": {
            "gae / forward": seconds["gae"] / seconds["forward"],
            "floor / forward": seconds["floor"] / seconds["forward"],
            "gae / floor": seconds["gae"] / seconds["floor"],
            "gae_k5 / forward": seconds["gae_k5"] / seconds["forward"],
            "authors_style / gae (per image)": seconds["authors_style"] / seconds["gae"],
        },
        "max_abs_diff_vs_authors_style": (ours - theirs).abs().max().item(),
    }
    if memory:
        peaks = {mode: _peak_mib(mode, name, batch, device) for mode in tqdm(["plain_fwd_bwd", "gae"], desc="memory")}
        result["peak_mib"] = peaks
        result["ratios"]["gae peak / plain fwd+bwd peak"] = peaks["gae"] / peaks["plain_fwd_bwd"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Explanation time and memory as ratios to a plain forward pass.")
    parser.add_argument("--model", default="vit_base_patch16_224", help="a timm model name (random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_benchmark(args.model, args.batch, args.device, args.repeats, memory=not args.no_memory)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
