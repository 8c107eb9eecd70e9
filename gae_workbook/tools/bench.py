"""Speed and memory of an explanation, as ratios measured in one run.

    python -m gae_workbook.tools.bench --model vit_base_patch16_224 --batch 8 --device cpu --json bench.json

It prints a table of the figures (:func:`format_report`); ``--json`` also writes them.

On one model with random weights (no download) and one batch, it times (median of ``--repeats``):

- ``forward``: plain eager-attention forward, no graph (the unit every ratio divides by);
- ``floor``: forward with a graph + one backward over activations only (gradient w.r.t. the
  input, no parameter gradients): the least any gradient-based explanation can cost;
- ``gae``: :func:`gae_utils.explain`; ``gae_rows``: the same with ``maps=False`` (the explained
  rows only); ``gae_k5``: five targets per image in one call (rows only for a hierarchical model
  such as ``swin_tiny_patch4_window7_224``, which has no authors' loop either);
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

from gae_utils.adapters import find_adapter
from gae_utils.capture import AttentionRecorder
from gae_utils.dual import explain_dual
from gae_utils.explainer import explain
from gae_utils.generation import explain_generation
from shapesworld.inputs import detr_pixels, vqa_inputs
from shapesworld.language import Vocabulary, sample_question
from shapesworld.scenes import ShapesWorld

from ..models.train import HELDOUT_SEED
from ..models.zoo import BUILDERS, load

__all__ = ["run_benchmark", "run_video_benchmark", "format_report", "build_parser", "main"]


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


def _machine(device: torch.device) -> dict:
    """What every benchmark report says about where it ran: the device (the GPU's name), CPU threads, torch."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__}


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
    measure = (lambda f: _cuda_peak(f, device)) if device.type == "cuda" else _rss_peak
    queue.put(measure(fn)[1])  # peak MiB above the memory held before the call


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

    # Swin (stages of windowed blocks, no .blocks): no authors' loop; five targets as rows only, as
    # five full maps of the first stage's 56 x 56 tokens (R: 3136 x 3136 each) would take GBs.
    hierarchical = not hasattr(eager, "blocks")
    jobs = {
        "forward": fwd,
        "forward_fused": fwd_fused,
        "floor": lambda: _floor(eager, images, target),
        "gae": lambda: explain(stock, images, target),
        "gae_rows": lambda: explain(stock, images, target, maps=False),
        "gae_k5": lambda: explain(stock, images, targets5, maps=not hierarchical),
        "authors_style": lambda: _authors_style(eager, images, target),
    }
    if hierarchical:
        del jobs["authors_style"]
    seconds = {}
    for key, fn in tqdm(jobs.items(), desc="timing", total=len(jobs)):
        seconds[key] = _time(fn, dev, repeats)
    if hierarchical:
        return {
            "model": name,
            "batch": batch,
            **_machine(dev),
            "seconds": seconds,
            "ratios": {f"{key} / forward": seconds[key] / seconds["forward"] for key in jobs},
        }
    ours = explain(stock, images, target).relevance["image"]
    theirs = _authors_style(eager, images, target)
    result = {
        "model": name,
        "batch": batch,
        **_machine(dev),
        "seconds": seconds,
        "ratios": {
            "gae / forward": seconds["gae"] / seconds["forward"],
            "floor / forward": seconds["floor"] / seconds["forward"],
            "gae / floor": seconds["gae"] / seconds["floor"],
            "gae_k5 / forward": seconds["gae_k5"] / seconds["forward"],
            "gae_rows / forward": seconds["gae_rows"] / seconds["forward"],
            "authors_style / gae (per image)": seconds["authors_style"] / seconds["gae"],
        },
        "max_abs_diff_vs_authors_style": (ours - theirs).abs().max().item(),
    }
    if memory:
        peaks = {mode: _peak_mib(mode, name, batch, device) for mode in tqdm(["plain_fwd_bwd", "gae"], desc="memory")}
        result["peak_mib"] = peaks
        result["ratios"]["gae peak / plain fwd+bwd peak"] = peaks["gae"] / peaks["plain_fwd_bwd"]
    return result


def _random_clip(device: torch.device, small: bool = False) -> nn.Module:
    """A CLIP with random weights: ViT-B/32-sized by default (CLIPConfig's defaults), tiny for tests."""
    torch.manual_seed(0)
    if small:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(image_size=64, patch_size=16, **text)
        return BUILDERS["hf-clip"](text, vision, projection_dim=16).to(device).eval()
    return BUILDERS["hf-clip"]({}, {}, projection_dim=512).to(device).eval()


def run_dual_benchmark(
    captions: int = 64, device: str = "cpu", repeats: int = 3, per_pair: int = 8, small: bool = False
) -> dict:
    """One image against ``captions`` captions: :func:`gae_utils.dual.explain_dual` against a plain
    forward of the same batch, and against explaining pair by pair (one forward and one backward of
    both towers per pair, the way users do it today; timed on ``per_pair`` pairs, scaled to all)."""
    dev = torch.device(device)
    model = _random_clip(dev, small)
    size = model.config.vision_config.image_size
    image = torch.rand(1, 3, size, size, device=dev)
    ids = torch.randint(1, 1000, (captions, 16), device=dev)
    ids[:, 0], ids[:, -1] = model.config.text_config.bos_token_id, model.config.text_config.eos_token_id
    ids[:, 8:-1] = model.config.text_config.pad_token_id or 0
    ids[:, 7] = model.config.text_config.eos_token_id
    mask = (torch.arange(16, device=dev) < 8).long().expand(captions, -1).contiguous()
    texts = {"input_ids": ids, "attention_mask": mask}

    def forward():
        with torch.no_grad():
            model(pixel_values=image, **texts)

    def one_pair(j: int):
        out = model(pixel_values=image, input_ids=ids[j : j + 1], attention_mask=mask[j : j + 1])
        model.zero_grad(set_to_none=True)
        out.logits_per_image[0, 0].backward()  # what a per-pair .backward() explanation pays

    seconds = {
        "forward": _time(forward, dev, repeats),
        "explain_dual": _time(lambda: explain_dual(model, image, texts), dev, repeats),
        "per_pair_loop": _time(lambda: [one_pair(j) for j in range(per_pair)], dev, 1) * captions / per_pair,
    }
    model.zero_grad(set_to_none=True)
    return {
        "model": "CLIP ViT-B/32 config, random weights" if not small else "tiny CLIP",
        "captions": captions,
        **_machine(dev),
        "seconds": seconds,
        "ratios": {
            "explain_dual / forward": seconds["explain_dual"] / seconds["forward"],
            "per_pair_loop / explain_dual": seconds["per_pair_loop"] / seconds["explain_dual"],
        },
        "per_pair_loop_note": f"timed on {per_pair} pairs, scaled by {captions / per_pair:g}",
    }


def run_vqa_benchmark(batch: int = 16, device: str = "cpu", repeats: int = 3, model_name: str = "shapes-vqa") -> dict:
    """A batch of image-question pairs on a co-attention model: ``explain`` (GAE, predicted answers)
    against a plain forward of the same batch.

    ``model_name`` is ``"shapes-vqa"`` (the embedded model on ShapesWorld questions, region
    features computed beforehand, as LXMERT's detector features are) or ``"lxmert-base"`` (the
    LXMERT-base configuration with random weights: 9 language, 5 vision, 5 cross-modality layers,
    36 regions of 2048 features, 20-token questions).
    """
    dev = torch.device(device)
    if model_name == "shapes-vqa":
        import numpy as np

        model = load("shapes-vqa").to(dev).eval()
        scenes = ShapesWorld(seed=5).batch(batch)
        rng = np.random.default_rng(0)
        qs = [sample_question(scene, rng) for scene in scenes.scenes]
        inputs = {k: v.to(dev) for k, v in vqa_inputs(scenes.images, qs, Vocabulary.questions()).items()}
    elif model_name == "lxmert-base":
        from transformers import LxmertConfig, LxmertForQuestionAnswering

        torch.manual_seed(0)
        model = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=3129)).to(dev).eval()
        inputs = {
            "input_ids": torch.randint(1000, 2000, (batch, 20), device=dev),
            "attention_mask": torch.ones(batch, 20, dtype=torch.long, device=dev),
            "visual_feats": torch.rand(batch, 36, 2048, device=dev),
            "visual_pos": torch.rand(batch, 36, 4, device=dev),
        }
    else:
        raise ValueError(f"unknown model {model_name!r}; choose 'shapes-vqa' or 'lxmert-base'")

    def forward():
        with torch.no_grad():
            model(**inputs)

    seconds = {"forward": _time(forward, dev, repeats), "explain": _time(lambda: explain(model, inputs), dev, repeats)}
    return {
        "model": model_name,
        "batch": batch,
        **_machine(dev),
        "seconds": seconds,
        "ratios": {"explain / forward": seconds["explain"] / seconds["forward"]},
    }


