"""Run every Hugging Face family of one kind through the generic adapters, on tiny random configs.

    python -m gae_workbook.probe                                  # every causal-LM family (--kind text)
    python -m gae_workbook.probe --kind both                      # image classifiers and vision-language models
    python -m gae_workbook.probe --kind image --families vit dinov2 --json outputs/probe_vision.json
    python -m gae_workbook.probe --kind image --families swin timm:swin timm:pvt_v2  # hierarchical

Kinds (``--kind``): ``text`` (the causal-LM table of the installed transformers), ``image``
(image classification), ``vlm`` (image-text-to-text), ``both`` (image and vlm), ``all``.

Each family's default config (and its ``vision_config`` / ``text_config``) is shrunk by generic
settings (:data:`TINY` for language models, :data:`VISION_TINY` for vision towers), built with
random weights and explained with ``verify=True`` (the explained scores under capture must equal
the stock model's). A causal LM gets a left-padded batch of two prompts, explained at the next
token; an image classifier two images and their predicted class; a vision-language model two
prompts (one left-padded) holding one image's placeholder tokens, as many as the model's own image
features have (``get_image_features``). Outcomes:

- ``ok``: explained, parity holds, relevance finite;
- ``not routed``: the family does not route attention through the interface; ``explain`` (or, for
  the vision kinds, ``find_adapter``) refuses it (``UnsupportedModelError``) before running;
- ``no attention``: (image kind) a convolutional network (ConvNeXt, ResNet, ...): GAE does not apply;
- ``mixes tokens``: some of its layers mix tokens outside softmax attention (Mamba, gated delta-net,
  short convolution, ...), which GAE cannot propagate through (``TokenMixingError``);
- ``refused``: the capture found something it cannot explain and raised ``AttentionCaptureError``
  (an attention module called twice per forward, fewer captures than modules, no graph);
- ``needs images``: a vision-language family in the causal-LM table refuses text-only inputs
  (``TypeError``); it is probed with images under ``--kind vlm``;
- ``config``: the stock model itself fails on the generic tiny settings or inputs (no verdict on capture);
- ``too big`` / ``build``: the generic settings do not shrink the family / do not build it.

The image kind also probes the hierarchical families of the installed timm (``timm:<family>``,
:data:`TIMM_HIERARCHICAL`): explained with parity (``ok``), or ``refused`` with the reason
``find_adapter`` gives (what their attention has that the Swin rule does not describe).

Every outcome is told apart by the exception's type, never by its message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import gae_utils as gu
from gae_utils.adapters.hf_interface import TokenMixingError
from gae_utils.adapters.images import convolutional_reason, hierarchical_reason, windowed_reason

from .checks import first_sentence

__all__ = [
    "TINY",
    "VISION_TINY",
    "IMAGE_TOKEN",
    "KINDS",
    "MAX_PARAMETERS",
    "TooBigError",
    "tiny_model",
    "tiny_causal_lm",
    "probe_family",
    "probe_timm_family",
    "HIERARCHICAL_TINY",
    "TIMM_HIERARCHICAL",
    "VIDEO_TINY",
    "probe_video_family",
    "probe",
    "first_sentence",
    "format_line",
    "build_parser",
    "main",
]

TINY: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    ffn_dim=64,
    n_inner=64,
    num_local_experts=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    first_k_dense_replace=1,
    n_routed_experts=4,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    sliding_window=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
"""Generic tiny settings of a language model (or a vision-language model's language half)."""

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
"""Generic tiny settings of an image model (or a vision-language model's vision tower)."""

_SWIN_TINY: dict[str, Any] = dict(
    patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], num_layers=2, hidden_size=32, window_size=4
)
HIERARCHICAL_TINY: dict[str, dict[str, Any]] = {
    "swin": _SWIN_TINY,
    "swinv2": {**_SWIN_TINY, "pretrained_window_sizes": [0, 0]},
}
"""Tiny settings of the Hugging Face windowed families, set as they are after :data:`VISION_TINY`: two
stages of a plain and a shifted block, a 2x2 merge, 16 and 4 windows per stage."""

