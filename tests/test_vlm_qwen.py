"""The Qwen2-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with its own inputs (``image_grid_thw``,
``mm_token_type_ids``): the answer's row over the image tokens (one per 2 x 2 merged block of
patches, raster order of the merged grid), against a per-example reference from the model's own
``output_attentions``; ``relevance["pixels"]`` is absent with the reason (the tower calls
attention once per image or window)."""

import pytest
import torch
from test_vlm_end_to_end import IMAGE, assert_same, snapshot

import gae_utils as gu

transformers = pytest.importorskip("transformers")

TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0,
)  # fmt: skip
PATCHES = dict(patch_size=8, temporal_patch_size=2, spatial_merge_size=2, in_channels=3, num_heads=4, depth=2)
MROPE = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
TOWER = dict(PATCHES, hidden_size=32, intermediate_size=64, out_hidden_size=32)
FAMILIES = {  # config class, model class, text config, vision config
    "qwen2_vl": (
        "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", MROPE, dict(PATCHES, embed_dim=32, hidden_size=32),
    ),
    "qwen2_5_vl": (  # windowed attention in layer 0, full in layer 1
        "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", MROPE,
        dict(TOWER, window_size=16, fullatt_block_indexes=[1]),
    ),
    "qwen3_vl": (
        "Qwen3VLConfig", "Qwen3VLForConditionalGeneration",
        dict(TEXT, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True}),
        dict(TOWER, num_position_embeddings=16, deepstack_visual_indexes=[0]),
    ),
}  # fmt: skip


def tiny_qwen(family, scale=16.0):
    config_name, model_name, text, vision = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=62,
        vision_start_token_id=60, vision_end_token_id=61,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale if p.ndim == 2 else 1.0)
    return model


def qwen_inputs():
    """Two 32 x 32 images (4 x 4 patches of 8 px, two frames each, merged 2 x 2: 4 tokens), one
    per example, the second prompt left padded; the patches as the processor flattens them."""
    rows = [[1, 60, *[IMAGE] * 4, 61, 5, 6, 7], [1, 60, *[IMAGE] * 4, 61, 30]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    patches = torch.rand(32, 3 * 2 * 8 * 8, generator=torch.Generator().manual_seed(5))  # (16 + 16, C T p p)
    x = {
        "input_ids": ids, "attention_mask": mask, "pixel_values": patches,
        "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]]), "mm_token_type_ids": (ids == IMAGE).long(),
    }  # fmt: skip
    return rows, x


def reference(model, prompt, patches, token):
    """One unpadded example, the model's own ``output_attentions``; Eq. 5-6 by hand; the last
    token's row of R over the image tokens."""
    ids = torch.tensor([prompt])
    out = model(
        input_ids=ids, pixel_values=patches, image_grid_thw=torch.tensor([[1, 4, 4]]),
        mm_token_type_ids=(ids == IMAGE).long(), output_attentions=True, use_cache=False,
    )  # fmt: skip
    grads = torch.autograd.grad(out.logits[0, -1, token], out.attentions)
    relevancy = torch.eye(len(prompt))
    for attn, grad in zip(out.attentions, grads):
        relevancy = relevancy + (grad[0] * attn[0]).clamp(min=0).mean(dim=0) @ relevancy
    return relevancy[-1, ids[0] == IMAGE].detach()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_qwen_family_image_token_map_matches_a_per_example_reference(family):
    model = tiny_qwen(family)
    rows, x = qwen_inputs()
    targets = torch.tensor([[3, 40], [11, 62]])
    with torch.no_grad():
        model(**x)  # transformers installs its own output-capturing hooks on the first call
    before = snapshot(model)
    exp = gu.explain(model, x, target=targets, verify=True)
    assert_same(before, snapshot(model))
    assert exp.grid_relevance("image").shape == (2, 2, 2, 2)  # the merged 2 x 2 grid
    image = exp.relevance["image"]
    assert (image.std(-1) > 0.05 * image.mean(-1)).all()  # not uniform
    model.set_attn_implementation("eager")
    for b, prompt in enumerate(rows):
        for k in range(2):
            want = reference(model, prompt, x["pixel_values"][16 * b : 16 * (b + 1)], int(targets[b, k]))
            torch.testing.assert_close(image[b, k], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="calls attention once per image .* Use relevance\\['image'\\]"):
        exp.grid_relevance("pixels")


def test_qwen_positions_are_the_models_own_3d_positions():
    """The deliberate mistake the adapter avoids: 1-D positions from the mask (what causal LMs get)
    replace Qwen2-VL's M-RoPE positions, and the explained model is another one."""
    from dataclasses import replace

    from gae_utils.adapters.hf_causal_lm import _call

    model = tiny_qwen("qwen2_vl")
    rows, x = qwen_inputs()
    targets = torch.tensor([[3], [11]])
    ours = gu.explain(model, x, target=targets)
    one_d = gu.explain(model, x, target=targets, adapter=replace(gu.find_adapter(model), call=_call))
    model.set_attn_implementation("eager")
    want = reference(model, rows[0], x["pixel_values"][:16], 3)
    torch.testing.assert_close(ours.relevance["image"][0, 0], want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one_d.relevance["image"][0, 0], want, rtol=1e-3, atol=1e-6)
