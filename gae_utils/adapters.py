"""Adapters: the per-architecture facts the engine needs, stored as data.

An :class:`Adapter` says, for one family of models, which modules are attention layers, where
their attention probabilities can be read (a child module whose output *is* the probabilities,
or an index into the attention module's output tuple), which modality each layer reads and
writes, how to switch the family's fused attention off for one call, how the model is called,
where its logits are, and how its tokens are laid out. Adding a model family is adding an entry
to :data:`ADAPTERS` (or calling :func:`register_adapter`), not editing the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import Readout, Segment, TokenLayout

__all__ = [
    "AttentionSite",
    "Adapter",
    "ADAPTERS",
    "register_adapter",
    "find_adapter",
    "UnsupportedModelError",
]


class UnsupportedModelError(TypeError):
    """Raised for a model whose attention probabilities no adapter knows how to capture."""


@dataclass(frozen=True)
class AttentionSite:
    """Where the attention probabilities of one kind of layer live.

    Attributes:
        module_class: class name of the attention module (matched on the class and its bases).
        probs: how to read the probabilities ``(B, H, Nq, Nk)``: the name of a child module whose
            output is them (timm's ``"attn_drop"``), or an index into the attention module's
            output tuple (Hugging Face eager attention returns ``(output, weights)``).
        kind: ``"self"`` or ``"cross"``.
        query: modality of the queries (the rows).
        key: modality of the keys (the columns).
        group: layers sharing a group id inside one block are applied simultaneously
            (two-direction co-attention, method.md); ``None`` for ordinary layers.
        within: only modules whose qualified name has this component (e.g. ``"vision_model"``),
            for models whose towers share an attention class.
        calls: for a module run several times per forward pass in different directions (LXMERT's
            cross-modality attention serves text->image, then image->text), the ``(query, key)``
            modalities of successive calls; ``group="module"`` then groups each cycle of calls
            into one simultaneous co-attention update.
    """

    module_class: str
    probs: str | int
    kind: str = "self"
    query: str = "image"
    key: str = "image"
    group: str | None = None
    within: str | None = None
    calls: tuple[tuple[str, str], ...] | None = None


def _timm_fused_flags(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    return [(m, "fused_attn", False) for m in model.modules() if hasattr(m, "fused_attn")]


@contextmanager
def _eager_flags(model: nn.Module, flags: list[tuple[nn.Module, str, Any]]) -> Iterator[None]:
    """Set ``attr = value`` on each module for the duration of the block, then restore."""
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in flags]
    try:
        for module, attr, value in flags:
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


@contextmanager
def timm_eager(model: nn.Module) -> Iterator[None]:
    """Switch every timm ``fused_attn`` flag off for the block (timm reads it in ``forward``)."""
    with _eager_flags(model, _timm_fused_flags(model)):
        yield


@contextmanager
def hf_eager(model: nn.Module) -> Iterator[None]:
    """Switch a Hugging Face model to the eager attention implementation for the block."""
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    if original in (None, "eager"):
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter("eager")
        else:
            config._attn_implementation = "eager"
        if config._attn_implementation != "eager":
            raise UnsupportedModelError(
                f"{type(model).__name__} uses attn_implementation={original!r} and cannot switch to "
                "'eager' at run time; load it with attn_implementation='eager'."
            )
        yield
    finally:
        if setter is not None:
            setter(original)
        else:
            config._attn_implementation = original


@contextmanager
def _no_switch(model: nn.Module) -> Iterator[None]:
    yield


# ----------------------------------------------------------------------------- timm ViT family


def _timm_check(model: nn.Module, images: Tensor) -> None:
    _check_image_batch(images, getattr(model.patch_embed, "proj", None))
    img_size = getattr(model.patch_embed, "img_size", None)
    dynamic = getattr(model, "dynamic_img_size", False) or getattr(model.patch_embed, "dynamic_img_pad", False)
    if img_size is not None and not dynamic and tuple(images.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's {tuple(img_size)}; "
            f"resize the images to {tuple(img_size)} or build the model with dynamic_img_size=True."
        )


def _timm_layout(model: nn.Module, images: Tensor) -> TokenLayout:
    patch = model.patch_embed.patch_size
    grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
    prefix = int(model.num_prefix_tokens)
    pool = getattr(model, "global_pool", "token")
    if pool == "token":
        # DeiT distilled averages the CLS and distillation heads' logits: explain both rows.
        rows = (0, 1) if hasattr(model, "head_dist") else (0,)
    elif pool in ("avg", "avgmax", "max"):
        rows = None  # mean of the rows of the pooled (content) tokens
    else:
        raise UnsupportedModelError(
            f"timm global_pool={pool!r} has no relevancy readout; use global_pool='token' or 'avg'."
        )
    seg = Segment("image", prefix + grid[0] * grid[1], prefix, grid)
    return TokenLayout((seg,), (Readout("image", "image", "image", rows),))


# --------------------------------------------------------------------- Hugging Face ViT / DeiT


def _hf_check(model: nn.Module, images: Tensor) -> None:
    _check_image_batch(images, None, channels=getattr(model.config, "num_channels", 3))
    size = model.config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) != size:
        raise ValueError(
            f"image size {tuple(images.shape[-2:])} does not match the model's config.image_size {size}; "
            f"resize the images to {size}."
        )


def _hf_layout(model: nn.Module, images: Tensor) -> TokenLayout:
    patch = model.config.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    name = type(model).__name__
    prefix = 2 if name.startswith("DeiT") else 1  # DeiT adds a distillation token after CLS
    rows = (0, 1) if name == "DeiTForImageClassificationWithTeacher" else (0,)
    seg = Segment("image", prefix + grid[0] * grid[1], prefix, grid)
    return TokenLayout((seg,), (Readout("image", "image", "image", rows),))


def _check_image_batch(images: Tensor, proj: nn.Module | None, channels: int | None = None) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"expected an image tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"expected images of shape (B, C, H, W), got {tuple(images.shape)}; "
            "add a batch dimension with images[None] for a single image."
        )
    if channels is None and proj is not None:
        channels = getattr(proj, "in_channels", None)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {images.shape[1]} (images of shape {tuple(images.shape)})")


# ------------------------------------------------------------------- Hugging Face text encoders


def _text_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise TypeError(
            "a text encoder takes the tokenizer's output as a dict with 'input_ids' and 'attention_mask' "
            "(tokenizer(texts, padding=True, return_tensors='pt'))"
        )
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (B, L) with L > 0, got {tuple(ids.shape)}; is the text empty?")
    mask = inputs.get("attention_mask")
    if mask is not None and (mask.sum(dim=1) == 0).any():
        empty = (mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"examples {empty} have no tokens (empty text); remove them before explaining")


def text_mean_weights(inputs: dict) -> Tensor:
    """Row weights of mean pooling over the non-padding tokens: ``(B, L)``, rows summing to 1."""
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    mask = mask.float()
    return mask / mask.sum(dim=1, keepdim=True)


def _text_mean_layout(model: nn.Module, inputs: dict) -> TokenLayout:
    seg = Segment("text", inputs["input_ids"].shape[1], prefix=0)
    return TokenLayout((seg,), (Readout("text", "text", "text", "weights"),), {"text": text_mean_weights(inputs)})


# ------------------------------------------------------------------ Hugging Face CLIP (dual encoder)


def clip_eot_index(model: nn.Module, input_ids: Tensor) -> Tensor:
    """Index of the token CLIP's text tower pools (EOT), as ``CLIPTextTransformer`` picks it: ``(B,)``."""
    eos = model.config.text_config.eos_token_id
    if eos == 2:  # legacy configs: the EOT token has the largest id
        return input_ids.argmax(dim=-1)
    return (input_ids == eos).int().argmax(dim=-1)


def _clip_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or "pixel_values" not in inputs or "input_ids" not in inputs:
        raise TypeError("CLIP takes a dict with 'pixel_values' (images) and 'input_ids'/'attention_mask' (texts)")
    _text_check(model, {k: v for k, v in inputs.items() if k != "pixel_values"})
    size = model.config.vision_config.image_size
    _check_image_batch(inputs["pixel_values"], None, channels=model.config.vision_config.num_channels)
    if tuple(inputs["pixel_values"].shape[-2:]) != (size, size):
        raise ValueError(
            f"image size {tuple(inputs['pixel_values'].shape[-2:])} does not match the model's "
            f"vision_config.image_size {(size, size)}; resize the images to {(size, size)}."
        )


def _clip_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    ids = inputs["input_ids"]
    eot = F.one_hot(clip_eot_index(model, ids), ids.shape[1]).float()  # (B_t, L)
    segments = (Segment("image", 1 + side * side, 1, (side, side)), Segment("text", ids.shape[1], 0))
    readouts = (Readout("image", "image", "image", (0,)), Readout("text", "text", "text", "weights"))
    return TokenLayout(segments, readouts, {"text": eot})


# ------------------------------------------------------------------------ Hugging Face LXMERT


def _lxmert_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or not {"input_ids", "visual_feats", "visual_pos"} <= set(inputs):
        raise TypeError(
            "LXMERT takes a dict with 'input_ids', 'attention_mask', "
            "'visual_feats' (B, R, F) and 'visual_pos' (B, R, 4)"
        )
    _text_check(model, {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs})
    feats, pos = inputs["visual_feats"], inputs["visual_pos"]
    if feats.ndim != 3 or pos.shape[:2] != feats.shape[:2] or feats.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"visual_feats {tuple(feats.shape)} and visual_pos {tuple(pos.shape)} must be (B, R, F) and (B, R, 4) "
            f"for the batch of {inputs['input_ids'].shape[0]} questions"
        )


