"""OpenCLIP dual encoders (random weights, no download) with explain_dual, against a per-pair
``.backward()`` reference whose attention is written out by hand."""

import pytest
import torch

import gae_utils as gu

open_clip = pytest.importorskip("open_clip", reason="OpenCLIP is optional: pip install 'gae-workbook[open_clip]'")


def tiny_open_clip(pool_type: str = "tok", seed: int = 0):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    vision = CLIPVisionCfg(layers=2, width=32, head_width=8, image_size=32, patch_size=8, pool_type=pool_type)
    text = CLIPTextCfg(context_length=10, vocab_size=50, width=32, heads=4, layers=2)
    return CLIP(16, vision, text).eval()


def texts() -> torch.Tensor:
    """Three texts: start token 1, words, the EOT token 49 (the largest id, which the text tower pools), zeros."""
    ids = torch.zeros(3, 10, dtype=torch.long)
    for i, words in enumerate(([5, 9, 3], [7, 7, 30, 2, 11, 4], [12])):
        ids[i, : len(words) + 2] = torch.tensor([1, *words, 49])
    return ids


def _by_hand(mha, kept):
    """``ResidualAttentionBlock.attention`` written out from the module's weights; keeps A (B, H, N, N)."""

    def attention(q_x, k_x=None, v_x=None, attn_mask=None):
        b, n, d = q_x.shape
        heads = mha.num_heads
        q, k, v = (q_x @ mha.in_proj_weight.T + mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d_h)
        scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
        attn = (scores if attn_mask is None else scores + attn_mask).softmax(-1)
        kept.append(attn)
        return mha.out_proj((attn @ v).transpose(1, 2).reshape(b, n, d))

    return attention


def reference(model, image, text):
    """One (image, text) pair: d logit / d A of both towers, Eq. 5-6, the image CLS row and the text EOT row."""
    kept_image, kept_text = [], []
    towers = ((model.visual.transformer, kept_image), (model.transformer, kept_text))
    for tower, kept in towers:
        assert tower.batch_first
        for block in tower.resblocks:
            block.attention = _by_hand(block.attn, kept)
    try:
        f_image = model.encode_image(image[None], normalize=True)
        f_text = model.encode_text(text[None], normalize=True)
        logit = model.logit_scale.exp() * (f_image @ f_text.T)[0, 0]
    finally:
        for tower, _ in towers:
            for block in tower.resblocks:
                del block.attention
    grads = torch.autograd.grad(logit, [*kept_image, *kept_text])
    rows = []
    for kept, grad in ((kept_image, grads[: len(kept_image)]), (kept_text, grads[len(kept_image) :])):
        n = kept[0].shape[-1]
        relevancy = torch.eye(n)
        for attn, g in zip(kept, grad):
            relevancy = relevancy + (g[0] * attn[0]).clamp(min=0).mean(0) @ relevancy
        rows.append(relevancy.detach())
    return logit.detach(), rows[0], rows[1]


@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_every_pair_matches_a_per_pair_reference(pool_type):
    model = tiny_open_clip(pool_type)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = texts()
    exp = gu.explain_dual(model, images, {"input_ids": ids})
    assert gu.find_adapter(model).name == "open-clip"
    assert exp.image.relevance["image"].shape == (2, 3, 16) and exp.text.relevance["text"].shape == (3, 2, 10)
    assert exp.image.grid_relevance().shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            logit, r_image, r_text = reference(model, images[i], ids[j])
            torch.testing.assert_close(exp.logits[i, j], logit, rtol=1e-5, atol=1e-5)
            image_row = r_image[0, 1:] if pool_type == "tok" else r_image[1:, 1:].mean(0)
            torch.testing.assert_close(exp.image.relevance["image"][i, j], image_row, rtol=1e-4, atol=1e-6)
            eot = int(ids[j].argmax())
            torch.testing.assert_close(exp.text.relevance["text"][j, i], r_text[eot], rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.backends.mha.get_fastpath_enabled()


def test_diagonal_pairs_and_wrong_inputs():
    model = tiny_open_clip()
    images = torch.rand(3, 3, 32, 32)
    full = gu.explain_dual(model, images, {"input_ids": texts()})
    diagonal = gu.explain_dual(model, images, {"input_ids": texts()}, pairs="diagonal")
    for b in range(3):
        torch.testing.assert_close(diagonal.image.relevance["image"][b], full.image.relevance["image"][b, b])
        torch.testing.assert_close(diagonal.text.relevance["text"][b], full.text.relevance["text"][b, b])
    with pytest.raises(ValueError, match=r"resize the images to \(32, 32\)"):
        gu.explain_dual(model, torch.rand(2, 3, 48, 48), {"input_ids": texts()})
