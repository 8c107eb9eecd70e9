"""Unsupported models and wrong inputs get an error naming the problem and the fix (issue 23, items
6 and 7); inputs that can be read unambiguously (a processor's dict, a causal LM's pad tokens) are
read, with a warning where something was inferred."""

import warnings

import pytest
import torch
from conftest import tiny_hf_vit, tiny_timm_vit
from test_causal_lm import batch, tiny_lm

import gae_utils as gu

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


# --- 6. models GAE does not apply to -------------------------------------------------------------


def tiny_timm_convnext():
    return timm.create_model("convnext_atto", pretrained=False, num_classes=3, dims=(8, 16, 24, 32)).eval()


def tiny_hf_convnext():
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    return transformers.ConvNextForImageClassification(config).eval()


def tiny_timm_swin():
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 1),
        img_size=56,
        window_size=7,
    ).eval()


def tiny_hf_swin():
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3
    )
    return transformers.SwinForImageClassification(config).eval()


@pytest.mark.parametrize("build", [tiny_timm_convnext, tiny_hf_convnext])
def test_convolutional_networks_are_named_with_grad_cam_as_the_alternative(build):
    model = build()
    with pytest.raises(gu.UnsupportedModelError) as info:
        gu.explain(model, torch.rand(2, 3, 32, 32))
    message = str(info.value)
    assert message.startswith(f"{type(model).__name__} is a convolutional network: it has no attention layers")
    assert "GAE" in message and "does not apply" in message and "Grad-CAM" in message
    assert "Supported families" not in message and message.count("\n") == 0  # one paragraph, no wall


@pytest.mark.parametrize("build, size", [(tiny_timm_swin, 56), (tiny_hf_swin, 32)])
def test_swin_models_are_explained_on_their_first_stage_grid(build, size):
    exp = gu.explain(build(), torch.rand(2, 3, size, size))
    assert exp.relevance["image"].shape == (2, (size // 4) ** 2)
    assert torch.isfinite(exp.relevance["image"]).all()


def tiny_hf_swinv2():
    config = transformers.Swinv2Config(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3
    )
    return transformers.Swinv2ForImageClassification(config).eval()


def tiny_hf_swin_model():
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
    )
    return transformers.SwinModel(config).eval()


@pytest.mark.parametrize("build", [tiny_hf_swinv2, tiny_hf_swin_model])
def test_windowed_models_no_adapter_serves_name_what_is_missing(build):
    model = build()
    with pytest.raises((gu.UnsupportedModelError, gu.AttentionCaptureError)) as info:
        gu.explain(model, torch.rand(2, 3, 32, 32))
    message = str(info.value)
    assert message.startswith(f"{type(model).__name__} is a hierarchical vision transformer with attention")
    assert "no adapter gives its per-window attention maps and window layout" in message
    assert "SwinForImageClassification" in message and "register an adapter" in message
    assert "scores have" not in message and message.count("\n") == 0  # not the capture's shape mismatch


def test_unknown_models_get_a_short_message_pointing_to_the_docs():
    with pytest.raises(gu.UnsupportedModelError) as info:
        gu.explain(torch.nn.Sequential(torch.nn.Linear(3, 3)), torch.rand(2, 3))
    message = str(info.value)
    assert "docs/models.md" in message and "gae_utils.register_adapter(adapter)" in message
    assert len(message) < 400 and "timm VisionTransformer" not in message  # no list of families


# --- 7. inputs ------------------------------------------------------------------------------------


def test_string_targets_are_mapped_through_id2label():
    vit = tiny_hf_vit()
    vit.config.id2label = {i: name for i, name in enumerate(["red", "green", "blue", "a", "b", "c", "d"])}
    images = torch.rand(2, 3, 32, 32)
    by_name = gu.explain(vit, images, target="Blue")
    torch.testing.assert_close(by_name.relevance["image"], gu.explain(vit, images, target=2).relevance["image"])
    assert by_name.target.tolist() == [2, 2]
    assert gu.explain(vit, images, target=["red", "blue"]).target.tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"target 'purple' is not a class name: model.config.id2label has 7 labels"):
        gu.explain(vit, images, target="purple")


def test_string_target_without_label_names_says_how_to_give_a_target(vit, images):
    with pytest.raises(ValueError, match=r"'red' is not a class name: VisionTransformer has no label names") as info:
        gu.explain(vit, images, target="red")
    assert "class index (int)" in str(info.value) and "callable" in str(info.value)


def test_string_and_out_of_range_targets_of_a_language_model_speak_of_tokens():
    lm = tiny_lm("llama")
    x = batch([[5, 9, 3], [7, 7]])
    with pytest.raises(ValueError, match=r"target token 999 is out of range: the vocabulary has 48 tokens"):
        gu.explain(lm, x, target=999)
    with pytest.raises(ValueError, match=r"a language model's target is a vocabulary token id: pass tokenizer"):
        gu.explain(lm, x, target="red")