_TIMM_SWIN_TINY: dict[str, Any] = dict(embed_dim=8, depths=(2, 2), num_heads=(1, 2), img_size=64, window_size=4)
TIMM_HIERARCHICAL: dict[str, tuple[str, dict[str, Any]]] = {
    "swin": ("swin_tiny_patch4_window7_224", _TIMM_SWIN_TINY),
    "swinv2": ("swinv2_tiny_window8_256", _TIMM_SWIN_TINY),
    "swinv2_cr": ("swinv2_cr_tiny_224", {}),
    "pvt_v2": ("pvt_v2_b0", {}),
    "twins": ("twins_pcpvt_small", {}),
    "mvitv2": ("mvitv2_tiny", {}),
    "hiera": ("hiera_tiny_224", {}),
    "davit": ("davit_tiny", {}),
    "maxvit": ("maxvit_tiny_tf_224", {}),
    "coat": ("coat_lite_tiny", {}),
    "nest": ("nest_tiny", {}),
    "gcvit": ("gcvit_xxtiny", {}),
    "focalnet": ("focalnet_tiny_srf", {}),
}
"""timm hierarchical families probed under the image kind: family -> (model name, tiny settings)."""

VIDEO_TINY: dict[str, Any] = dict(
    image_size=16, crop_size=16, patch_size=8, num_frames=4, frames_per_clip=4, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_labels=5,
)  # fmt: skip
"""Tiny settings of the video classifiers: 4 frames of 16 x 16 pixels, tubelets of 2 frames x 8 x 8 (ViViT's
``tubelet_size`` is a triple, VideoMAE's an int beside ``patch_size``)."""

IMAGE_TOKEN = 60  # placeholder id of the tiny vision-language models (inside the tiny vocabulary of 64)
MAX_PARAMETERS = 3_000_000
KINDS = ("text", "image", "vlm")


class TooBigError(ValueError):
    """The generic tiny settings leave the family above :data:`MAX_PARAMETERS` parameters."""


class NoAttentionError(gu.UnsupportedModelError):
    """The family is a convolutional network: it has no attention for GAE to propagate."""


def _table(kind: str) -> dict:
    """The installed transformers' model-type -> class name(s) table of ``kind``."""
    from transformers.models.auto import modeling_auto

    return {
        "text": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "image": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "vlm": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        "video": modeling_auto.MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES,
    }[kind]


def _shrink(config: Any, settings: dict[str, Any], match_kind: bool = True) -> None:
    """Set the settings the config has (a list: one value for every stage).

    With ``match_kind`` only where the field holds the same kind (a list or a single value).
    """
    for key, value in settings.items():
        if not hasattr(config, key):
            continue
        current = getattr(config, key)
        if match_kind and isinstance(current, (list, tuple)) != isinstance(value, list):
            continue
        try:
            setattr(config, key, value * len(current) if isinstance(value, list) else value)
        except (AttributeError, TypeError, ValueError):
            pass


def _tiny_config(model_type: str, kind: str) -> Any:
    """The default config of ``model_type``, shrunk for ``kind``."""
    import transformers

    config = transformers.CONFIG_MAPPING[model_type]()
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    if kind == "text":
        for target in (config, text):
            if target is not None:
                _shrink(target, TINY, match_kind=False)
        return config
    _shrink(config, VISION_TINY if kind == "image" else {k: v for k, v in TINY.items() if k != "sliding_window"})
    for key, value in HIERARCHICAL_TINY.get(model_type, {}).items() if kind == "image" else ():
        setattr(config, key, value)  # per-stage lists of their own length
    if vision is not None:
        _shrink(vision, VISION_TINY)
    if text is not None:
        _shrink(text, TINY)
    if kind == "vlm":
        _shrink(config, {"image_token_id": IMAGE_TOKEN, "image_token_index": IMAGE_TOKEN})
    return config


def tiny_model(model_type: str, kind: str = "text", seed: int = 0) -> torch.nn.Module:
    """The ``kind`` model of ``model_type`` (see :data:`KINDS`), shrunk, with random weights.

    Raises:
        TooBigError: the shrunk model still has more than :data:`MAX_PARAMETERS` parameters.
        UnsupportedModelError: (image and vlm kinds) ``find_adapter`` refuses the model.
    """
    import transformers

    config = _tiny_config(model_type, kind)
    name = _table(kind)[model_type]
    model_class = getattr(transformers, name if isinstance(name, str) else name[0])
    with torch.device("meta"):
        meta = model_class(config)
    if kind != "text":
        try:
            gu.find_adapter(meta)
        except gu.UnsupportedModelError as err:  # say why: no attention, or attention that bypasses the interface
            if convolutional_reason(meta):
                raise NoAttentionError(str(err)) from None
            found = sorted({type(m).__name__ for m in meta.modules() if "Attention" in type(m).__name__})
            why = f"attention classes {found}" if found else "no attention modules"  # routed or not: see the report
            why = hierarchical_reason(meta) or windowed_reason(meta) or why  # what its attention has
            raise gu.UnsupportedModelError(f"find_adapter refuses it: {why}") from None
    n = sum(p.numel() for p in meta.parameters())
    if n > MAX_PARAMETERS:
        raise TooBigError(f"{n / 1e6:.1f}M parameters with the generic tiny settings")
    torch.manual_seed(seed)
    return model_class(config).eval()


