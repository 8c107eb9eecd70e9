"""CLIP-style dual encoders: each tower on its own, every (image, text) pair from one forward pass."""

import pytest
import torch

import gae_utils as gu
from gae_utils.dual import explain_dual

EOS, BOS, PAD = 63, 62, 1


def tiny_clip(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            eos_token_id=EOS,
            bos_token_id=BOS,
            pad_token_id=PAD,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    config._attn_implementation = "eager"
    return transformers.CLIPModel(config).eval()


CAPTIONS = [[BOS, 5, 9, EOS], [BOS, 7, 7, 8, 11, EOS], [BOS, 3, EOS]]


def tokenized(captions):
    length = max(len(c) for c in captions)
    ids = torch.full((len(captions), length), PAD, dtype=torch.long)
    mask = torch.zeros(len(captions), length, dtype=torch.long)
    for i, c in enumerate(captions):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def reference_pair(model, image, caption):
    """One image and one caption, no padding: retain_grad(), .backward(), Eq. 5-6 per tower."""
    kept = {"vision_model": [], "text_model": []}
    handles = []
    for name, module in model.named_modules():
        if type(module).__name__ == "CLIPAttention":
            store = kept[name.split(".")[0]]

            def keep(module, args, output, store=store):
                output[1].retain_grad()
                store.append(output[1])

            handles.append(module.register_forward_hook(keep))
    out = model(pixel_values=image[None], input_ids=torch.tensor([caption]))
    for h in handles:
        h.remove()
    out.logits_per_image[0, 0].backward()
    rows = {}
    for tower, row in (("vision_model", 0), ("text_model", len(caption) - 1)):
        n = kept[tower][0].shape[-1]
        r = torch.eye(n)
        for attn in kept[tower]:
            r = r + (attn.grad * attn).clamp(min=0).mean(dim=1)[0] @ r
        rows[tower] = r[row]
    model.zero_grad(set_to_none=True)
    return out.logits_per_image[0, 0].detach(), rows["vision_model"][1:], rows["text_model"]


def test_every_pair_matches_a_one_pair_reference():
    model = tiny_clip()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dual = explain_dual(model, images, tokenized(CAPTIONS))
    assert dual.logits.shape == (2, 3)
    assert dual.image.relevance["image"].shape == (2, 3, 16)
    assert dual.text.relevance["text"].shape == (3, 2, 6)
    for i in range(2):
        for j, caption in enumerate(CAPTIONS):
            logit, image_row, text_row = reference_pair(model, images[i], caption)
            torch.testing.assert_close(dual.logits[i, j], logit, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dual.image.relevance["image"][i, j], image_row, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                dual.text.relevance["text"][j, i, : len(caption)], text_row, rtol=1e-5, atol=1e-6
            )
    assert all(p.grad is None for p in model.parameters())


def test_one_image_many_captions_and_baselines():
    model = tiny_clip()
    captions = [[BOS, 2 + k % 50, 3 + k % 40, EOS] for k in range(20)]
    image = torch.rand(1, 3, 32, 32)
    for method in gu.METHODS:
        dual = explain_dual(model, image, tokenized(captions), method=method)
        assert dual.image.relevance["image"].shape == (1, 20, 16)
        assert torch.isfinite(dual.text.relevance["text"]).all()
    with pytest.raises(ValueError, match="start_layer=3 is out of range for the text tower"):
        explain_dual(model, image, tokenized(captions), text_start_layer=3)


def test_generic_explain_points_to_explain_dual_and_state_is_restored():
    model = tiny_clip()
    inputs = {"pixel_values": torch.rand(1, 3, 32, 32), **tokenized(CAPTIONS)}
    with pytest.raises(ValueError, match="explain_dual"):
        gu.explain(model, inputs)
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with pytest.raises(ValueError, match="image size"):
        explain_dual(model, torch.rand(1, 3, 48, 48), tokenized(CAPTIONS))
    explain_dual(model, torch.rand(1, 3, 32, 32), tokenized(CAPTIONS))
    assert before == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_diagonal_pairs_equal_the_all_pairs_diagonal_with_one_backward():
    model = tiny_clip()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    full = explain_dual(model, images, tokenized(CAPTIONS))
    diag = explain_dual(model, images, tokenized(CAPTIONS), pairs="diagonal")
    assert diag.image.relevance["image"].shape == (3, 16) and diag.logits.shape == (3,)
    idx = torch.arange(3)
    torch.testing.assert_close(
        diag.image.relevance["image"], full.image.relevance["image"][idx, idx], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(diag.text.relevance["text"], full.text.relevance["text"][idx, idx], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="as many images as texts"):
        explain_dual(model, images[:2], tokenized(CAPTIONS), pairs="diagonal")


def test_dual_pair_figure_and_explorer_callback():
    import matplotlib.pyplot as plt

    from gae_workbook.exploration import widgets
    from gae_workbook.tools.bench import _random_clip

    model = _random_clip(torch.device("cpu"), small=True)
    images = torch.rand(2, 3, 64, 64)
    ids = torch.tensor([[49406, 320, 1929, 49407, 0], [49406, 320, 49407, 0, 0]])
    ids[ids >= model.config.text_config.vocab_size] = model.config.text_config.eos_token_id
    ids[:, 0] = model.config.text_config.bos_token_id
    texts = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    words = [["a", "cat"], ["a"]]
    fig = widgets.render_dual_pair(model, images, texts, words, image=1, caption=0, method="gae")
    strip = fig.axes[-1]
    assert [t.get_text() for t in strip.texts] == ["a", "cat"]
    plt.close(fig)
    from gae_utils.dual import explain_dual

    one = explain_dual(model, images[1:2], {k: v[:1] for k, v in texts.items()}, pairs="diagonal")
    full = explain_dual(model, images, texts)
    torch.testing.assert_close(one.image.relevance["image"][0], full.image.relevance["image"][1, 0])


def _skip_layer(layer: torch.nn.Module) -> None:
    """Make an encoder layer return its input unchanged (as LayerDrop does): its attention never runs."""
    layer.forward = lambda hidden_states, *args, **kwargs: hidden_states


def test_a_skipped_attention_layer_is_an_error_not_a_silent_map():
    model = tiny_clip()
    _skip_layer(model.text_model.encoder.layers[1])
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(gu.AttentionCaptureError, match="captured 4 attention maps but the model has 5"):
        explain_dual(model, images, tokenized(CAPTIONS[:2]))
    with pytest.raises(gu.AttentionCaptureError, match="captured 4 attention maps"):
        explain_dual(model, images, tokenized(CAPTIONS[:2]), pairs="diagonal")
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