def _lxmert_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    segments = (Segment("text", inputs["input_ids"].shape[1], 0), Segment("image", inputs["visual_feats"].shape[1], 0))
    readouts = (
        Readout("text", "text", "text", (0,), drop_self=True),  # the [CLS] row of R[t, t], R[t, t][0, 0] zeroed
        Readout("image", "text", "image", (0,)),  # the [CLS] row of R[t, i]
    )
    return TokenLayout(segments, readouts)


# ------------------------------------------------------- single-stream vision-language models


def _joint_check(model: nn.Module, inputs: Any, image_keys: tuple[str, ...]) -> None:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs or not any(k in inputs for k in image_keys):
        raise TypeError(
            f"{type(model).__name__} takes a dict with 'input_ids', 'attention_mask' and {' or '.join(image_keys)} "
            "(the model's processor output)"
        )
    _text_check(model, {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs})


# ViLT feeds its image patches in a random order (``ViltEmbeddings.visual_embed`` draws them with
# ``torch.multinomial``). The adapter runs the model and recomputes the order under the same seed,
# inside ``torch.random.fork_rng`` so that the caller's random state is untouched.
_VILT_SEED = 0


def _vilt_check(model: nn.Module, inputs: Any) -> None:
    _joint_check(model, inputs, ("pixel_values",))
    size = model.config.image_size
    _check_image_batch(inputs["pixel_values"], None, channels=model.config.num_channels)
    if inputs["pixel_values"].shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"{inputs['pixel_values'].shape[0]} images for {inputs['input_ids'].shape[0]} questions; "
            "pass one image per question"
        )
    if min(inputs["pixel_values"].shape[-2:]) < model.config.patch_size:
        raise ValueError(f"images of {tuple(inputs['pixel_values'].shape[-2:])} are smaller than a patch ({size})")