def tiny_causal_lm(model_type: str, seed: int = 0) -> torch.nn.Module:
    """:func:`tiny_model` of the ``text`` kind."""
    return tiny_model(model_type, "text", seed)


def _text_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 60, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


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


def _inputs(model: torch.nn.Module, kind: str) -> Any:
    return {"text": _text_inputs, "image": _image_inputs, "vlm": _fit_vlm_inputs}[kind](
        *(() if kind == "text" else (model,))
    )


def _stock_call(model: torch.nn.Module, inputs: Any) -> None:
    with torch.no_grad():
        model(**inputs) if isinstance(inputs, dict) else model(pixel_values=inputs)


def _refusal(err: gu.UnsupportedModelError) -> tuple[str, str]:
    outcome = "no attention" if isinstance(err, NoAttentionError) else "not routed"
    return "mixes tokens" if isinstance(err, TokenMixingError) else outcome, first_sentence(str(err))


def probe_family(model_type: str, kind: str = "text") -> tuple[str, str]:
    """``(outcome, detail)`` of one family of ``kind`` (see the module docstring)."""
    try:
        model = tiny_model(model_type, kind)
    except gu.UnsupportedModelError as err:
        return _refusal(err)
    except TooBigError as err:
        return "too big", str(err)
    except Exception as err:  # any failure of the family's own constructor
        return "build", f"{type(err).__name__}: {first_sentence(str(err))}"
    try:
        inputs = _inputs(model, kind)
    except Exception as err:
        return "config", f"the stock model fails on the tiny inputs: {type(err).__name__}: {first_sentence(str(err))}"
    try:
        exp = gu.explain(model, inputs, verify=True)
    except gu.UnsupportedModelError as err:
        return _refusal(err)
    except gu.AttentionCaptureError as err:
        return "refused", first_sentence(str(err))
    except Exception as err:
        if kind == "text" and isinstance(err, TypeError) and model_type in _table("vlm"):
            return "needs images", first_sentence(str(err))  # the vision-language adapter's input check
        try:
            _stock_call(model, inputs)
        except Exception as stock:
            return "config", f"the stock model fails too: {type(stock).__name__}: {first_sentence(str(stock))}"
        return "failed", f"{type(err).__name__}: {first_sentence(str(err))}"
    relevance = exp.relevance["text" if kind == "text" else "image"]
    if not torch.isfinite(relevance).all():
        return "failed", "relevance is not finite"
    if kind == "text":
        return "ok", f"{len(exp.layout.segments)} segment, {relevance.shape[-1]} tokens"
    detail = f"{gu.find_adapter(model).name}, image grid {exp.layout.segment('image').grid}"
    if "pixels" in exp.relevance:  # carried through the vision tower (docs/models.md, "End to end")
        detail += f", end to end: pixels grid {exp.layout.segment('pixels').grid}"
    return "ok", detail


def probe_timm_family(family: str) -> tuple[str, str]:
    """``(outcome, detail)`` of one hierarchical timm family of :data:`TIMM_HIERARCHICAL`: ``ok`` (explained,
    parity with the stock model, finite relevance), ``refused`` (``find_adapter``'s reason, on the meta
    device), ``build`` or ``failed``."""
    import timm

    name, tiny = TIMM_HIERARCHICAL[family]
    if name not in timm.list_models():
        return "build", f"timm {timm.__version__} has no {name}"
    try:
        with torch.device("meta"):
            gu.find_adapter(timm.create_model(name, pretrained=False, num_classes=5, **tiny))
    except gu.UnsupportedModelError as err:
        return "refused", first_sentence(str(err))
    except Exception as err:
        return "build", f"{type(err).__name__}: {first_sentence(str(err))}"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **tiny).eval()
    try:
        exp = gu.explain(model, torch.randn(2, 3, *model.patch_embed.img_size), verify=True)
    except (gu.UnsupportedModelError, gu.AttentionCaptureError) as err:
        return "refused", first_sentence(str(err))
    if not torch.isfinite(exp.relevance["image"]).all():
        return "failed", "relevance is not finite"
    grid = exp.layout.segment("image").grid
    return "ok", f"{gu.find_adapter(model).name}, image grid {grid}, parity with the stock model"