def test_an_empty_batch_is_named(vit):
    with pytest.raises(ValueError, match=r"the batch is empty \(inputs of shape \(0, 3, 32, 32\)\)"):
        gu.explain(vit, torch.rand(0, 3, 32, 32))
    with pytest.raises(ValueError, match="the batch is empty"):
        gu.explain(tiny_lm("gpt2"), {"input_ids": torch.zeros(0, 4, dtype=torch.long)})


@pytest.mark.parametrize("build", [tiny_timm_vit, tiny_hf_vit], ids=["timm", "hf"])
def test_integer_pixels_are_refused_with_the_conversion(build):
    model = build()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    fix = r"images are torch.uint8 pixels, not floats: convert them to float and normalise"
    with pytest.raises(TypeError, match=fix):
        gu.explain(model, pixels)


@pytest.mark.parametrize("build", [tiny_timm_vit, tiny_hf_vit], ids=["timm", "hf"])
def test_grayscale_and_channels_last_images_get_the_fix(build):
    model = build()
    with pytest.raises(ValueError, match=r"grayscale \(B, 1, H, W\) images: repeat it: images.expand\(-1, 3, -1, -1\)"):
        gu.explain(model, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, H, W\) grayscale images have no channel dimension"):
        gu.explain(model, torch.rand(2, 32, 32))
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\): images.permute\(0, 3, 1, 2\)"):
        gu.explain(model, torch.rand(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"add a batch dimension with images\[None\]"):
        gu.explain(model, torch.rand(3, 32, 32))


@pytest.mark.parametrize("build", [tiny_timm_vit, tiny_hf_vit], ids=["timm", "hf"])
def test_image_models_take_a_processors_batch_feature(build, images):
    model = build()
    feature = transformers.BatchFeature({"pixel_values": images})
    expected = gu.explain(model, images, verify=True).relevance["image"]
    torch.testing.assert_close(gu.explain(model, feature, verify=True).relevance["image"], expected)
    torch.testing.assert_close(gu.explain(model, {"pixel_values": images}).relevance["image"], expected)
    with pytest.raises(TypeError, match=r"or a processor's output with 'pixel_values'; got a dict with keys \['x'\]"):
        gu.explain(model, {"x": images})


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_missing_attention_mask_is_inferred_from_pad_token_id_with_a_warning(side):
    lm = tiny_lm("llama")  # pad_token_id = 0
    x = batch([[5, 9, 3, 17, 22, 8], [7, 7, 30, 2], [11, 4, 19]], side)
    expected = gu.explain(lm, x)
    with pytest.warns(UserWarning, match=r"inferred it from pad_token_id=0") as caught:
        inferred = gu.explain(lm, {"input_ids": x["input_ids"]}, verify=True)
    assert len(caught) == 1  # once per call
    torch.testing.assert_close(inferred.relevance["text"], expected.relevance["text"])
    assert torch.equal(inferred.target, expected.target)
    ignored = gu.explain(lm, {"input_ids": x["input_ids"], "attention_mask": torch.ones_like(x["input_ids"])})
    assert not torch.allclose(ignored.relevance["text"], expected.relevance["text"])  # what the mask changes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pad token in the batch: nothing inferred, no warning
        gu.explain(lm, {"input_ids": torch.tensor([[5, 9, 3], [7, 7, 30]])})


def test_a_pad_id_inside_a_prompt_stays_a_real_token():
    from gae_utils.adapters.hf_causal_lm import infer_attention_mask

    lm = tiny_lm("gpt2")
    ids = torch.tensor([[0, 0, 5, 0, 9], [5, 6, 0, 7, 0]])
    with pytest.warns(UserWarning):
        mask = infer_attention_mask(lm, {"input_ids": ids})["attention_mask"]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_explain_generation_names_a_prompt_that_is_not_the_prefix():
    lm = tiny_lm("llama")
    x = batch([[5, 9, 3], [7, 7, 30]])
    generated = torch.cat([x["input_ids"], torch.tensor([[4, 8], [6, 2]])], dim=1)  # (2, 5)
    wrong = generated.clone()
    wrong[1, 2] = 11
    prefix = r"generated does not start with the prompt: row 1 differs from inputs\['input_ids'\] at column 2"
    with pytest.raises(ValueError, match=prefix):
        gu.explain_generation(lm, x, wrong)
    with pytest.raises(ValueError, match=r"generated has 3 columns, no more than the 3-token prompt"):
        gu.explain_generation(lm, x, generated[:, :3])
    assert gu.explain_generation(lm, x, generated).relevance["text"].shape == (2, 2, 4)


def test_clip_texts_as_strings_name_the_tokenizer():
    from test_dual import tiny_clip

    fix = r"texts must be the tokenizer's output .* got a list of 2 strings.*CLIPProcessor"
    with pytest.raises(TypeError, match=fix):
        gu.explain_dual(tiny_clip(), torch.rand(2, 3, 32, 32), ["a red square", "a blue circle"])
