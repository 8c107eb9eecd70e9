"""LLaVA-NeXT explained end to end: each image token carried back to the tile it was computed from
(the base tile, or one of the r x c tiles), through that tile's own tower map, one slot per tile,
slots stacked along the height. The independent reference runs the tower on an example's tiles
by hand, picks the tile grid, stitches, unpads and inserts the newlines by hand (not the model's
packing), runs the language model by hand, and writes out Eq. 5-6 and ``r_img @ P @ Rbar_v`` per
tile."""

import pytest
import torch
from test_vlm_end_to_end import IMAGE, TEXT, VISION, explained_three_ways, gae

import gae_utils as gu

transformers = pytest.importorskip("transformers")

PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # (height, width) resolutions the tiles may cover
SIZES = [[20, 64], [64, 40]]  # the two images' (height, width): 1 x 2 and 2 x 2 tiles, unpadded


def tiny_llava_next(seed=0, scale=20.0):
    """A random LLaVA-NeXT: CLIP tower (32 px tiles of 4 x 4 patches + CLS, 3 layers, the
    projector reads layer 2), Llama (3 layers); weight matrices scaled (peaked attention)."""
    torch.manual_seed(seed)
    config = transformers.LlavaNextConfig(
        vision_config=VISION, text_config=dict(TEXT, max_position_embeddings=256), image_token_id=IMAGE,
        image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale if p.ndim == 2 else 1.0)
    return model