def probe_video_family(model_type: str) -> tuple[str, str]:
    """``(outcome, detail)`` of one video classifier of the installed transformers (probed under the image kind,
    named ``video:<family>``): ``ok`` (explained, parity with the stock model, finite relevance), ``refused``
    (``find_adapter``'s reason, on the meta device), ``build`` or ``failed``."""
    import transformers

    config = transformers.CONFIG_MAPPING[model_type]()
    _shrink(config, VIDEO_TINY)
    tubelet = getattr(config, "tubelet_size", None)
    if tubelet is not None:
        config.tubelet_size = [2, 8, 8] if isinstance(tubelet, (list, tuple)) else 2
    model_class = getattr(transformers, _table("video")[model_type])
    try:
        with torch.device("meta"):
            gu.find_adapter(model_class(config))
    except gu.UnsupportedModelError as err:
        return "refused", first_sentence(str(err))
    except Exception as err:
        return "build", f"{type(err).__name__}: {first_sentence(str(err))}"
    torch.manual_seed(0)
    model = model_class(config).eval()
    clips = torch.randn(2, config.num_frames, config.num_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        exp = gu.explain(model, clips, verify=True)
    except (gu.UnsupportedModelError, gu.AttentionCaptureError) as err:
        return "refused", first_sentence(str(err))
    except Exception as err:
        return "failed", f"{type(err).__name__}: {first_sentence(str(err))}"
    if not torch.isfinite(exp.relevance["video"]).all():
        return "failed", "relevance is not finite"
    grid = exp.layout.segment("video").grid
    return "ok", f"{gu.find_adapter(model).name}, video grid (T', h, w) {grid}, parity with the stock model"


def probe(families: list[str] | None = None, kind: str = "text", progress: bool = True) -> dict[str, tuple[str, str]]:
    """Probe ``families`` of ``kind`` (default: every family of that kind in the installed transformers, and for
    the image kind the hierarchical timm families, named ``timm:<family>``, and the video classifiers, named
    ``video:<family>``)."""
    import transformers

    transformers.logging.set_verbosity_error()
    table = _table(kind)
    results = {}
    timm_families = [f"timm:{f}" for f in TIMM_HIERARCHICAL] if kind == "image" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in [f for f in families or timm_families if f in timm_families]:
            results[name] = probe_timm_family(name.removeprefix("timm:"))
        video_families = [f"video:{f}" for f in _table("video")] if kind == "image" else []
        for name in [f for f in families or video_families if f in video_families]:
            results[name] = probe_video_family(name.removeprefix("video:"))
        chosen = [f for f in families if f in table] if families else sorted(table)
        for model_type in tqdm(chosen, desc=f"{kind} families", disable=not progress):
            results[model_type] = probe_family(model_type, kind)
    return results


def format_line(kind: str, model_type: str, outcome: str, detail: str, width: int | None = None) -> str:
    """One family's line: kind, family and outcome in columns, the detail wrapped under its column.

    The detail (a whole first sentence, :func:`first_sentence`) is wrapped at ``width`` (default:
    the terminal's), never cut.
    """
    head = f"{kind:5s} {model_type:28s} {outcome:12s} "
    width = width or shutil.get_terminal_size((120, 24)).columns
    return textwrap.fill(
        detail or "-", width=max(width, len(head) + 30), initial_indent=head, subsequent_indent=" " * len(head)
    )


def build_parser(kind: str = "text") -> argparse.ArgumentParser:
    """The probe's command line (``--help`` shows every default); ``kind`` is the default of ``--kind``."""
    from ..tools.cli import HelpFormatter, Parser

    parser = Parser(
        prog="python -m gae_workbook.probe", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--kind",
        choices=(*KINDS, "both", "all"),
        default=kind,
        help="which table: both = image and vlm, all = every kind",
    )
    parser.add_argument(
        "--families", nargs="*", default=None, help="model types (none given: every family of the kind)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None, kind: str = "text") -> dict[str, Any]:
    """The probe's command line; ``kind`` is the default of ``--kind``.

    Returns:
        ``{"transformers": version, kind: {"counts": {outcome: n}, "families": {family: (outcome, detail)}}}``.
    """
    args = build_parser(kind).parse_args(argv)
    import transformers

    kinds = {"both": ("image", "vlm"), "all": KINDS}.get(args.kind, (args.kind,))
    payload: dict[str, Any] = {"transformers": transformers.__version__}
    for k in kinds:
        results = probe(args.families, k, progress=not args.no_progress)
        counts: dict[str, int] = {}
        for outcome, _ in results.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        for model_type, (outcome, detail) in results.items():
            print(format_line(k, model_type, outcome, detail))
        print(f"transformers {transformers.__version__}, {len(results)} {k} families: {counts}")
        payload[k] = {"counts": counts, "families": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return payload


if __name__ == "__main__":
    main()
