"""Run every Hugging Face image-classification and image-text-to-text (vision-language) family
through the generic adapters, on tiny random configs (the sibling of :mod:`gae_workbook.probe`).

    python -m gae_workbook.probe_vision                                # every family of the installed transformers
    python -m gae_workbook.probe_vision --families vit llava --json outputs/probe_vision.json

Each family's default config (and its ``vision_config`` / ``text_config``) is shrunk by the generic
settings :data:`VISION_TINY` (and :data:`gae_workbook.probe.TINY` for the language model), built
with random weights and explained with ``verify=True`` (the explained scores under capture must
equal the stock model's). Image classifiers get a batch of two images and their predicted class; a
vision-language model gets two prompts (one left-padded) holding one image's placeholder tokens and
is explained at the next token. The number of placeholder tokens an image needs is the length of
the model's own image features (``get_image_features``). Outcomes as in
:mod:`gae_workbook.probe`; ``not routed`` is decided before running: ``find_adapter`` refuses the
model (``UnsupportedModelError``), which is what a user gets, never a map.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import gae_utils as gu

from .probe import MAX_PARAMETERS, TINY

__all__ = ["VISION_TINY", "IMAGE_TOKEN", "tiny_model", "probe_family", "probe", "main"]

VISION_TINY: dict[str, Any] = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    num_labels=5,
    embed_dim=32,
    depth=2,
    depths=[1],  # hierarchical models (Swin): one block and two heads in every stage
    num_heads=[2],
    window_size=2,
    projection_dim=32,  # a vision tower's projection to the tiny language model's width (PaliGemma)
)
IMAGE_TOKEN = 60  # placeholder id of the tiny vision-language models (inside the tiny vocabulary of 64)


def _shrink(config: Any, settings: dict[str, Any]) -> None:
    """Set the settings the config has, where the value has the field's kind (a list: one value for every stage)."""
    for key, value in settings.items():
        current = getattr(config, key, None)
        same_kind = isinstance(current, (list, tuple)) == isinstance(value, list)
        if hasattr(config, key) and same_kind:
            try:
                setattr(config, key, value * len(current) if isinstance(value, list) else value)
            except (AttributeError, TypeError, ValueError):
                pass


def tiny_model(model_type: str, kind: str, seed: int = 0, device: str | None = None) -> torch.nn.Module:
    """The ``kind`` (``"image"`` or ``"vlm"``) model of ``model_type``, shrunk, random weights.

    Raises:
        ValueError: the shrunk model still has more than :data:`~gae_workbook.probe.MAX_PARAMETERS` parameters.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    names = (
        modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
        if kind == "image"
        else modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    )
    config = transformers.CONFIG_MAPPING[model_type]()
    vision = getattr(config, "vision_config", None)
    _shrink(config, VISION_TINY if kind == "image" else {k: v for k, v in TINY.items() if k != "sliding_window"})
    if vision is not None:
        _shrink(vision, VISION_TINY)
    if getattr(config, "text_config", None) is not None:
        _shrink(config.text_config, TINY)
    if kind == "vlm":
        _shrink(config, {"image_token_id": IMAGE_TOKEN, "image_token_index": IMAGE_TOKEN})
    name = names[model_type]
    model_class = getattr(transformers, name if isinstance(name, str) else name[0])
    with torch.device("meta"):
        meta = model_class(config)
    try:
        gu.find_adapter(meta)
    except gu.UnsupportedModelError:  # say why: attention that bypasses the interface, or none at all
        found = sorted({type(m).__name__ for m in meta.modules() if "Attention" in type(m).__name__})
        why = f"attention classes {found}" if found else "no attention modules"  # routed or not: see the report
        raise gu.UnsupportedModelError(f"find_adapter refuses it: {why}") from None
    n = sum(p.numel() for p in meta.parameters())
    if n > MAX_PARAMETERS:
        raise ValueError(f"{n / 1e6:.1f}M parameters with the generic tiny settings")
    torch.manual_seed(seed)
    return model_class(config).eval()


def _image_inputs(model: torch.nn.Module) -> torch.Tensor:
    config = getattr(model.config, "vision_config", None) or model.config
    size = getattr(config, "image_size", 32)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return torch.rand(2, getattr(config, "num_channels", 3), *size, generator=torch.Generator().manual_seed(0))


def _vlm_inputs(model: torch.nn.Module, n_image: int, tiles: bool) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 5, *[IMAGE_TOKEN] * n_image, 7, 8, 9], [0, 1, *[IMAGE_TOKEN] * n_image, 7, 30, 31]])
    mask = (torch.arange(ids.shape[1]) > 0).long().expand(2, -1).clone()
    mask[0] = 1  # row 1 is left-padded by one token
    pixels = _image_inputs(model)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels[:, None] if tiles else pixels}


def _tokens_per_image(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    """Placeholder tokens one image needs: the length of the model's own image features for it."""
    get = getattr(model, "get_image_features", None) or model.model.get_image_features  # type: ignore[union-attr]
    with torch.no_grad():
        features = get(pixel_values=pixels)
    pooled = getattr(features, "pooler_output", None)
    features = features if pooled is None else pooled  # (images, n, D), or one (n, D) per image
    return int(features[0].shape[-2])


