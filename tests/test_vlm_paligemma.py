"""PaliGemma explained end to end: the answer's row over the image tokens carried through the linear
projector (one image token per SigLIP output token, no CLS) and the tower's own GAE map, every
tower layer (the projector reads ``last_hidden_state``), to the input patch grid. The independent
reference runs the tower by hand with ``output_attentions``, hands the projected features to the
model (``mm_encoder_outputs``), and writes out Eq. 5-6 and ``r_img @ P @ Rbar_v`` by hand."""

import pytest
import torch
from test_vlm_end_to_end import explained_three_ways, gae

import gae_utils as gu

transformers = pytest.importorskip("transformers")

IMAGE = 63  # the image placeholder token id of the tiny config
TEXT = dict(
    model_type="gemma", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128, pad_token_id=0,
)  # fmt: skip
VISION = dict(
    model_type="siglip_vision_model", image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
    num_hidden_layers=3, num_attention_heads=4,
)  # fmt: skip


def tiny_paligemma(attn="sdpa", seed=0, scale=20.0):
    """A random PaliGemma: SigLIP tower (4 x 4 patches, 3 layers), Gemma (2 layers); every weight
    matrix scaled by ``scale`` so that the attention is peaked and the maps are far from uniform."""
    torch.manual_seed(seed)
    config = transformers.PaliGemmaConfig(
        vision_config=VISION, text_config=TEXT, image_token_id=IMAGE, projection_dim=32
    )
    config._attn_implementation = attn
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale if p.ndim == 2 else 1.0)
    return model