# ----------------------------------------------------------------------------- video

VIDEO_FAMILIES = ("videomae", "vivit", "timesformer")


def _random_video(family: str, frames: int, size: int, device: torch.device) -> nn.Module:
    """The family's base configuration (ViT-B width and depth, tubelets of 2 frames x 16 x 16 pixels,
    TimeSformer's 16 x 16 patches) at ``frames`` frames of ``size`` pixels, random weights."""
    import transformers

    common = dict(image_size=size, num_frames=frames, num_labels=400, attn_implementation="sdpa")
    if family == "videomae":
        config = transformers.VideoMAEConfig(tubelet_size=2, patch_size=16, **common)
        model = transformers.VideoMAEForVideoClassification(config)
    elif family == "vivit":
        model = transformers.VivitForVideoClassification(transformers.VivitConfig(tubelet_size=[2, 16, 16], **common))
    elif family == "timesformer":
        common.pop("attn_implementation")  # it has one path, eager
        model = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(patch_size=16, **common))
    else:
        raise ValueError(f"unknown video family {family!r}; choose one of {VIDEO_FAMILIES}")
    return model.to(device).eval()


def _fastest_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds of each call, the fastest of ``repeats`` rounds that run every call once in turn (a slow
    spell of the machine hits all of them alike), after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def run_video_benchmark(
    family: str = "videomae", batch: int = 4, device: str = "cpu", repeats: int = 3, frames: int = 8, size: int = 112,
    threads: int = 1,
) -> dict:  # fmt: skip
    """A batch of clips ``(B, T, 3, size, size)`` on a random video classifier of :data:`VIDEO_FAMILIES`:
    ``explain`` (GAE of the predicted class, full maps), its rows only (``maps=False``) and every method's
    maps from one recording are timed against a plain forward, on ``threads`` CPU threads, interleaved."""
    dev = torch.device(device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = _random_video(family, frames, size, dev)
        clips = torch.randn(batch, frames, 3, size, size, device=dev, generator=torch.Generator().manual_seed(0))

        def forward():
            with torch.no_grad():
                model(pixel_values=clips)

        seconds = _fastest_interleaved(
            {
                "forward": forward,
                "gae": lambda: explain(model, clips),
                "gae_rows": lambda: explain(model, clips, maps=False),
            },
            dev,
            repeats,
        )
    finally:
        torch.set_num_threads(before)
    tokens = explain(model, clips[:1], maps=False).layout.segments[0].n_tokens
    return {
        "model": f"{family} (ViT-B, random weights)",
        "batch": batch,
        "clip": f"{frames} x 3 x {size} x {size}",
        "tokens": tokens,
        **_machine(dev),
        "threads": threads,
        "timing": f"fastest of {repeats} interleaved rounds",
        "seconds": seconds,
        "ratios": {f"{k} / forward": v / seconds["forward"] for k, v in seconds.items() if k != "forward"},
    }


# ----------------------------------------------------------------------------- seq2seq


def _random_marian(device: torch.device, small: bool = False) -> nn.Module:
    """A Marian with random weights: opus-mt-en-de sized by default (d_model 512, 6+6 layers, 8 heads,
    58,101 tokens), tiny for tests."""
    torch.manual_seed(0)
    if small:
        size = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2)
        size.update(decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100)
    else:
        size = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8)
        size.update(decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=58101)
    config = dict(max_position_embeddings=512, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **size)
    return BUILDERS["hf-marian"](**config).to(device).eval()