def _fit_vlm_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Inputs the stock model accepts: as many placeholders as its image features have tokens, 4-D or 5-D pixels."""
    errors = []
    for tiles in (False, True):
        pixels = _image_inputs(model)
        try:
            inputs = _vlm_inputs(model, _tokens_per_image(model, pixels[:, None] if tiles else pixels), tiles)
            with torch.no_grad():
                model(**inputs)
            return inputs
        except Exception as err:  # the other pixel layout may be the model's
            errors.append(f"{type(err).__name__}: {str(err)[:80]}")
    raise RuntimeError("; ".join(errors))


def probe_family(model_type: str, kind: str = "image") -> tuple[str, str]:
    """``(outcome, detail)`` of one family (see :mod:`gae_workbook.probe`)."""
    try:
        model = tiny_model(model_type, kind)
    except gu.UnsupportedModelError as err:
        return "not routed", str(err)
    except ValueError as err:
        return ("too big", str(err)) if "parameters" in str(err) else ("build", str(err)[:120])
    except Exception as err:  # any failure of the family's own constructor
        return "build", f"{type(err).__name__}: {str(err)[:120]}"
    try:
        inputs: Any = _image_inputs(model) if kind == "image" else _fit_vlm_inputs(model)
    except Exception as err:
        return "config", f"the stock model fails on the tiny inputs: {type(err).__name__}: {str(err)[:100]}"
    try:
        exp = gu.explain(model, inputs, verify=True)
    except gu.UnsupportedModelError as err:
        return "not routed", str(err).split("\n")[0][:120]
    except gu.AttentionCaptureError as err:
        return "refused", str(err)[:160]
    except Exception as err:
        try:
            with torch.no_grad():
                model(**inputs) if isinstance(inputs, dict) else model(pixel_values=inputs)
        except Exception as stock:
            return "config", f"the stock model fails too: {type(stock).__name__}: {str(stock)[:100]}"
        return "failed", f"{type(err).__name__}: {str(err)[:160]}"
    image = exp.relevance["image"]
    if not torch.isfinite(image).all():
        return "failed", "relevance is not finite"
    return "ok", f"{gu.find_adapter(model).name}, image grid {exp.layout.segment('image').grid}"


def probe(families: list[str] | None = None, kind: str = "image", progress: bool = True) -> dict[str, tuple[str, str]]:
    """Probe ``families`` of ``kind`` (default: every family of that kind in the installed transformers)."""
    import transformers
    from transformers.models.auto import modeling_auto

    transformers.logging.set_verbosity_error()
    names = (
        modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
        if kind == "image"
        else modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    )
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = [f for f in families if f in names] if families else sorted(names)
        for model_type in tqdm(chosen, desc=f"{kind} families", disable=not progress):
            results[model_type] = probe_family(model_type, kind)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("image", "vlm", "both"), default="both")
    parser.add_argument("--families", nargs="*", default=None, help="model types (default: every family)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    import transformers

    payload: dict[str, Any] = {"transformers": transformers.__version__}
    for kind in ("image", "vlm") if args.kind == "both" else (args.kind,):
        results = probe(args.families, kind)
        counts: dict[str, int] = {}
        for outcome, _ in results.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        for model_type, (outcome, detail) in results.items():
            print(f"{kind:5s} {model_type:28s} {outcome:10s} {detail}")
        print(f"transformers {transformers.__version__}, {len(results)} {kind} families: {counts}")
        payload[kind] = {"counts": counts, "families": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