def _vilt_call(model: nn.Module, inputs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_VILT_SEED)
        return model(**inputs)


def _vilt_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    pixels = inputs["pixel_values"]
    mask = inputs.get("pixel_mask")
    mask = (
        torch.ones(pixels.shape[0], *pixels.shape[-2:], dtype=torch.long, device=pixels.device)
        if mask is None
        else mask
    )
    embeddings = model.vilt.embeddings
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_VILT_SEED)
        _, _, (patch_index, _) = embeddings.visual_embed(pixels, mask, max_image_length=model.config.max_image_length)
    patch = model.config.patch_size
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    positions = patch_index[..., 0] * grid[1] + patch_index[..., 1]  # (B, P) raster index of each image token
    text = Segment("text", inputs["input_ids"].shape[1], 0, stream="joint")
    image = Segment("image", 1 + positions.shape[1], 1, grid, stream="joint", offset=text.n_tokens)
    readouts = (
        Readout("text", "text", "text", (0,), drop_self=True),  # the [CLS] row of the R[t, t] block, [0, 0] zeroed
        Readout("image", "text", "image", (0,)),  # the [CLS] row of the R[t, i] block
    )
    return TokenLayout(
        (Segment("joint", text.n_tokens + image.n_tokens), text, image), readouts, {}, {"image": positions}
    )


