"""Idefics3 and SmolVLM explained end to end: each image token is a pixel-shuffled ``s x s`` block
of the tower's tokens (a grouping ``P``, as a patch merge: each child gets the mean, 1/s^2 of its
parent's relevance), carried through that image's (or tile's) own tower map. With image splitting,
the tiles and the global image are the tower's images, in the processor's order. The independent
reference runs the tower on an example's images by hand, the model's connector on its last hidden
state, the language model by hand, and writes out the blocks, Eq. 5-6 and ``r_img @ P @ Rbar_v``;
a finite-difference check shows the connector's token (I, J) reads exactly that block."""

import pytest
import torch
from test_vlm import tiny_vlm
from test_vlm_end_to_end import IMAGE, explained_three_ways, gae

import gae_utils as gu

transformers = pytest.importorskip("transformers")


def scaled_vlm(family, scale=20.0):
    model = tiny_vlm(family, attn="sdpa")  # 32 px images, 4 x 4 patches, scale_factor 2: 2 x 2 tokens
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale if p.ndim == 2 else 1.0)
    return model


def split_inputs():
    """Example 0: three images (two tiles and the global image), text between them; example 1:
    one image, two padding images of zeros (as the processor pads); left padded."""
    rows = [[1, 5, *[IMAGE] * 4, 6, *[IMAGE] * 4, 7, *[IMAGE] * 4, 8, 9], [1, *[IMAGE] * 4, 30, 2]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    pixels = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    pixels[1, 1:] = 0  # padding images
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, [3, 1]


def block(feature, s=2, side=4):
    """The tower tokens (raster, ``side x side``) that feature ``(I, J)`` of the ``side/s`` grid
    concatenates."""
    i, j = divmod(feature, side // s)
    return [(i * s + dy) * side + j * s + dx for dy in range(s) for dx in range(s)]


def reference(model, prompt, images, token, normalize=True, transpose=False):
    """``(n, 16)``: the answer carried to each image's patches; ``(n, 4)``: the image-token map
    (``transpose``: the deliberate mistake of reading feature (I, J) from block (J, I))."""
    inner = model.model
    tower = inner.vision_model(pixel_values=images, output_attentions=True)
    features = inner.connector(tower.last_hidden_state)  # (n, 4, D)
    ids = torch.tensor([prompt])
    is_image = ids[0] == IMAGE
    embeds = inner.text_model.get_input_embeddings()(ids).clone()
    embeds[0, is_image] = features.flatten(0, 1)
    out = inner.text_model(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    logit = model.lm_head(out.last_hidden_state[0, -1])[token]
    grads = torch.autograd.grad(logit, [*out.attentions, *tower.attentions])
    row = gae(out.attentions, grads[: len(out.attentions)])[-1, is_image].detach()  # (n 4,)
    pixels = torch.zeros(len(images), 16)
    for j in range(len(images)):
        r_v = gae([a[j : j + 1] for a in tower.attentions], [g[j : j + 1] for g in grads[len(out.attentions) :]])
        if normalize:  # Eq. 8-9
            residual = r_v - torch.eye(16)
            sums = residual.sum(-1, keepdim=True)
            r_v = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(16)
        carried = torch.zeros(16)
        for m in range(4):  # P: feature m of image j is the mean of its 2 x 2 block
            for child in block((m % 2) * 2 + m // 2 if transpose else m):
                carried[child] += row[4 * j + m] / 4
        pixels[j] = carried @ r_v.detach()
    return pixels, row.reshape(len(images), 4)


def test_the_connector_reads_exactly_the_blocks():
    connector = scaled_vlm("idefics3").model.connector
    hidden = torch.randn(1, 16, 32)
    base = connector(hidden)
    for child in range(16):
        moved = hidden.clone()
        moved[0, child] += 1.0
        changed = (connector(moved) - base).abs().amax(-1)[0] > 0  # (4,) features that moved
        assert changed.nonzero().flatten().tolist() == [m for m in range(4) if child in block(m)]


@pytest.mark.parametrize("family", ["idefics3", "smolvlm"])
def test_pixel_shuffle_with_image_splitting_matches_an_independent_reference(family):
    model = scaled_vlm(family)
    rows, x, n_images = split_inputs()
    targets = torch.tensor([[3, 40], [11, 62]])
    exp, rows_only, no_norm = explained_three_ways(model, x, targets)
    assert exp.grid_relevance("pixels").shape == (2, 2, 12, 4)  # 3 slots of 4 x 4 patches
    assert exp.grid_relevance("image").shape == (2, 2, 6, 2)  # 3 slots of 2 x 2 tokens
    pixels = exp.relevance["pixels"].unflatten(-1, (3, 16))
    image = exp.relevance["image"].unflatten(-1, (3, 4))
    model.set_attn_implementation("eager")
    for b, prompt in enumerate(rows):
        n = n_images[b]
        for k in range(2):
            token = int(targets[b, k])
            want, want_image = reference(model, prompt, x["pixel_values"][b, :n], token)
            assert (want.std(-1) > 0.2 * want.mean(-1)).all()  # not near-uniform
            torch.testing.assert_close(pixels[b, k, :n], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(image[b, k, :n], want_image, rtol=1e-5, atol=1e-6)
            assert (pixels[b, k, n:] == 0).all()
            ours = rows_only.relevance["pixels"].unflatten(-1, (3, 16))[b, k, :n]
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
            plain, _ = reference(model, prompt, x["pixel_values"][b, :n], token, normalize=False)
            ours = no_norm.relevance["pixels"].unflatten(-1, (3, 16))[b, k, :n]
            torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
            wrong, _ = reference(model, prompt, x["pixel_values"][b, :n], token, transpose=True)
            assert not torch.allclose(pixels[b, k, :n], wrong, rtol=1e-3, atol=1e-6)


def test_pixel_shuffle_inputs_that_are_not_whole_images_are_refused():
    model = scaled_vlm("idefics3")
    _, x, _ = split_inputs()
    fewer = dict(x, pixel_values=x["pixel_values"].clone())
    fewer["pixel_values"][0, 2] = 0  # example 0's third image turned into padding
    with pytest.raises(ValueError, match="Idefics3 reads 4 image tokens per image .* and 3 images for 2"):
        gu.explain(model, fewer)


@pytest.mark.parametrize(
    "model_type, end_to_end",
    [("llava", True), ("paligemma", True), ("idefics3", True), ("smolvlm", True), ("internvl", False)],
)
def test_the_vlm_probe_says_which_families_are_explained_end_to_end(model_type, end_to_end):
    from gae_workbook.probe_vision import probe_family

    outcome, detail = probe_family(model_type, "vlm")
    assert outcome == "ok" and ("end to end: pixels grid" in detail) == end_to_end, detail
