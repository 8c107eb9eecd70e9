"""Tiny random-weight models shared by the tests (seeded, CPU)."""

import pytest
import torch


def tiny_timm_vit(seed=0, **overrides):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs).eval()


def tiny_hf_vit(cls_name="ViTForImageClassification", attn="eager", seed=0):
    import transformers

    torch.manual_seed(seed)
    config_cls = transformers.DeiTConfig if cls_name.startswith("DeiT") else transformers.ViTConfig
    config = config_cls(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=7,
        attn_implementation=attn,
    )
    return getattr(transformers, cls_name)(config).eval()


@pytest.fixture
def vit():
    return tiny_timm_vit()


@pytest.fixture
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