def _visualbert_check(model: nn.Module, inputs: Any) -> None:
    _joint_check(model, inputs, ("visual_embeds",))
    feats = inputs["visual_embeds"]
    if feats.ndim != 3 or feats.shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"visual_embeds must be (B, R, F) for the batch of {inputs['input_ids'].shape[0]} questions, "
            f"got {tuple(feats.shape)}"
        )
    if feats.shape[-1] != model.config.visual_embedding_dim:
        raise ValueError(
            f"visual_embeds have {feats.shape[-1]} features but config.visual_embedding_dim is "
            f"{model.config.visual_embedding_dim}"
        )


def visualbert_answer_index(inputs: Mapping) -> Tensor:
    """Token ``VisualBertForQuestionAnswering`` classifies: the last text token before [SEP], ``(B,)``."""
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    return mask.sum(dim=1) - 2


def _visualbert_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    ids = inputs["input_ids"]
    text = Segment("text", ids.shape[1], 0, stream="joint")
    image = Segment("image", inputs["visual_embeds"].shape[1], 0, stream="joint", offset=text.n_tokens)
    joint = Segment("joint", text.n_tokens + image.n_tokens)
    if type(model).__name__ == "VisualBertForQuestionAnswering" or any(
        c.__name__ == "VisualBertForQuestionAnswering" for c in type(model).__mro__
    ):
        rows = F.one_hot(visualbert_answer_index(inputs), ids.shape[1]).float()  # (B, L)
        readouts = (
            Readout("text", "text", "text", "weights", drop_self=True),
            Readout("image", "text", "image", "weights"),
        )
        return TokenLayout((joint, text, image), readouts, {"text": rows, "image": rows})
    readouts = (Readout("text", "text", "text", (0,), drop_self=True), Readout("image", "text", "image", (0,)))
    return TokenLayout((joint, text, image), readouts)


@dataclass(frozen=True)
class Adapter:
    """Everything the engine needs to know about one model family.

    Attributes:
        name: short name shown in errors and results.
        model_classes: class names this adapter serves (matched on the model's class and bases).
        sites: the attention layers, as :class:`AttentionSite` entries.
        eager: context manager switching fused attention off for one call.
        call: ``call(model, inputs) -> output``.
        logits: ``logits(output) -> (B, C)``; None for encoders (targets must then be callables).
        check: ``check(model, inputs)`` raising ``ValueError``/``TypeError`` with the fix.
        layout: ``layout(model, inputs) -> TokenLayout``.
        family: one-line description for error messages.
        towers: the modalities are separate towers with their own batches (dual encoders): each
            is explained on its own (:func:`gae_utils.dual.explain_dual`).
    """

    name: str
    model_classes: tuple[str, ...]
    sites: tuple[AttentionSite, ...]
    eager: Callable[[nn.Module], Any]
    call: Callable[[nn.Module, Any], Any]
    logits: Callable[[Any], Tensor] | None
    check: Callable[[nn.Module, Any], None]
    layout: Callable[[nn.Module, Any], TokenLayout]
    family: str = ""
    towers: bool = False

    def matches(self, model: nn.Module) -> bool:
        names = {cls.__name__ for cls in type(model).__mro__}
        return any(name in names for name in self.model_classes)


