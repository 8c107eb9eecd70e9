"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3).

Cascading model randomisation: the layers of a copy of the model are re-initialised from the top
(the classifier head) down to the embeddings, one stage at a time and cumulatively, and the map of
every method for the original model's predicted class is compared with the original map by
Spearman rank correlation (per map, averaged over images). A method whose map does not change when
the weights it claims to explain are destroyed fails the test; rank correlation near 0 after a few
stages is the expected behaviour. Re-initialisation calls each module's ``reset_parameters``
(PyTorch's default initialisation: Linear and Conv layers random, LayerNorm back to 1 and 0) and
draws free parameters (positional embeddings, CLS token) from a normal with their own scale.

The data-randomisation test (the same model trained on shuffled labels) needs such a model; the
embedded zoo has none, so it is not run here.

    python -m gae_workbook.sanity --model shapes-vit --n 50 --seed 7 --peers --json sanity.json
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gae_utils import explain
from shapesworld.scenes import ShapesWorld

from ..models.zoo import load
from .peers import PEERS, Peer
from .protocol import keep_available

__all__ = ["cascade_stages", "cascading_randomisation", "format_sanity", "gae_method", "main", "randomise", "spearman"]


def cascade_stages(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[(stage name, qualified module/parameter names)]`` from the top of a ViT down to its embeddings."""
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):  # timm VisionTransformer
        top = ("head", ["head", "fc_norm", "norm"])
        blocks = [(f"block {i}", [f"blocks.{i}"]) for i in reversed(range(len(model.blocks)))]
        return [top, *blocks, ("embeddings", ["patch_embed", "pos_embed", "cls_token", "reg_token"])]
    if hasattr(model, "vit"):  # Hugging Face ViT*ForImageClassification
        top = ("head", ["classifier", "vit.layernorm"])
        path = "vit.layers" if hasattr(model.vit, "layers") else "vit.encoder.layer"  # transformers 5 / 4
        blocks = [(f"block {i}", [f"{path}.{i}"]) for i in reversed(range(model.config.num_hidden_layers))]
        return [top, *blocks, ("embeddings", ["vit.embeddings"])]
    raise ValueError(f"no default cascade for {type(model).__name__}; pass stages=[(name, [module names]), ...]")


@torch.no_grad()
def randomise(model: nn.Module, names: Sequence[str]) -> None:
    """Re-initialise, in place, the modules and parameters called ``names`` (missing names are skipped)."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    free = [params[name] for name in names if name in params]
    for name in [name for name in names if name in modules]:
        for sub in modules[name].modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            else:  # parameters a container holds itself (Hugging Face embeddings' CLS token, positions)
                free += list(sub.parameters(recurse=False))
    for p in free:
        scale = float(p.std()) if p.numel() > 1 else 0.0
        p.normal_(0.0, scale if scale > 0 else 0.02)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each row pair of ``(B, ...)`` maps, ties averaged: ``(B,)``, NaN if constant."""
    from scipy.stats import spearmanr

    x, y = a.flatten(1).double().numpy(), b.flatten(1).double().numpy()
    with np.errstate(invalid="ignore"):
        rho = [spearmanr(u, v).statistic if u.std() > 0 and v.std() > 0 else np.nan for u, v in zip(x, y)]
    return torch.tensor(rho)


def gae_method(method: str = "gae") -> Peer:
    """A library method as ``(model, images, target) -> (B, h, w)`` patch-grid relevance."""

    def run(model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return explain(model, images, target, method=method).grid_relevance().detach().float().cpu()

    run.__name__ = method
    return run


def cascading_randomisation(
    model: nn.Module,
    images: Tensor,
    methods: Mapping[str, Peer],
    stages: Sequence[tuple[str, Sequence[str]]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean Spearman correlation of each method's map with its original after each cumulative stage.

    Args:
        model: the classifier (left unchanged: a copy is randomised).
        images: ``(B, 3, H, W)`` inputs; the target is each image's predicted class by ``model``.
        methods: ``{name: (model, images, target) -> (B, h, w)}``.
        stages: top-down ``[(name, module names)]`` (default :func:`cascade_stages`).
        seed: seed of the re-initialisation.
        progress: tqdm bar.

    Returns:
        ``{method: {"+" + stage name: mean rank correlation}}``, stages in cascade order.
    """
    from tqdm.auto import tqdm

    stages = list(stages or cascade_stages(model))
    with torch.no_grad():
        out = model(images)
    target = (out if isinstance(out, Tensor) else out.logits).argmax(-1)  # (B,)
    original = {name: f(model, images, target) for name, f in methods.items()}
    randomised = copy.deepcopy(model)
    results: dict[str, dict[str, float]] = {name: {} for name in methods}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for stage, names in tqdm(stages, desc="randomise", disable=not progress):
            randomise(randomised, names)
            for name, f in methods.items():
                rho = spearman(original[name], f(randomised, images, target))
                results[name][f"+{stage}"] = float(np.nanmean(rho.numpy())) if not rho.isnan().all() else float("nan")
    return results


def format_sanity(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: methods as rows, cumulative randomisation stages as columns."""
    stages = list(next(iter(results.values())))
    lines = ["| method | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |" for m, row in results.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description="Cascading model randomisation (Adebayo et al. 2018).")
    parser.add_argument("--model", default="shapes-vit", help="embedded ViT classifier")
    parser.add_argument("--n", type=int, default=50, help="number of ShapesWorld scenes")
    parser.add_argument("--seed", type=int, default=7, help="ShapesWorld seed (and re-initialisation seed)")
    parser.add_argument("--methods", nargs="*", default=["gae", "rollout", "attn_gradcam"])
    parser.add_argument("--peers", nargs="*", default=None, choices=list(PEERS), help="add peers (no name: all)")
    parser.add_argument("--json", type=Path, default=None, help="write {method: {stage: correlation}} here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    model = load(args.model)
    images = ShapesWorld(seed=args.seed).batch(args.n).images
    methods: dict[str, Callable] = {m: gae_method(m) for m in args.methods}
    peers = {name: PEERS[name] for name in ([] if args.peers is None else args.peers or PEERS)}
    methods |= keep_available(peers, lambda peer: peer(model, images[:1], torch.zeros(1, dtype=torch.long)))
    results = cascading_randomisation(model, images, methods, seed=args.seed, progress=not args.no_progress)
    print(f"{args.model}: {args.n} scenes (seed {args.seed}); Spearman rank correlation with the original map")
    print(format_sanity(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