def tile_grid(height, width):
    """The pinpoint resolution that keeps most of the image, then wastes least (LLaVA-NeXT's
    rule), as (rows, cols) of 32 px tiles."""
    best = None
    for ph, pw in PINPOINTS:
        s = min(pw / width, ph / height)
        kept = min(int(width * s) * int(height * s), width * height)
        key = (kept, -(ph * pw - kept))
        best = (key, (ph // 32, pw // 32)) if best is None or key > best[0] else best
    return best[1]


def packed_sources(height, width):
    """The image tokens of one image in order: ``(tile, patch)`` each reads, None for a newline.
    Base tile first; then the r x c tiles stitched into a (4 r, 4 c) map, the rows (or columns)
    of padding the image's aspect ratio adds cut off evenly, a newline after each row."""
    rows, cols = tile_grid(height, width)
    sources = [(0, t) for t in range(16)]
    big_h, big_w = 4 * rows, 4 * cols
    keep_r, keep_c = range(big_h), range(big_w)
    if width / height > big_w / big_h:  # wider than the canvas: rows of padding
        pad = (big_h - int(round(height * big_w / width, 7))) // 2
        keep_r = range(pad, big_h - pad)
    else:
        pad = (big_w - int(round(width * big_h / height, 7))) // 2
        keep_c = range(pad, big_w - pad)
    for y in keep_r:
        for x in keep_c:
            tile = 1 + (y // 4) * cols + x // 4
            sources.append((tile, (y % 4) * 4 + x % 4))
        sources.append(None)  # the newline
    return sources, 1 + rows * cols


def inputs():
    rows = []
    for size, prefix, suffix in zip(SIZES, [[1, 5], [1]], [[7, 8], [30]]):
        rows.append([*prefix, *[IMAGE] * len(packed_sources(*size)[0]), *suffix])
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    pixels = torch.rand(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # 5: padded
    sizes = torch.tensor(SIZES)
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": sizes}


def reference(model, prompt, tiles, size, token, normalize=True):
    """``(n_tiles, 16)``: the answer carried to each tile's patches, and ``(n_tiles, 16)`` the
    image-token map placed at the patch each token reads (newlines dropped)."""
    inner = model.model
    tower = inner.vision_tower(tiles, output_attentions=True, output_hidden_states=True)
    features = inner.multi_modal_projector(tower.hidden_states[-2][:, 1:])  # (n, 16, D): CLS dropped
    sources, n_tiles = packed_sources(*size)
    stacked = [features[s] if s is not None else inner.image_newline for s in sources]
    ids = torch.tensor([prompt])
    is_image = ids[0] == IMAGE
    embeds = inner.get_input_embeddings()(ids).clone()
    embeds[0, is_image] = torch.stack(stacked)
    out = inner.language_model(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    logit = model.lm_head(out.last_hidden_state[0, -1])[token]
    maps = tower.attentions[:2]  # the layers up to hidden state -2 (of 3)
    grads = torch.autograd.grad(logit, [*out.attentions, *maps])
    row = gae(out.attentions, grads[: len(out.attentions)])[-1, is_image].detach()
    pixels, image = torch.zeros(n_tiles, 16), torch.zeros(n_tiles, 16)
    for j in range(n_tiles):
        r_v = gae([a[j : j + 1] for a in maps], [g[j : j + 1] for g in grads[len(out.attentions) :]])
        if normalize:  # Eq. 8-9
            residual = r_v - torch.eye(17)
            sums = residual.sum(-1, keepdim=True)
            r_v = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(17)
        carried = torch.zeros(17)
        for i, source in enumerate(sources):
            if source is not None and source[0] == j:  # P: this token reads tile j's patch
                carried[1 + source[1]] += row[i]
                image[j, source[1]] += row[i]
        pixels[j] = (carried @ r_v.detach())[1:]  # CLS dropped
    return pixels, image


def test_llava_next_tiles_match_an_independent_reference():
    model = tiny_llava_next()
    rows, x = inputs()
    targets = torch.tensor([[3, 40], [11, 62]])
    exp, rows_only, no_norm = explained_three_ways(model, x, targets)
    assert exp.grid_relevance("pixels").shape == (2, 2, 20, 4)  # 5 tile slots of 4 x 4
    pixels = exp.relevance["pixels"].unflatten(-1, (5, 16))
    image = exp.relevance["image"].unflatten(-1, (5, 16))
    model.set_attn_implementation("eager")
    for b, prompt in enumerate(rows):
        n = packed_sources(*SIZES[b])[1]
        tiles = x["pixel_values"][b, :n]
        for k in range(2):
            token = int(targets[b, k])
            want, want_image = reference(model, prompt, tiles, SIZES[b], token)
            assert (want.std(-1) > 0.2 * want.mean(-1)).all()  # not near-uniform
            torch.testing.assert_close(pixels[b, k, :n], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(image[b, k, :n], want_image, rtol=1e-5, atol=1e-6)
            assert (pixels[b, k, n:] == 0).all() and (image[b, k, n:] == 0).all()
            ours = rows_only.relevance["pixels"].unflatten(-1, (5, 16))[b, k, :n]
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
            plain, _ = reference(model, prompt, tiles, SIZES[b], token, normalize=False)
            ours = no_norm.relevance["pixels"].unflatten(-1, (5, 16))[b, k, :n]
            torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
            # the deliberate mistake: tiles in column-major order of the tile grid
            assert not torch.allclose(pixels[b, k, 1:n].flip(0), want[1:], rtol=1e-3, atol=1e-6)


def test_llava_next_inputs_that_do_not_pack_are_refused():
    model = tiny_llava_next()
    _, x = inputs()
    wrong = dict(x, image_sizes=torch.tensor([[64, 40], [20, 64]]))  # the sizes swapped
    with pytest.raises(ValueError, match="packs 72 for its image of size \\[64, 40\\]"):
        gu.explain(model, wrong)
    with pytest.raises(ValueError, match="one image per example"):
        gu.explain(model, dict(x, pixel_values=x["pixel_values"][0]))


def test_the_documented_stitching_gives_the_map_over_the_tiled_image():
    """docs/models.md's recipe: slots 1.. stitched into (r h, c w). The 64 x 40 image's 2 x 2
    tiles are unpadded by one column of patches on each side: no image token reads those
    columns (0 in the image-token map), only the tower's mixing reaches them (the pixels map)."""
    exp = gu.explain(tiny_llava_next(), inputs()[1])
    r, c, h, w = 2, 2, 4, 4
    stitched = {}
    for name in ("image", "pixels"):
        g = exp.grid_relevance(name)[1].unflatten(-2, (-1, h))[1 : 1 + r * c]  # (r c, h, w)
        stitched[name] = g.unflatten(0, (r, c)).permute(0, 2, 1, 3).reshape(r * h, c * w)
        torch.testing.assert_close(stitched[name][h:, :w], g[2])  # tile (1, 0): slot 3
    assert (stitched["image"][:, [0, 7]] == 0).all() and (stitched["image"][:, 1:7] > 0).any()
    assert (stitched["pixels"][:, [0, 7]] > 0).any()
