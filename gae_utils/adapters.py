"""Adapters: the per-architecture facts the engine needs, stored as data.

An :class:`Adapter` says, for one family of models, which modules are attention layers, where
their attention probabilities can be read (a child module whose output *is* the probabilities,
or an index into the attention module's output tuple), which modality each layer reads and
writes, how to switch the family's fused attention off for one call, how the model is called,
where its logits are, and how its tokens are laid out. Adding a model family is adding an entry
to :data:`ADAPTERS` (or calling :func:`register_adapter`), not editing the engine.
"""

from __future__ import annotations

import re
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
        graph_base: the returned probabilities are a view made *after* the module used them
            (``torch.nn.MultiheadAttention`` returns ``weights.view(B, H, Nq, Nk)`` of the
            ``(B*H, Nq, Nk)`` tensor its ``bmm`` read); gradients are then taken at the view's base.
    """

    module_class: str
    probs: str | int
    kind: str = "self"
    query: str = "image"
    key: str = "image"
    group: str | None = None
    within: str | None = None
    calls: tuple[tuple[str, str], ...] | None = None
    graph_base: bool = False


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
    _check_image_batch(inputs["pixel_values"], None, channels=model.config.num_channels)
    if inputs["pixel_values"].shape[0] != inputs["input_ids"].shape[0]:
        raise ValueError(
            f"{inputs['pixel_values'].shape[0]} images for {inputs['input_ids'].shape[0]} questions; "
            "pass one image per question"
        )
    if min(inputs["pixel_values"].shape[-2:]) < model.config.patch_size:
        raise ValueError(
            f"images of {tuple(inputs['pixel_values'].shape[-2:])} are smaller than one patch "
            f"({model.config.patch_size} pixels); resize them with the ViLT processor"
        )


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
    if any(c.__name__ == "VisualBertForQuestionAnswering" for c in type(model).__mro__):
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
        contains: also serve any model that *contains* a module of one of these classes (a user
            model built around ``torch.nn.Transformer``); such an adapter documents the call
            convention the model must follow.
        token_logits: encoder-decoders: ``token_logits(output) -> (B, T, V)`` next-token logits of
            every decoder position (:func:`gae_utils.seq2seq.explain_generation`).
        targets: for models whose explained *row* depends on the target (DETR: the query of each
            detection), ``targets(model, inputs, output, target, layout) -> (index (B, K) | None,
            scores (B, K), multi_target, layout, extra)`` resolves the target after the forward pass
            and returns the layout with per-(example, target) row weights; None: class logits.
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
    contains: tuple[str, ...] = ()
    token_logits: Callable[[Any], Tensor] | None = None
    targets: Callable[..., tuple] | None = None

    def matches(self, model: nn.Module) -> bool:
        names = {cls.__name__ for cls in type(model).__mro__}
        if any(name in names for name in self.model_classes):
            return True
        return bool(self.contains) and any(type(m).__name__ in self.contains for m in model.modules())


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


# --------------------------------------------------------------- encoder-decoders (seq2seq text)
#
# Modalities: "source" (encoder self-attention), "target" (causal decoder self-attention) and the
# decoder's cross-attention target -> source (method.md, Eq. 6-11). Every seq2seq adapter takes the
# same inputs, a dict with "input_ids" (B, S), "attention_mask" (B, S), "decoder_input_ids" (B, T)
# and optionally "decoder_attention_mask" (B, T), and is explained token by token with
# gae_utils.seq2seq.explain_generation. Where the probabilities live (transformers 5.x, eager):
# Marian/BART attention returns (output, weights) -> index 1; T5Attention returns
# (output, position_bias, weights) -> index 2 (its relative position bias is added to the scores
# before the softmax and does not depend on A); torch.nn.MultiheadAttention returns per-head
# weights only when called with need_weights=True, average_attn_weights=False, as a view made after
# its bmm read them (graph_base=True).


def _seq2seq_check(model: nn.Module, inputs: Any) -> None:
    if not isinstance(inputs, Mapping) or not {"input_ids", "decoder_input_ids"} <= set(inputs):
        raise TypeError(
            "an encoder-decoder takes a dict with 'input_ids' (B, S), 'attention_mask' (B, S) and "
            "'decoder_input_ids' (B, T); to explain a generation use "
            "gae_utils.seq2seq.explain_generation(model, source_inputs, generated_ids)"
        )
    _text_check(model, {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs})
    ids, dec = inputs["input_ids"], inputs["decoder_input_ids"]
    if dec.ndim != 2 or dec.shape[1] == 0:
        raise ValueError(
            f"decoder_input_ids must be (B, T) with T > 0, got {tuple(dec.shape)}; the generation is empty"
        )
    if dec.shape[0] != ids.shape[0]:
        raise ValueError(
            f"decoder_input_ids has {dec.shape[0]} rows but input_ids has {ids.shape[0]}; pass one target per source"
        )
    limit = getattr(getattr(model, "config", None), "vocab_size", None)
    for key in ("input_ids", "decoder_input_ids"):
        if limit is not None and (inputs[key].min() < 0 or inputs[key].max() >= limit):
            raise ValueError(
                f"{key} holds ids outside the vocabulary (0..{limit - 1}); encode with the model's tokenizer"
            )


def seq2seq_last_row(inputs: Mapping) -> Tensor:
    """One-hot ``(B, T)`` weights of each example's last real decoder position (the next-token row)."""
    dec = inputs["decoder_input_ids"]
    mask = inputs.get("decoder_attention_mask")
    last = (
        (mask.long().sum(dim=1) - 1).clamp(min=0) if mask is not None else torch.full_like(dec[:, 0], dec.shape[1] - 1)
    )
    return F.one_hot(last, dec.shape[1]).float()  # (B, T)


