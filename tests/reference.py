"""An independent implementation of the paper's ViT rules, written the way the authors' notebooks
work: one image at a time, a hand-written forward pass over the timm weights that keeps every
attention map with ``retain_grad()``, ``.backward()`` on the one-hot logit, then the loops of
Eq. 5-7 written out per layer. It shares no code with ``gae_utils`` and is used only by tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def manual_vit_forward(model, image):
    """Forward one image (1, C, H, W) through a timm VisionTransformer; return logits and attention maps."""
    x = model.patch_embed(image)
    x = model._pos_embed(x)
    x = model.norm_pre(x)
    attentions = []
    for block in model.blocks:
        attn_mod = block.attn
        y = block.norm1(x)
        b, n, c = y.shape
        qkv = attn_mod.qkv(y).reshape(b, n, 3, attn_mod.num_heads, c // attn_mod.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
        scores = (q * attn_mod.scale) @ k.transpose(-2, -1)
        attn = scores.softmax(dim=-1)
        if attn.requires_grad:
            attn.retain_grad()
        attentions.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out = attn_mod.proj(attn_mod.norm(out))
        x = x + block.drop_path1(block.ls1(out))
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    x = model.norm(x)
    return model.forward_head(x), attentions


def reference_gae(model, images, targets, start_layer=0):
    """Relevance of the CLS row over the patches, (B, N - prefix), one image at a time."""
    rows = []
    prefix = model.num_prefix_tokens
    for i in range(images.shape[0]):
        image = images[i : i + 1].clone()
        model.zero_grad()
        logits, attentions = manual_vit_forward(model, image)
        one_hot = torch.zeros_like(logits)
        one_hot[0, int(targets[i])] = 1
        (one_hot * logits).sum().backward()
        n = attentions[0].shape[-1]
        relevancy = torch.eye(n, dtype=images.dtype)
        for layer, attn in enumerate(attentions):
            if layer < start_layer:
                continue
            cam = (attn.grad * attn).clamp(min=0).mean(dim=1)[0]  # Eq. 5
            relevancy = relevancy + cam @ relevancy  # Eq. 6
        rows.append(relevancy[0, prefix:].detach())
        model.zero_grad()
    return torch.stack(rows)


def reference_rollout(model, images):
    rows = []
    prefix = model.num_prefix_tokens
    with torch.no_grad():
        for i in range(images.shape[0]):
            _, attentions = manual_vit_forward(model, images[i : i + 1])
            joint = None
            for attn in attentions:
                a = 0.5 * attn.mean(dim=1)[0] + 0.5 * torch.eye(attn.shape[-1], dtype=attn.dtype)
                a = a / a.sum(dim=-1, keepdim=True)
                joint = a if joint is None else a @ joint
            rows.append(joint[0, prefix:])
    return torch.stack(rows)


def upsample(maps, size):
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def reference_detr_gae(model, image, query):
    """DETR relevance R[query, image] row ``query`` for one image (1, C, H, W), the rules written out.

    The attention maps come from Hugging Face's own ``output_attentions=True`` (not from hooks), their
    gradients from ``retain_grad()`` and ``.backward()`` on the query's predicted-class logit; then
    encoder self-attention (Eq. 6), decoder self-attention (Eq. 6, 7) and cross-attention with the
    residual normalisation (Eq. 8-11), layer by layer in forward order.
    """
    model.zero_grad()
    out = model(pixel_values=image.clone(), output_attentions=True)
    maps = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
    for a in maps:
        a.retain_grad()
    cls = int(out.logits[0, query, :-1].argmax())
    out.logits[0, query, cls].backward()

    def bar(a):
        return (a.grad * a).clamp(min=0).mean(dim=1)[0].detach()  # Eq. 5

    def normalise(r):
        eye = torch.eye(r.shape[0], dtype=r.dtype)
        hat = r - eye
        total = hat.sum(dim=-1, keepdim=True)
        return torch.where(total != 0, hat / torch.where(total != 0, total, torch.ones_like(total)), hat) + eye

    n_img, n_q = out.encoder_attentions[0].shape[-1], out.decoder_attentions[0].shape[-1]
    r_ii, r_qq = torch.eye(n_img), torch.eye(n_q)
    r_qi, r_iq = torch.zeros(n_q, n_img), torch.zeros(n_img, n_q)
    for a in out.encoder_attentions:
        cam = bar(a)
        r_ii = r_ii + cam @ r_ii
        r_iq = r_iq + cam @ r_iq
    for self_a, cross_a in zip(out.decoder_attentions, out.cross_attentions):
        cam = bar(self_a)
        r_qq = r_qq + cam @ r_qq
        r_qi = r_qi + cam @ r_qi
        cam = bar(cross_a)
        add_qi = normalise(r_qq).T @ cam @ normalise(r_ii)
        add_qq = cam @ r_iq
        r_qi, r_qq = r_qi + add_qi, r_qq + add_qq
    model.zero_grad()
    return r_qi[query], r_qq[query], cls