ADAPTERS: list[Adapter] = [
    Adapter(
        name="timm-vit",
        model_classes=("VisionTransformer",),  # also VisionTransformerDistilled (DeiT), reg-token ViTs
        sites=(AttentionSite("Attention", probs="attn_drop"),),
        eager=timm_eager,
        call=lambda model, images: model(images),
        logits=lambda out: out,
        check=_timm_check,
        layout=_timm_layout,
        family="timm VisionTransformer (vit_*, deit_*, incl. distillation/register tokens, avg pooling)",
    ),
    Adapter(
        name="hf-vit",
        model_classes=(
            "ViTForImageClassification",
            "DeiTForImageClassification",
            "DeiTForImageClassificationWithTeacher",
        ),
        sites=(AttentionSite("ViTAttention", probs=1), AttentionSite("DeiTAttention", probs=1)),
        eager=hf_eager,
        call=lambda model, images: model(pixel_values=images),
        logits=lambda out: out.logits,
        check=_hf_check,
        layout=_hf_layout,
        family="Hugging Face ViTForImageClassification / DeiTForImageClassification(WithTeacher)",
    ),
    Adapter(
        name="hf-bert-encoder",
        model_classes=("BertModel",),
        sites=(AttentionSite("BertSelfAttention", probs=1, query="text", key="text"),),
        eager=hf_eager,
        call=lambda model, inputs: model(**inputs),
        logits=None,
        check=_text_check,
        layout=_text_mean_layout,
        family="Hugging Face BertModel text encoders (e.g. sentence-transformers MiniLM), mean-pooled",
    ),
    Adapter(
        name="hf-clip",
        model_classes=("CLIPModel",),
        sites=(
            AttentionSite("CLIPAttention", probs=1, query="image", key="image", within="vision_model"),
            AttentionSite("CLIPAttention", probs=1, query="text", key="text", within="text_model"),
        ),
        eager=hf_eager,
        call=lambda model, inputs: model(**inputs),
        logits=lambda out: out.logits_per_image,
        check=_clip_check,
        layout=_clip_layout,
        family="Hugging Face CLIPModel (image tower read at CLS, text tower at EOT), via gae_utils.dual",
        towers=True,
    ),
    Adapter(
        name="hf-vilt",
        model_classes=("ViltForQuestionAnswering", "ViltForImageAndTextRetrieval"),
        sites=(AttentionSite("ViltSelfAttention", probs="dropout", query="joint", key="joint"),),
        eager=_no_switch,
        call=_vilt_call,
        logits=lambda out: out.logits,
        check=_vilt_check,
        layout=_vilt_layout,
        family="Hugging Face ViLT (one stream over text + image patches, read at the text [CLS] row)",
    ),
    Adapter(
        name="hf-visualbert",
        model_classes=("VisualBertForQuestionAnswering", "VisualBertForVisualReasoning"),
        sites=(AttentionSite("VisualBertSelfAttention", probs="dropout", query="joint", key="joint"),),
        eager=_no_switch,
        call=lambda model, inputs: model(**inputs),
        logits=lambda out: out.logits,
        check=_visualbert_check,
        layout=_visualbert_layout,
        family="Hugging Face VisualBERT (one stream over text + region features you supply)",
    ),
    Adapter(
        name="hf-lxmert",
        model_classes=("LxmertForQuestionAnswering",),
        sites=(
            AttentionSite("LxmertAttention", probs="dropout", query="text", key="text", within="layer"),
            AttentionSite("LxmertAttention", probs="dropout", query="image", key="image", within="r_layers"),
            # one module serves both directions of a cross-modality layer: text->image, then image->text
            AttentionSite(
                "LxmertAttention",
                probs="dropout",
                kind="cross",
                within="visual_attention",
                calls=(("text", "image"), ("image", "text")),
                group="module",
            ),
            AttentionSite("LxmertAttention", probs="dropout", query="text", key="text", within="lang_self_att"),
            AttentionSite("LxmertAttention", probs="dropout", query="image", key="image", within="visn_self_att"),
        ),
        eager=_no_switch,
        call=lambda model, inputs: model(**inputs),
        logits=lambda out: out.question_answering_score,
        check=_lxmert_check,
        layout=_lxmert_layout,
        family="Hugging Face LxmertForQuestionAnswering (two streams, co-attention; region features supplied by you)",
    ),
]


def register_adapter(adapter: Adapter, first: bool = True) -> None:
    """Add an adapter to the table (first by default, so it overrides built-in entries)."""
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)


def find_adapter(model: nn.Module) -> Adapter:
    """The first adapter of :data:`ADAPTERS` that serves ``model``.

    Raises:
        UnsupportedModelError: naming the model's class, the supported families and how to
            register an adapter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    families = "\n".join(f"  - {a.family or a.name}" for a in ADAPTERS)
    raise UnsupportedModelError(
        f"no adapter captures the attention of {type(model).__name__}. Supported families:\n{families}\n"
        "To add one, describe where its attention probabilities live with "
        "gae_utils.Adapter(..., sites=(gae_utils.AttentionSite('MyAttention', probs=...),), ...) and call "
        "gae_utils.register_adapter(adapter) (see the README section 'Adding a model')."
    )


def attention_modules(model: nn.Module, adapter: Adapter) -> list[tuple[str, nn.Module, AttentionSite]]:
    """All modules of ``model`` matching one of the adapter's sites, in registration order."""
    found = []
    for name, module in model.named_modules():
        classes = {cls.__name__ for cls in type(module).__mro__}
        for site in adapter.sites:
            if site.module_class in classes and (site.within is None or site.within in name.split(".")):
                found.append((name, module, site))
                break
    return found