def _seq2seq_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    """Source and target tokens (no prefix); by default the last decoder row is read (next token)."""
    segments = (
        Segment("source", inputs["input_ids"].shape[1], 0),
        Segment("target", inputs["decoder_input_ids"].shape[1], 0),
    )
    readouts = (Readout("source", "target", "source", "weights"), Readout("target", "target", "target", "weights"))
    last = seq2seq_last_row(inputs)
    return TokenLayout(segments, readouts, {"source": last, "target": last})


def _hf_seq2seq_call(model: nn.Module, inputs: Mapping) -> Any:
    return model(**inputs, use_cache=False)


@contextmanager
def mha_eager(model: nn.Module) -> Iterator[None]:
    """Make every ``nn.MultiheadAttention`` of ``model`` return per-head probabilities for the block.

    ``nn.TransformerEncoderLayer``/``DecoderLayer`` call their attention with ``need_weights=False``
    and may take a fused fast path that bypasses the module: for the block the fast path is switched
    off (``torch.backends.mha``) and a forward pre-hook sets ``need_weights=True,
    average_attn_weights=False`` on each call. The hooks are removed and the flag restored after.
    """
    saved = torch.backends.mha.get_fastpath_enabled()

    def per_head(module: nn.Module, args: tuple, kwargs: dict):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    handles = []
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(per_head, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(saved)


def _torch_seq2seq_check(model: nn.Module, inputs: Any) -> None:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    if params[:2] != ["input_ids", "decoder_input_ids"] or "attention_mask" not in params:
        raise UnsupportedModelError(
            f"{type(model).__name__} contains a torch.nn.Transformer but its forward{tuple(params)} does not follow "
            "the call convention model(input_ids, decoder_input_ids, attention_mask=None) -> logits (B, T, V) "
            "(attention_mask: (B, S), 1 at real source tokens; the model applies the causal mask itself). "
            "Wrap it in a module with that forward, or register an adapter with your own call."
        )
    _seq2seq_check(model, inputs)


def _torch_seq2seq_call(model: nn.Module, inputs: Mapping) -> Any:
    return model(inputs["input_ids"], inputs["decoder_input_ids"], attention_mask=inputs.get("attention_mask"))


def _seq2seq_sites(cls: str, probs: int, cross: str, graph_base: bool = False) -> tuple[AttentionSite, ...]:
    """Source, causal target and cross-attention sites of an encoder-decoder whose attention modules are
    all of class ``cls``; the cross-attention modules are those whose name has the part ``cross``.
    Cross-attention first: its module name also contains ``encoder`` in Marian/BART (``encoder_attn``)."""
    return (
        AttentionSite(cls, probs, kind="cross", query="target", key="source", within=cross, graph_base=graph_base),
        AttentionSite(cls, probs, query="source", key="source", within="encoder", graph_base=graph_base),
        AttentionSite(cls, probs, query="target", key="target", within="decoder", graph_base=graph_base),
    )


def _hf_seq2seq_adapter(name: str, model_class: str, attention: str, probs: int, cross: str, family: str) -> Adapter:
    """A Hugging Face encoder-decoder LM: the families differ only in these facts."""
    return Adapter(
        name=name,
        model_classes=(model_class,),
        sites=_seq2seq_sites(attention, probs, cross),
        eager=hf_eager,
        call=_hf_seq2seq_call,
        logits=None,
        check=_seq2seq_check,
        layout=_seq2seq_layout,
        family=f"Hugging Face {model_class}{family}, via gae_utils.seq2seq",
        token_logits=lambda out: out.logits,
    )


SEQ2SEQ_ADAPTERS: list[Adapter] = [
    _hf_seq2seq_adapter(
        "hf-marian", "MarianMTModel", "MarianAttention", 1, "encoder_attn", " (source, causal target, cross-attention)"
    ),
    _hf_seq2seq_adapter("hf-bart", "BartForConditionalGeneration", "BartAttention", 1, "encoder_attn", ""),
    # T5 returns (output, position_bias, weights)
    _hf_seq2seq_adapter(
        "hf-t5", "T5ForConditionalGeneration", "T5Attention", 2, "EncDecAttention", " (relative position bias)"
    ),
    Adapter(
        name="torch-transformer",
        model_classes=(),
        contains=("Transformer",),  # any model holding a torch.nn.Transformer, called by the convention below
        sites=_seq2seq_sites("MultiheadAttention", 1, "multihead_attn", graph_base=True),
        eager=mha_eager,
        call=_torch_seq2seq_call,
        logits=None,
        check=_torch_seq2seq_check,
        layout=_seq2seq_layout,
        family="models containing torch.nn.Transformer with forward(input_ids, decoder_input_ids, attention_mask=None) "
        "-> logits (B, T, V), via gae_utils.seq2seq",
        token_logits=lambda out: out,
    ),
]
ADAPTERS.extend(SEQ2SEQ_ADAPTERS)


def register_adapter(adapter: Adapter, first: bool = True) -> None:
    """Add an adapter to the table (first by default, so it overrides built-in entries)."""
    if first:
        ADAPTERS.insert(0, adapter)
    else:
        ADAPTERS.append(adapter)


MIN_TRANSFORMERS = (5, 15)
"""The oldest Transformers release the Hugging Face adapters are tested on (5.15.1 to 5.24.0).
Older releases return attention probabilities at other output positions (T5 before 5.15) or only
when asked (ViT and DETR in 4.x and early 5.x), and name DETR's attention classes differently."""


def _installed_transformers() -> str:
    import transformers

    return transformers.__version__


def check_transformers_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedModelError` naming the fix when Transformers is older than :data:`MIN_TRANSFORMERS`."""
    version = version or _installed_transformers()
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if parts < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise UnsupportedModelError(
            f"transformers {version} is installed, but the Hugging Face adapters need transformers>={need}: "
            f"older releases return the attention probabilities elsewhere or not at all. "
            f"Upgrade with: pip install -U 'transformers>={need}'"
        )


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
            if type(model).__module__.startswith("transformers."):
                check_transformers_version()
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


# ------------------------------------------------------------------------ Hugging Face DETR
# Encoder-decoder (Chefer et al. ICCV 2021, Sec. 4): "image" = the backbone's feature-grid tokens
# (encoder self-attention), "query" = the object queries (decoder self-attention), and the decoder's
# cross-attention from queries to image tokens. Transformers' DetrSelfAttention / DetrCrossAttention
# return ``(output, weights)``; the weights are the post-softmax probabilities (B, H, Nq, Nk) on the
# eager path only, so the adapter switches the model to eager attention for the call.


@contextmanager
def detr_eager(model: nn.Module) -> Iterator[None]:
    """Eager attention for the block: DETR's attention modules read ``config._attn_implementation`` at
    every call, so the flag is switched on each config they hold (``set_attn_implementation`` would
    also visit the backbone, which refuses SDPA and could not be switched back)."""
    configs = {
        id(m.config): m.config
        for m in model.modules()
        if type(m).__name__.startswith("Detr") and hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    }
    with _eager_flags(model, [(config, "_attn_implementation", "eager") for config in configs.values()]):
        yield


def _detr_pixels(inputs: Any) -> Tensor:
    return inputs["pixel_values"] if isinstance(inputs, Mapping) else inputs


def _detr_call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**{k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")})
    return model(pixel_values=inputs)


def _detr_check(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, Mapping) and "pixel_values" not in inputs:
        raise TypeError("DETR takes images (B, C, H, W) or a dict with 'pixel_values' (and optionally 'pixel_mask')")
    backbone = getattr(model.config, "backbone_config", None)
    channels = getattr(backbone, "num_channels", None) if backbone is not None else None
    _check_image_batch(_detr_pixels(inputs), None, channels=channels or getattr(model.config, "num_channels", 3))


def detr_grid(n_tokens: int, size: tuple[int, int]) -> tuple[int, int]:
    """The backbone's feature grid ``(h, w)`` holding ``n_tokens`` tokens for images of ``size``.

    Strided convolutions (kernel k, padding k // 2, stride 2) map a side n to ceil(n / 2); DETR's
    backbones downsample by 4 to 64, so the grid is the first such halving that has ``n_tokens``.
    """
    h, w = size
    for _ in range(7):
        if h * w == n_tokens:
            return h, w
        h, w = -(-h // 2), -(-w // 2)
    raise UnsupportedModelError(f"cannot place {n_tokens} encoder tokens on a grid for images of size {size}")


def detr_query_target(output: Any, target: Any, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """The explained queries of a DETR batch and their predicted classes.

    Args:
        output: its ``DetrObjectDetectionOutput`` (``logits`` ``(B, Q, C + 1)``, last = no object).
        target: ``None``: every confident detection of each image (best real-class probability >
            ``threshold``); an ``int`` query for every image; a ``(B,)`` or ``(B, K)`` tensor of query
            indices; or a list of B lists of query indices (images may differ in length).
        threshold: confidence of a detection.

    Returns:
        ``queries (B, K)`` with -1 in the padding slots of images with fewer than K targets, and
        ``classes (B, K)`` the explained class of each query (its most probable real class; -1 padded).
    """
    logits = output.logits  # (B, Q, C + 1)
    batch, n_queries = logits.shape[:2]
    probs = logits.detach().softmax(-1)[..., :-1]  # (B, Q, C)
    best, classes = probs.max(-1)  # (B, Q) each
    if target is None:
        lists = [(best[b] > threshold).nonzero().flatten().tolist() for b in range(batch)]
        if not any(lists):
            raise ValueError(
                f"no object query of any image has a class probability above {threshold}; "
                "pass target=<query index> (or a list of query indices per image) to explain chosen queries."
            )
    elif isinstance(target, int):
        lists = [[target]] * batch
    elif isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise ValueError(f"target must hold query indices (integers), got dtype {target.dtype}")
        t = target.reshape(batch, -1) if target.ndim <= 1 and target.numel() == batch else target
        if t.ndim == 0:
            t = t.expand(batch)[:, None]
        if t.ndim != 2 or t.shape[0] != batch:
            raise ValueError(
                f"target of shape {tuple(target.shape)} does not fit a batch of {batch}: pass an int query, a "
                f"({batch},) or ({batch}, K) tensor of query indices, or a list of {batch} lists."
            )
        lists = [[int(q) for q in row if int(q) >= 0] for row in t.tolist()]
    elif isinstance(target, (list, tuple)):
        if len(target) != batch or not all(isinstance(row, (list, tuple)) for row in target):
            raise ValueError(f"a list target must hold one list of query indices per image ({batch} lists)")
        lists = [[int(q) for q in row] for row in target]
    else:
        raise TypeError(
            f"DETR targets are query indices (int, tensor or list of lists), got {type(target).__name__}; "
            "a callable target has no explained row of R[query, image]."
        )
    bad = [q for row in lists for q in row if not 0 <= q < n_queries]
    if bad:
        raise ValueError(f"query index {bad[0]} is out of range: the model has {n_queries} object queries")
    k = max(1, max(len(row) for row in lists))
    queries = torch.full((batch, k), -1, dtype=torch.long, device=logits.device)
    for b, row in enumerate(lists):
        queries[b, : len(row)] = torch.tensor(row, dtype=torch.long, device=logits.device)
    safe = queries.clamp_min(0)  # (B, K)
    picked = classes.gather(1, safe)  # (B, K)
    return queries, torch.where(queries >= 0, picked, torch.full_like(picked, -1))


def _detr_targets(model: nn.Module, inputs: Any, output: Any, target: Any, layout: TokenLayout):
    """Scores ``(B, K)``: the class logit of each explained query (0 in padding slots, no gradient there),
    and the layout completed with the grid and per-(example, target) row weights ``(B, K, Q)``."""
    queries, classes = detr_query_target(output, target)
    logits = output.logits  # (B, Q, C + 1)
    valid = queries >= 0  # (B, K)
    safe_q, safe_c = queries.clamp_min(0), classes.clamp_min(0)
    per_query = logits.gather(1, safe_q[..., None].expand(-1, -1, logits.shape[-1]))  # (B, K, C + 1)
    scores = per_query.gather(2, safe_c[..., None]).squeeze(-1)  # (B, K)
    scores = torch.where(valid, scores, scores * 0)  # padding: a constant, its gradient is zero
    n_queries = logits.shape[1]
    rows = F.one_hot(safe_q, n_queries).to(logits.dtype) * valid[..., None]  # (B, K, Q)
    n_image = output.encoder_last_hidden_state.shape[1]
    grid = detr_grid(n_image, tuple(_detr_pixels(inputs).shape[-2:]))
    segments = (Segment("image", n_image, 0, grid), Segment("query", n_queries, 0))
    readouts = (
        Readout("image", "query", "image", "weights"),  # row k of R[query, image]: the object's map
        Readout("query", "query", "query", "weights"),  # row k of R[query, query]: how queries mix
    )
    layout = TokenLayout(segments, readouts, {"image": rows, "query": rows})
    return classes, scores, True, layout, {"queries": queries}


def _detr_layout(model: nn.Module, inputs: Any) -> TokenLayout:
    """Placeholder before the forward pass; :func:`_detr_targets` builds the real layout from the output."""
    return TokenLayout((Segment("image", 0), Segment("query", model.config.num_queries)), ())


ADAPTERS.append(
    Adapter(
        name="hf-detr",
        model_classes=("DetrForObjectDetection",),
        sites=(
            AttentionSite("DetrSelfAttention", probs=1, query="image", key="image", within="encoder"),
            AttentionSite("DetrSelfAttention", probs=1, query="query", key="query", within="decoder"),
            AttentionSite("DetrCrossAttention", probs=1, kind="cross", query="query", key="image"),
        ),
        eager=detr_eager,
        call=_detr_call,
        logits=lambda out: out.logits,
        check=_detr_check,
        layout=_detr_layout,
        family="Hugging Face DetrForObjectDetection (encoder over the feature grid, decoder over object queries)",
        targets=_detr_targets,
    )
)