def left_padded():
    """Image tokens first, then the prompt (PaliGemma's order); two lengths, left padded; the
    prompt is the bidirectional prefix (token type 0), the last two tokens the causal suffix."""
    rows = [[*[IMAGE] * 16, 1, 5, 6, 7, 8], [*[IMAGE] * 16, 1, 30, 9]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
        types[i, -2:] = 1
    pixels = torch.rand(len(rows), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "token_type_ids": types}
    return rows, x


def reference(model, prompt, pixels, token, normalize=True, transpose=False):
    """One unpadded example: the tower by hand, the projector on its last hidden state, the model
    fed those features; the gradient of the next token's logit with respect to every attention
    map; Eq. 5-6 per stack; the image tokens' row carried by P (token m <- tower token m) and
    ``Rbar_v`` (Eq. 8-9; ``transpose``: the deliberate mistake ``Rbar_v^T``)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inner = model.model
    tower = inner.vision_tower(pixels[None], output_attentions=True)
    features = inner.multi_modal_projector(tower.last_hidden_state)  # (1, 16, D)
    ids = torch.tensor([prompt])
    types = torch.zeros_like(ids)
    types[0, -2:] = 1
    out = model(
        input_ids=ids, token_type_ids=types, output_attentions=True, use_cache=False,
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
    )  # fmt: skip
    grads = torch.autograd.grad(out.logits[0, -1, token], [*out.attentions, *tower.attentions])
    r_text = gae(out.attentions, grads[: len(out.attentions)])
    r_tower = gae(tower.attentions, grads[len(out.attentions) :])
    is_image = ids[0] == IMAGE
    row_image = r_text[-1, is_image].detach()  # (16,) the answer's row over the image tokens
    n_v = r_tower.shape[0]
    if normalize:  # Eq. 8-9
        residual = r_tower - torch.eye(n_v)
        sums = residual.sum(-1, keepdim=True)
        r_tower = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(n_v)
    r_tower = r_tower.T if transpose else r_tower
    carried = torch.zeros(n_v)
    for m in range(row_image.shape[0]):  # P: a selection, image token m reads tower token m
        carried[m] += row_image[m]
    return carried @ r_tower.detach(), row_image


def test_paligemma_pixels_match_an_independent_reference_batched_left_padded_two_targets():
    model = tiny_paligemma()
    rows, x = left_padded()
    targets = torch.tensor([[3, 40], [11, 62]])
    exp, rows_only, no_norm = explained_three_ways(model, x, targets)
    assert gu.find_adapter(model).name == "hf-vlm"
    assert exp.grid_relevance("pixels").shape == (2, 2, 4, 4)
    pixels = exp.relevance["pixels"]
    assert (pixels.std(-1) > 0.3 * pixels.mean(-1)).all()  # not near-uniform
    model.set_attn_implementation("eager")  # the reference reads output_attentions
    for b, prompt in enumerate(rows):
        for k in range(2):
            token = int(targets[b, k])
            want, image = reference(model, prompt, x["pixel_values"][b], token)
            torch.testing.assert_close(pixels[b, k], want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(exp.relevance["image"][b, k], image, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rows_only.relevance["pixels"][b, k], want, rtol=1e-5, atol=1e-6)
            plain, _ = reference(model, prompt, x["pixel_values"][b], token, normalize=False)
            torch.testing.assert_close(no_norm.relevance["pixels"][b, k], plain, rtol=1e-5, atol=1e-6)
            mistake, _ = reference(model, prompt, x["pixel_values"][b], token, transpose=True)
            assert not torch.allclose(pixels[b, k], mistake, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(pixels, exp.relevance["image"], rtol=1e-3)  # the tower moved it


def test_paligemma_records_every_tower_layer_and_draws_the_pixels():
    rec = gu.record(tiny_paligemma(), left_padded()[1], target=torch.tensor([[3], [11]]))
    assert [layer.query for layer in rec.layers] == ["pixels"] * 3 + ["text"] * 2
    assert all(layer.reached for layer in rec.layers)
    for method in gu.method_names(ablations=True):
        assert rec.explanation(method).relevance["pixels"].shape == (2, 1, 16)
    assert rec.explanation().heatmap(32, name="pixels").shape == (2, 1, 32, 32)


def test_paligemma_inputs_whose_image_tokens_do_not_match_the_tower_are_refused():
    _, x = left_padded()
    fewer = dict(x, input_ids=x["input_ids"].where(x["input_ids"] != IMAGE, 5))
    fewer["input_ids"][:, -13:-4] = IMAGE  # 9 image tokens, but the tower gives 16
    with pytest.raises(ValueError, match="PaliGemma reads 16 image tokens per image"):
        gu.explain(tiny_paligemma(), fewer)


def test_paligemma_with_several_images_per_prompt_matches_the_reference():
    """Example 0 reads two images, example 1 one (its second slot 0): each image's tokens carried
    through its own tower map, against the reference fed both images' features."""
    from test_vlm_end_to_end import gae
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = tiny_paligemma()
    rows = [[*[IMAGE] * 32, 1, 5, 6], [*[IMAGE] * 16, 1, 30, 9, 7]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(2, length, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    x = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "token_type_ids": types}
    exp = gu.explain(model, x, target=torch.tensor([[3], [11]]))
    assert exp.grid_relevance("pixels").shape == (2, 1, 8, 4)
    got = exp.relevance["pixels"].unflatten(-1, (2, 16))
    assert (got[1, 0, 1] == 0).all()
    model.set_attn_implementation("eager")
    for b, (prompt, images, token) in enumerate(zip(rows, [pixels[:2], pixels[2:]], [3, 11])):
        tower = model.model.vision_tower(images, output_attentions=True)
        features = model.model.multi_modal_projector(tower.last_hidden_state)  # (n, 16, D)
        out = model(
            input_ids=torch.tensor([prompt]), token_type_ids=torch.zeros(1, len(prompt), dtype=torch.long),
            output_attentions=True, use_cache=False,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
        )  # fmt: skip
        grads = torch.autograd.grad(out.logits[0, -1, token], [*out.attentions, *tower.attentions])
        row = gae(out.attentions, grads[: len(out.attentions)])[-1, torch.tensor(prompt) == IMAGE].detach()
        for j in range(len(images)):
            r_v = gae([a[j : j + 1] for a in tower.attentions], [g[j : j + 1] for g in grads[len(out.attentions) :]])
            residual = r_v - torch.eye(16)
            sums = residual.sum(-1, keepdim=True)
            r_bar = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(16)
            want = row[16 * j : 16 * (j + 1)] @ r_bar.detach()  # P: image j's token m <- its tower token m
            torch.testing.assert_close(got[b, 0, j], want, rtol=1e-5, atol=1e-6)