def run_seq2seq_benchmark(
    length: int = 32, batch: int = 1, device: str = "cpu", repeats: int = 3, small: bool = False
) -> dict:
    """Explaining every token of a ``length``-token generation against one teacher-forced forward.

    - ``forward``: one teacher-forced forward (eager attention, no graph), the unit;
    - ``floor``: forward with a graph + one backward to the attention maps (one token's cost);
    - ``explain_all``: :func:`gae_utils.generation.explain_generation`, all tokens, one vectorised backward;
    - ``per_token_backward``: the same recording, one ``autograd.grad`` per token (``length`` passes
      sharing one forward), i.e. what a ``.backward()`` per token costs at best.
    """
    dev = torch.device(device)
    model = _random_marian(dev, small)
    adapter = find_adapter(model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(2, vocab, (batch, length), generator=gen).to(dev),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=dev),
    }
    generated = torch.randint(2, vocab, (batch, length + 1), generator=gen).to(dev)
    generated[:, 0] = model.config.decoder_start_token_id
    full = {**inputs, "decoder_input_ids": generated[:, :-1]}
    labels = generated[:, 1:, None]  # (B, T, 1)

    def forward():
        with adapter.eager(model), torch.no_grad():
            adapter.call(model, full)

    def scores(rec_model):
        return adapter.logits(adapter.call(rec_model, full)).gather(-1, labels)[..., 0]  # (B, T)

    def floor():
        with AttentionRecorder(model, adapter) as rec, torch.enable_grad():
            rec.backward(scores(model)[:, -1:])

    def per_token():
        with AttentionRecorder(model, adapter) as rec, torch.enable_grad():
            s = scores(model)
            rec.backward(s)  # one backward pass per token

    seconds = {
        "forward": _time(forward, dev, repeats),
        "floor": _time(floor, dev, repeats),
        "explain_all": _time(lambda: explain_generation(model, inputs, generated), dev, repeats),
        "per_token_backward": _time(per_token, dev, 1),
    }
    return {
        "model": "Marian opus-mt-en-de config, random weights" if not small else "tiny Marian",
        "generation_tokens": length,
        "source_tokens": length,
        "batch": batch,
        **_machine(dev),
        "seconds": seconds,
        "ratios": {
            "explain_all / forward": seconds["explain_all"] / seconds["forward"],
            "floor / forward": seconds["floor"] / seconds["forward"],
            "explain_all / floor (tokens-equivalent backward passes)": seconds["explain_all"] / seconds["floor"],
            "per_token_backward / explain_all": seconds["per_token_backward"] / seconds["explain_all"],
        },
    }


