"""Several images per prompt (LLaVA; PaliGemma: tests/test_vlm_paligemma.py): each image's tokens are
carried back to its own image's grid, the maps of an example's images stacked along the height;
an example with fewer images than the batch's most has zeros in the slots it lacks. Against an
independent reference: each example's images run through the tower by hand (one batch of its
images), the language model by hand, Eq. 5-6 per image and ``r_img @ P @ Rbar_v`` per image."""

import pytest
import torch
from test_vlm_end_to_end import IMAGE, explained_three_ways, gae, tiny_llava

import gae_utils as gu

transformers = pytest.importorskip("transformers")


def several_images(n_image=16):
    """Example 0 reads two images, example 1 one, left padded: three images in all."""
    rows = [[1, 5, *[IMAGE] * n_image, 6, *[IMAGE] * n_image, 7, 8], [1, *[IMAGE] * n_image, 30, 9, 2]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, [[0, 1], [2]]


def scaled(model, factor=20.0):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor if p.ndim == 2 else 1.0)
    return model


def reference(model, prompt, pixels, token, normalize=True, own_image=True):
    """One unpadded example with its ``n`` images ``(n, C, H, W)``: the tower by hand (the images
    as its batch), the projector, the language model; ``(n, 16)`` the answer carried to each
    image's patches (``own_image=False``: the deliberate mistake of carrying every image's tokens
    through the first image's tower map)."""
    inner, config = model.model, model.config
    tower = inner.vision_tower(pixels, output_attentions=True, output_hidden_states=True)
    read = config.vision_feature_layer % len(tower.hidden_states)
    drop = 1 if config.vision_feature_select_strategy == "default" else 0
    features = inner.multi_modal_projector(tower.hidden_states[read][:, drop:])  # (n, T, D)
    ids = torch.tensor([prompt])
    is_image = ids[0] == IMAGE
    embeds = inner.get_input_embeddings()(ids).clone()
    embeds[0, is_image] = features.flatten(0, 1)  # the images' tokens in order
    out = inner.language_model(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    logit = model.lm_head(out.last_hidden_state[0, -1])[token]
    maps = tower.attentions[:read]
    grads = torch.autograd.grad(logit, [*out.attentions, *maps])
    row = gae(out.attentions, grads[: len(out.attentions)])[-1, is_image].detach()  # (n T,)
    per_image = []
    for j in range(len(pixels)):
        t = slice(j, j + 1) if own_image else slice(0, 1)  # the tower batch entry of image j
        r_v = gae([a[t] for a in maps], [g[t] for g in grads[len(out.attentions) :]])
        n_v = r_v.shape[0]
        if normalize:  # Eq. 8-9
            residual = r_v - torch.eye(n_v)
            sums = residual.sum(-1, keepdim=True)
            r_v = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(n_v)
        tokens = row[j * features.shape[1] : (j + 1) * features.shape[1]]  # image j's tokens
        carried = torch.zeros(n_v)
        for m in range(tokens.shape[0]):  # P: image j's token m reads its tower token m + drop
            carried[m + drop] += tokens[m]
        per_image.append((carried @ r_v.detach())[n_v - 16 :])
    return torch.stack(per_image)


@pytest.mark.parametrize("strategy, n_image", [("default", 16), ("full", 17)])
def test_several_images_per_prompt_match_an_independent_reference(strategy, n_image):
    model = scaled(tiny_llava(strategy))
    rows, x, images = several_images(n_image)
    targets = torch.tensor([[3, 40], [11, 62]])
    exp, rows_only, no_norm = explained_three_ways(model, x, targets)
    assert exp.grid_relevance("pixels").shape == (2, 2, 8, 4)  # two slots of 4 x 4, stacked
    assert exp.grid_relevance("image").shape == (2, 2, 8, 4)
    pixels = exp.relevance["pixels"].unflatten(-1, (2, 16))  # (B, K, n, h w): one map per image
    model.set_attn_implementation("eager")
    for b, prompt in enumerate(rows):
        n = len(images[b])
        for k in range(2):
            token = int(targets[b, k])
            want = reference(model, prompt, x["pixel_values"][images[b]], token)
            assert (want.std(-1) > 0.2 * want.mean(-1)).all()  # not near-uniform
            torch.testing.assert_close(pixels[b, k, :n], want, rtol=1e-5, atol=1e-6)
            assert (pixels[b, k, n:] == 0).all()  # the slot example 1 has no image for
            ours = rows_only.relevance["pixels"].unflatten(-1, (2, 16))[b, k, :n]
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
            plain = reference(model, prompt, x["pixel_values"][images[b]], token, normalize=False)
            ours = no_norm.relevance["pixels"].unflatten(-1, (2, 16))[b, k, :n]
            torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
            if n == 2:  # the deliberate mistake: image 1 carried through image 0's tower map
                wrong = reference(model, prompt, x["pixel_values"][images[b]], token, own_image=False)
                assert not torch.allclose(pixels[b, k, 1], wrong[1], rtol=1e-3, atol=1e-6)


def test_one_image_per_example_gives_the_same_maps_as_before_the_images_were_folded():
    """The fold is the identity for one image per example: the rows equal the per-image reference
    of tests/test_vlm_end_to_end.py (also run there) and the image-token map keeps its grid."""
    from test_vlm_end_to_end import left_padded

    exp = gu.explain(tiny_llava(), left_padded()[1])
    assert exp.grid_relevance("pixels").shape == exp.grid_relevance("image").shape == (2, 4, 4)


def test_image_tokens_that_are_not_whole_images_are_refused():
    model = tiny_llava()
    rows, x, _ = several_images()
    broken = dict(x, input_ids=x["input_ids"].clone())
    broken["input_ids"][0, 4] = 5  # one image token of example 0 turned into text
    with pytest.raises(ValueError, match="each example's image tokens are whole images"):
        gu.explain(model, broken)
    with pytest.raises(ValueError, match="4 images for 2 examples"):
        gu.explain(model, dict(x, pixel_values=torch.cat([x["pixel_values"], x["pixel_values"][:1]])))


def test_stacked_image_maps_draw_at_the_images_size():
    """docs/models.md: heatmap((n * H, W)) keeps each image's aspect; one (H, W) map per image."""
    _, x, _ = several_images()
    exp = gu.explain(tiny_llava(), x)
    heat = exp.heatmap((2 * 32, 32), name="pixels")  # (B, n H, W), min-max per example
    assert heat.shape == (2, 64, 32) and heat.amin((-1, -2)).eq(0).all() and heat.amax((-1, -2)).eq(1).all()
    per_image = heat.unflatten(-2, (2, 32))  # (B, n, H, W)
    assert per_image[0, 0].std() > 0 and per_image[0, 1].std() > 0
