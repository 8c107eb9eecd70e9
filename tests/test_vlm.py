"""Vision-language models (image tokens inside the language model's sequence) through the attention
interface, against a per-example, per-target ``.backward()`` reference of docs/rules.md's rules."""

import pytest
import torch

import gae_utils as gu

transformers = pytest.importorskip("transformers")

IMAGE = 63  # the image placeholder token id of the tiny configs
TEXT = dict(
    model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
)  # fmt: skip
VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def tiny_vlm(family: str, attn: str = "eager", seed: int = 0):
    """LLaVA (CLIP tower, one token per patch: 4 x 4) or Idefics3 / SmolVLM (pixel shuffle 2: 2 x 2 tokens)."""
    torch.manual_seed(seed)
    vision = dict(VISION, intermediate_size=64)
    if family == "llava":
        config = transformers.LlavaConfig(
            vision_config=dict(vision, model_type="clip_vision_model"), text_config=TEXT, image_token_id=IMAGE
        )
    else:
        config_class = {"idefics3": transformers.Idefics3Config, "smolvlm": transformers.SmolVLMConfig}[family]
        config = config_class(vision_config=vision, text_config=TEXT, scale_factor=2, image_token_id=IMAGE)
    config._attn_implementation = attn
    model_class = {
        "llava": transformers.LlavaForConditionalGeneration,
        "idefics3": transformers.Idefics3ForConditionalGeneration,
        "smolvlm": transformers.SmolVLMForConditionalGeneration,
    }[family]
    return model_class(config).eval()


def prompts(n_image: int) -> list[list[int]]:
    return [[1, 5, 6, *[IMAGE] * n_image, 7, 8, 9], [1, *[IMAGE] * n_image, 7, 30], [1, 4, *[IMAGE] * n_image, 2]]


def batch(family: str, side: str = "right", seed: int = 1):
    n_image = 16 if family == "llava" else 4
    rows = prompts(n_image)
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        cols = slice(0, len(p)) if side == "right" else slice(length - len(p), length)
        ids[i, cols], mask[i, cols] = torch.tensor(p), 1
    pixels = torch.rand(len(rows), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    pixels = pixels if family == "llava" else pixels[:, None]  # Idefics3: (B, images, C, H, W)
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def reference(model, prompt, pixels, token):
    """One unpadded example, the language model's own ``output_attentions``, autograd.grad of the next
    token's logit; Eq. 5-6 by hand; the last token's row of R - I split into image and text tokens."""
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, pixel_values=pixels[None], output_attentions=True, use_cache=False)
    grads = torch.autograd.grad(out.logits[0, -1, token], out.attentions)
    n = len(prompt)
    relevancy = torch.eye(n)
    for attn, grad in zip(out.attentions, grads):
        relevancy = relevancy + (grad[0] * attn[0]).clamp(min=0).mean(dim=0) @ relevancy
    row = (relevancy - torch.eye(n))[-1].detach()
    is_image = ids[0] == IMAGE
    return row[is_image], row.where(~is_image, 0.0)


@pytest.mark.parametrize("family", ["llava", "idefics3", "smolvlm"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_answer_token_over_image_and_text_tokens_matches_a_per_example_reference(family, side):
    model = tiny_vlm(family)
    rows, x = batch(family, side)
    targets = torch.tensor([[3, 40], [11, 11], [0, 62]])
    exp = gu.explain(model, x, target=targets, verify=True)
    assert gu.find_adapter(model).name == "hf-vlm"
    side_len = 4 if family == "llava" else 2
    assert exp.grid_relevance("image").shape == (3, 2, side_len, side_len)
    assert exp.relevance["text"].shape == (3, 2, x["input_ids"].shape[1])
    for b, prompt in enumerate(rows):
        real = x["attention_mask"][b].bool()
        for k in range(2):
            image, text = reference(model, prompt, x["pixel_values"][b], int(targets[b, k]))
            torch.testing.assert_close(exp.relevance["image"][b, k], image, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(exp.relevance["text"][b, k, real], text, rtol=1e-4, atol=1e-6)
            assert (exp.relevance["text"][b, k, ~real] == 0).all()


def test_default_target_is_the_predicted_next_token_and_the_model_is_restored():
    model = tiny_vlm("llava", attn="sdpa")
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    before = [c._attn_implementation_internal for c in configs]
    _, x = batch("llava")
    with torch.no_grad():
        model(**x)  # transformers installs its own output-capturing hooks on the first call
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    exp = gu.explain(model, x, verify=True)
    with torch.no_grad():
        logits = model(**x).logits  # right padding: the last real token of each row
    last = x["attention_mask"].sum(1) - 1
    assert torch.equal(exp.target, logits[torch.arange(3), last].argmax(-1))
    assert [c._attn_implementation_internal for c in configs] == before
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    rows = gu.explain(model, x, maps=False)  # the answer row without the full maps
    torch.testing.assert_close(rows.relevance["image"], exp.relevance["image"], rtol=1e-5, atol=1e-7)


def test_inputs_the_readout_cannot_place_are_refused():
    model = tiny_vlm("idefics3")
    _, x = batch("idefics3")
    tiles = dict(x, pixel_values=x["pixel_values"].expand(-1, 2, -1, -1, -1))
    with pytest.raises(ValueError, match="one\nimage per example|do_image_splitting=False"):
        gu.explain(model, tiles)
    odd = dict(x, input_ids=x["input_ids"].where(x["input_ids"] != IMAGE, 5))
    with pytest.raises(ValueError, match="square grid of image tokens"):
        gu.explain(model, odd)
    with pytest.raises(TypeError, match="pixel_values"):
        gu.explain(model, {"input_ids": x["input_ids"]})


@pytest.mark.parametrize(
    "model_type", ["llava", "idefics3", "smolvlm", "paligemma", "aya_vision", "internvl", "ovis2", "video_llava"]
)
def test_vlm_families_of_transformers_are_explained_with_parity(model_type):
    from gae_workbook.probe_vision import probe_family

    outcome, detail = probe_family(model_type, "vlm")
    assert outcome == "ok" and "hf-vlm" in detail, (outcome, detail)


@pytest.mark.parametrize("model_type", ["blip", "git", "pix2struct", "florence2"])
def test_vlm_families_whose_attention_bypasses_the_interface_are_refused(model_type):
    from gae_workbook.probe_vision import probe_family

    outcome, detail = probe_family(model_type, "vlm")
    assert outcome == "not routed", (outcome, detail)