def run_detr_benchmark(
    model_name: str = "shapes-detr", batch: int = 8, device: str = "cpu", repeats: int = 3, size: int = 320, k: int = 5
) -> dict:
    """Explaining every confident detection of a batch against a plain forward of the same batch.

    ``shapes-detr``: the shipped checkpoint on ``batch`` held-out ShapesWorld scenes, targets = every
    confident detection (the default of :func:`gae_utils.explain` for DETR). ``detr-r50``: DETR-R50's
    architecture with random weights (no download) on ``size`` x ``size`` random images; random
    weights detect nothing, so ``k`` queries per image stand in for the detections. One forward and
    one backward per target column (the largest number of detections in an image) serve the batch;
    ``per_detection_loop`` explains one (image, detection) at a time, the way a per-object
    ``.backward()`` loop does (timed on one image, scaled to the batch).
    """
    dev = torch.device(device)
    if model_name == "shapes-detr":

        model = load("shapes-detr", device=dev)
        scenes = ShapesWorld(seed=HELDOUT_SEED).batch(batch)
        images = detr_pixels(scenes.images).to(dev)
        target = None  # every confident detection (p > 0.5), the paper's default
    elif model_name == "detr-r50":
        torch.manual_seed(0)
        model = load("facebook/detr-resnet-50", pretrained=False, device=dev)
        images = torch.randn(batch, 3, size, size, device=dev)
        target = torch.arange(k, device=dev).expand(batch, -1)
    else:
        raise ValueError(f"unknown DETR benchmark model {model_name!r}; choose 'shapes-detr' or 'detr-r50'")

    def forward():
        with torch.no_grad():
            model(pixel_values=images)

    exp = explain(model, images, target=target)
    queries = [[q for q in row if q >= 0] for row in exp.extra["queries"]]

    def per_detection():
        for q in queries[0]:
            explain(model, images[:1], target=q)

    seconds = {
        "forward": _time(forward, dev, repeats),
        "explain_all_detections": _time(lambda: explain(model, images, target=target), dev, repeats),
        "per_detection_loop": _time(per_detection, dev, 1) * sum(map(len, queries)) / max(1, len(queries[0])),
    }
    return {
        "model": "shapes-detr (shipped)"
        if model_name == "shapes-detr"
        else f"DETR-R50 config, random weights, {size}px",
        "batch": batch,
        "detections": [len(row) for row in queries],
        **_machine(dev),
        "seconds": seconds,
        "ratios": {
            "explain_all_detections / forward": seconds["explain_all_detections"] / seconds["forward"],
            "per_detection_loop / explain_all_detections": seconds["per_detection_loop"]
            / seconds["explain_all_detections"],
        },
    }


LM_CONFIG = dict(
    vocab_size=1000,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
"""The causal LM of the long-prompt benchmark: a Llama (grouped-query attention) with random weights."""


def _rss_peak(fn: Callable[[], object]) -> tuple[float, float]:
    """``(seconds, peak MiB above the memory held before)`` of one call, resident set size sampled every ms."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    before = rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    return seconds, (max(peak[0], rss()) - before) / 2**20


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(seconds, peak MiB above the memory held before)`` of one call on a CUDA device."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20


LM_MODES = ("sdpa_fwd_bwd", "eager_fwd_bwd", "gae_rows", "gae_maps")
"""The model's own fused (SDPA) and eager forward + backward of the explained logit, GAE's readout
row (``maps=False``) and GAE with the full maps."""


def _lm_worker(modes: tuple[str, ...], length: int, device_name: str, dtype: str, queue) -> None:
    import transformers

    torch.set_num_threads(int(os.environ.get("GAE_BENCH_THREADS", torch.get_num_threads())))
    device = torch.device(device_name)

    def build(implementation: str) -> nn.Module:  # the same random weights under each implementation
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**LM_CONFIG, attn_implementation=implementation)
        return transformers.LlamaForCausalLM(config).to(device, getattr(torch, dtype)).eval()

    model, fused = build("eager"), build("sdpa")
    assert fused.config._attn_implementation == "sdpa", fused.config._attn_implementation
    ids = torch.randint(3, LM_CONFIG["vocab_size"], (1, length), device=device)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def plain(net: nn.Module) -> None:  # the model's own forward + backward of the next-token logit
        net(**x, use_cache=False).logits[0, -1, 7].backward()
        net.zero_grad(set_to_none=True)

    jobs = {
        "sdpa_fwd_bwd": lambda: plain(fused),
        "eager_fwd_bwd": lambda: plain(model),
        "gae_rows": lambda: explain(model, x, target=7, maps=False),
        "gae_maps": lambda: explain(model, x, target=7),
    }
    warm = {"input_ids": ids[:, :16], "attention_mask": x["attention_mask"][:, :16]}
    explain(model, warm, target=7, maps=False)  # import and first-call costs out of the timing
    explain(model, warm, target=7)
    measure = (lambda fn: _cuda_peak(fn, device)) if device.type == "cuda" else _rss_peak
    for mode in modes:
        try:
            if device.type == "cuda":
                jobs[mode]()  # CUDA: kernels compiled and memory pools grown outside the timing
            queue.put((mode, measure(jobs[mode])))
        except torch.OutOfMemoryError:  # reported as a missing figure, the other modes still run
            model.zero_grad(set_to_none=True)
            queue.put((mode, (float("nan"), float("nan"))))


def run_lm_benchmark(
    lengths: tuple[int, ...] = (512, 2048, 4096), device: str = "cpu", dtype: str = "float32"
) -> dict:
    """GAE on one prompt of each length of a random-weight Llama (:data:`LM_CONFIG`): time and peak
    memory of each of :data:`LM_MODES`. On the CPU each mode runs in a fresh process (peak resident
    set size); on CUDA all modes of one length share a process (peak allocated memory, reset per mode,
    each mode run once untimed first)."""
    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")
    rows = []
    groups = [(mode,) for mode in LM_MODES] if device == "cpu" else [LM_MODES]
    for length in tqdm(lengths, desc="prompt lengths"):
        measured = {}
        for modes in groups:
            queue = ctx.Queue()
            proc = ctx.Process(target=_lm_worker, args=(modes, length, device, dtype, queue))
            proc.start()
            for _ in modes:
                mode, value = queue.get(timeout=3600)
                measured[mode] = value
            proc.join()
        row: dict = {
            "tokens": length,
            "seconds": {mode: s for mode, (s, _) in measured.items()},
            "peak_mib": {mode: m for mode, (_, m) in measured.items()},
        }
        for base in ("eager", "sdpa"):
            base_s, base_mib = measured[f"{base}_fwd_bwd"]
            row[f"time / {base} fwd+bwd"] = {mode: s / base_s for mode, (s, _) in measured.items()}
            row[f"peak / {base} fwd+bwd"] = {mode: m / base_mib for mode, (_, m) in measured.items()}
        rows.append(row)
    machine = _machine(torch.device(device))
    model = "LlamaForCausalLM (random weights)"
    return {"model": model, "config": LM_CONFIG, "dtype": dtype, **machine, "rows": rows}


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _section(title: str, columns: dict[str, dict]) -> list[str]:
    """A table whose rows are the inner keys of ``columns`` and whose columns are its keys."""
    rows = list(dict.fromkeys(k for column in columns.values() for k in column))
    width = max(len(r) for r in rows) + 2
    heads = [max(len(c), 10) + 2 for c in columns]
    lines = [f"{title}:", "".ljust(width) + "".join(c.rjust(w) for c, w in zip(columns, heads))]
    for row in rows:
        cells = [_cell(column.get(row, "-")).rjust(w) for column, w in zip(columns.values(), heads)]
        lines.append(row.ljust(width) + "".join(cells))
    return lines


def format_report(result: dict) -> str:
    """A benchmark's result as readable text: where it ran, then each group of figures as a table.

    Scalars (model, batch, device, threads, ...) come first on one line; each dict (``seconds``,
    ``ratios``, ``peak_mib``) is a two-column table; the long-prompt benchmark's ``rows`` become one
    table per prompt length, with a column per measurement (seconds, MiB and their ratios).
    """
    scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    lines = [", ".join(f"{k}: {_cell(v)}" for k, v in scalars.items())]
    for key, value in result.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines += _section(key, value)
        elif isinstance(value, dict):
            lines += _section(key, {"value": value})
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for row in value:
                title = ", ".join(f"{k} {_cell(v)}" for k, v in row.items() if not isinstance(v, dict))
                lines += _section(f"{key}: {title}", {k: v for k, v in row.items() if isinstance(v, dict)})
        elif isinstance(value, list):
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (``--help`` shows every default)."""
    from .cli import HelpFormatter, Parser

    parser = Parser(
        prog="python -m gae_workbook.tools.bench",
        description="Explanation time and memory as ratios to a plain forward pass, on models with random "
        "weights (nothing is downloaded). Prints a table; --json also writes the figures.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--model",
        default="vit_base_patch16_224",
        help="a timm ViT name (timm.list_models('vit*')), built with random weights; Hugging Face models are "
        "not taken here (the authors'-style loop runs on timm's blocks): time them with gae_utils.explain",
    )
    add("--batch", type=int, default=None, help="batch size (none given: 8 images, 16 VQA pairs, 1 generation)")
    add("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    add("--repeats", type=int, default=3, help="timed calls per figure (the median is reported)")
    add("--no-memory", action="store_true", help="skip the peak-memory subprocesses (ViT benchmark)")
    add("--json", type=Path, default=None, help="also write the result to this JSON file")
    add("--dual", action="store_true", help="one image against --captions captions on a random CLIP")
    add("--captions", type=int, default=64, help="--dual: captions per image")
    add("--vqa", choices=["shapes-vqa", "lxmert-base"], default=None, help="image-question pairs (--batch, e.g. 16)")
    add("--detr", choices=["shapes-detr", "detr-r50"], default=None, help="explain every detection")
    add("--size", type=int, default=320, help="--detr detr-r50: image side in pixels")
    add("--video", choices=VIDEO_FAMILIES, default=None, help="a batch of clips on a random video classifier")
    add("--frames", type=int, default=8, help="--video: frames per clip")
    add("--clip-size", type=int, default=112, help="--video: frame side in pixels")
    add("--threads", type=int, default=1, help="--video: CPU threads")
    add("--seq2seq", action="store_true", help="every token of a --length generation, random Marian")
    add("--length", type=int, default=32, help="--seq2seq: generated (and source) tokens")
    add(
        "--lm",
        type=int,
        nargs="*",
        default=None,
        help="long prompts of these lengths on a random Llama (given without lengths: 512 2048 4096)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = args.lm is not None or args.detr or args.seq2seq or args.dual or args.vqa or args.video
    if not chosen:
        import timm

        if not timm.is_model(args.model):
            parser.error(
                f"--model {args.model!r} is not a timm model name; the ViT benchmark builds timm models "
                "(e.g. vit_base_patch16_224, deit_small_patch16_224)."
            )
    if args.lm is not None:
        result = run_lm_benchmark(tuple(args.lm or (512, 2048, 4096)), args.device)
    elif args.detr:
        result = run_detr_benchmark(args.detr, args.batch or 8, args.device, args.repeats, args.size)
    elif args.video:
        result = run_video_benchmark(
            args.video, args.batch or 4, args.device, args.repeats, args.frames, args.clip_size, args.threads
        )
    elif args.seq2seq:
        result = run_seq2seq_benchmark(args.length, args.batch or 1, args.device, args.repeats)
    elif args.dual:
        result = run_dual_benchmark(args.captions, args.device, args.repeats)
    elif args.vqa:
        result = run_vqa_benchmark(args.batch or 16, args.device, args.repeats, args.vqa)
    else:
        result = run_benchmark(args.model, args.batch or 8, args.device, args.repeats, memory=not args.no_memory)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
