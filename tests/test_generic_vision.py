"""Image models through the attention interface (hf-vision) and timm EVA / BEiT, against a per-example,
per-target ``.backward()`` reference of docs/rules.md's rules written out by hand."""

import pytest
import torch
from conftest import tiny_hf_vit

import gae_utils as gu

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

SIZE = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def tiny(name: str, attn: str = "eager", seed: int = 0):
    """A tiny random model of family ``name`` (classifiers with 7 classes)."""
    torch.manual_seed(seed)
    vision = dict(SIZE, intermediate_size=64)
    if name == "siglip":
        config = transformers.SiglipConfig(vision_config=vision, num_labels=7, attn_implementation=attn)
        return transformers.SiglipForImageClassification(config).eval()
    if name == "siglip-vision":
        config = transformers.SiglipVisionConfig(**vision, attn_implementation=attn)
        return transformers.SiglipVisionModel(config).eval()
    config_class, model_class = {
        "vit": ("ViTConfig", "ViTForImageClassification"),
        "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher"),
        "dinov2": ("Dinov2Config", "Dinov2ForImageClassification"),
        "dinov2-registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification"),
        "beit": ("BeitConfig", "BeitForImageClassification"),
    }[name]
    config = getattr(transformers, config_class)(**vision, num_labels=7, attn_implementation=attn)
    if name == "beit":
        config.use_relative_position_bias = True  # a position bias added before the softmax
    return getattr(transformers, model_class)(config).eval()


def gae_rows(attentions, grads):
    """R = I; R += mean_h (grad * A)^+ @ R, layer by layer (Eq. 5-6), for one example."""
    n = attentions[0].shape[-1]
    relevancy = torch.eye(n)
    for attn, grad in zip(attentions, grads):
        relevancy = relevancy + (grad[0] * attn[0]).clamp(min=0).mean(dim=0) @ relevancy
    return relevancy


# the row(s) each family's head reads, written out from the heads' code: R (N, N) -> (patches,)
READOUT = {
    "vit": lambda r: r[0, 1:],
    "deit-teacher": lambda r: r[:2, 2:].mean(0),  # the two heads' logits are averaged
    "dinov2": lambda r: 0.5 * r[0, 1:] + 0.5 * r[1:, 1:].mean(0),  # classifier on [CLS, mean(patches)]
    "dinov2-registers": lambda r: 0.5 * r[0, 5:] + 0.5 * r[5:, 5:].mean(0),  # CLS, 4 registers, patches
    "beit": lambda r: r[1:, 1:].mean(0),  # use_mean_pooling
    "siglip": lambda r: r.mean(0),  # no CLS: the classifier averages every token
}


def reference(model, name, image, target):
    """One image, Hugging Face's own ``output_attentions`` (eager), one backward of one class logit."""
    out = model(pixel_values=image[None], output_attentions=True)
    grads = torch.autograd.grad(out.logits[0, target], out.attentions)
    return READOUT[name](gae_rows(out.attentions, grads)).detach()


@pytest.mark.parametrize("name", list(READOUT))
def test_image_models_match_a_per_example_per_target_reference(name, images):
    model = tiny(name)
    targets = torch.tensor([[0, 3], [6, 1], [2, 2], [5, 4]])
    exp = gu.explain(model, images, target=targets, verify=True)
    assert gu.find_adapter(model).name == "hf-vision"
    assert exp.relevance["image"].shape == (4, 2, 16) and exp.grid_relevance().shape == (4, 2, 4, 4)
    for b in range(4):
        for k in range(2):
            expected = reference(model, name, images[b], int(targets[b, k]))
            torch.testing.assert_close(exp.relevance["image"][b, k], expected, rtol=1e-4, atol=1e-6)


def test_registers_sit_between_cls_and_the_patch_grid(images):
    exp = gu.explain(tiny("dinov2-registers"), images)
    assert exp.layout.segment("image").prefix == 5 and exp.layout.segment("image").grid == (4, 4)


def _head_by_hand(head, hidden):
    """SigLIP's attention-pooling head written out: the probe's multi-head attention over the tokens."""
    mha, (b, d) = head.attention, (hidden.shape[0], hidden.shape[2])
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    probe = head.probe.expand(b, -1, -1)

    def split(x):
        return x.reshape(b, -1, heads, d // heads).transpose(1, 2)  # (B, H, n, d_h)

    q, k, v = split(probe @ w_q.T + b_q), split(hidden @ w_k.T + b_k), split(hidden @ w_v.T + b_v)
    attn = (q @ k.transpose(-1, -2) / (d // heads) ** 0.5).softmax(-1)  # (B, H, 1, n)
    pooled = mha.out_proj((attn @ v).transpose(1, 2).reshape(b, 1, d))
    return (pooled + head.mlp(head.layernorm(pooled)))[:, 0], attn


def test_siglip_attention_pooling_head_is_read_as_a_cross_attention_layer(images):
    """The probe token attends to every patch: R[probe, image] = Abar_head @ Rbar[image, image] (Eq. 8-10)."""
    model = tiny("siglip-vision")
    direction = torch.linspace(-1, 1, 32)
    exp = gu.explain(model, images, target=lambda out: out.pooler_output @ direction, verify=True)
    assert exp.layout.readouts[0].rows_of == "probe"
    for b in range(4):
        out = model(pixel_values=images[b : b + 1], output_attentions=True)
        pooled, head_attn = _head_by_hand(model.head, out.last_hidden_state)
        torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-5, atol=1e-5)
        score = pooled[0] @ direction
        *grads, head_grad = torch.autograd.grad(score, [*out.attentions, head_attn])
        r_ii = gae_rows(out.attentions, grads)
        residual = r_ii - torch.eye(16)
        sums = residual.sum(-1, keepdim=True)
        r_bar = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(16)  # Eq. 8-9
        head_bar = (head_grad[0] * head_attn[0]).clamp(min=0).mean(0)  # (1, 16) Eq. 5
        torch.testing.assert_close(exp.relevance["image"][b], (head_bar @ r_bar)[0].detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher", "ViTModel"])
def test_generic_capture_gives_the_maps_of_the_former_hand_adapter(images, cls_name):
    """The hand-written HF ViT/DeiT adapter (eager switch, weights at output index 1) gave these maps;
    the interface capture gives the same, so only the generic adapter is kept."""
    from gae_utils.adapters.base import hf_eager
    from gae_utils.adapters.hf_vision import HF_VISION

    model = tiny_hf_vit(cls_name, attn="sdpa")
    attention = "DeiTAttention" if "DeiT" in cls_name else "ViTAttention"
    site = gu.AttentionSite(attention, gu.capture.OutputItem(1))
    hand = gu.Adapter(**{**HF_VISION.__dict__, "sites": (site,), "eager": hf_eager})
    target = (lambda out: out.pooler_output.sum(-1)) if cls_name == "ViTModel" else torch.tensor([[1, 4]] * 4)
    generic = gu.record(model, images, target=target)
    by_hand = gu.record(model, images, target=target, adapter=hand)
    for method in gu.method_names():
        torch.testing.assert_close(generic.maps(method), by_hand.maps(method), rtol=1e-5, atol=1e-7)
    assert model.config._attn_implementation == "sdpa"


def test_sdpa_models_are_switched_for_the_call_and_restored(images):
    eager, sdpa = tiny("dinov2-registers"), tiny("dinov2-registers", attn="sdpa")
    expected = gu.explain(eager, images).relevance["image"]
    torch.testing.assert_close(gu.explain(sdpa, images).relevance["image"], expected)
    assert sdpa.config._attn_implementation == "sdpa"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sdpa.modules())


def test_wrong_image_size_and_unrouted_models_are_refused():
    with pytest.raises(ValueError, match="config.image_size"):
        gu.explain(tiny("dinov2"), torch.rand(2, 3, 48, 48))
    config = transformers.Data2VecVisionConfig(**SIZE, intermediate_size=64, num_labels=3)
    unrouted = transformers.Data2VecVisionForImageClassification(config).eval()  # attention not routed
    with pytest.raises(gu.UnsupportedModelError, match="Supported families"):
        gu.explain(unrouted, torch.rand(2, 3, 32, 32))
    from gae_utils.adapters.hf_vision import HF_VISION

    with pytest.raises(gu.AttentionCaptureError):  # forced onto the capture: nothing is captured, it says so
        gu.explain(unrouted, torch.rand(2, 3, 32, 32), adapter=HF_VISION)


def tiny_timm(kind: str, seed: int = 0, **overrides):
    from timm.models.beit import Beit
    from timm.models.eva import Eva

    torch.manual_seed(seed)
    kwargs = dict(img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=2, num_heads=4, **overrides)
    if kind == "eva":
        return Eva(use_rot_pos_emb=True, **kwargs).eval()  # rotary positions (EVA-02)
    return Beit(use_rel_pos_bias=True, **kwargs).eval()  # relative position bias, mean-pooled


def _timm_attention_by_hand(model, kind, image):
    """Forward one image through timm's blocks with the fused path off, keeping A from ``attn_drop``."""
    kept = []

    def keep(module, args, output):
        output.retain_grad()
        kept.append(output)

    flags = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in flags:
        m.fused_attn = False
    handles = [b.attn.attn_drop.register_forward_hook(keep) for b in model.blocks]
    try:
        logits = model(image[None])
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.fused_attn = flag
    return logits, kept


@pytest.mark.parametrize(
    "kind, overrides", [("eva", {}), ("eva", {"num_reg_tokens": 2, "global_pool": "token"}), ("beit", {})]
)
def test_timm_eva_and_beit(images, kind, overrides):
    model = tiny_timm(kind, **overrides)
    exp = gu.explain(model, images, target=torch.tensor([[0, 5]] * 4), verify=True)
    assert gu.find_adapter(model).name == "timm-vit"
    prefix = model.num_prefix_tokens
    assert exp.layout.segment("image").prefix == prefix and exp.relevance["image"].shape == (4, 2, 16)
    for b in range(4):
        for k, target in enumerate((0, 5)):
            logits, attentions = _timm_attention_by_hand(model, kind, images[b])
            logits[0, target].backward()
            r = gae_rows(attentions, [a.grad for a in attentions])
            expected = r[0, prefix:] if model.global_pool == "token" else r[prefix:, prefix:].mean(0)
            torch.testing.assert_close(exp.relevance["image"][b, k], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["Bert", "Roberta", "XLMRoberta", "Electra", "DistilBert"])
def test_text_encoders_through_the_capture_give_the_hand_sites_maps(family):
    """The BERT adapter's former hand site (eager switch, weights at output index 1) gave these maps;
    the interface capture now serves it and its siblings with the same mean-pooled readout."""
    from gae_utils.adapters.base import hf_eager
    from gae_utils.adapters.hf_text import BERT_ENCODER

    torch.manual_seed(0)
    sizes = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if family == "DistilBert":
        sizes = dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    config = getattr(transformers, f"{family}Config")(**sizes, attn_implementation="sdpa")
    model = getattr(transformers, f"{family}Model")(config).eval()
    attention = {"DistilBert": "DistilBertSelfAttention"}.get(family, f"{family}SelfAttention")
    site = gu.AttentionSite(attention, gu.capture.OutputItem(1), query="text", key="text")
    hand = gu.Adapter(**{**BERT_ENCODER.__dict__, "sites": (site,)})
    hand = gu.Adapter(**{**hand.__dict__, "eager": hf_eager})
    ids = torch.randint(3, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    target = lambda out: out.last_hidden_state[:, 0].sum(-1)  # noqa: E731
    generic = gu.record(model, x, target=target)
    assert gu.find_adapter(model).name == "hf-bert-encoder"
    torch.testing.assert_close(generic.maps(), gu.record(model, x, target=target, adapter=hand).maps())
    assert generic.explanation().relevance["text"].shape == (3, 7)


EXPLAINED = ["vit", "deit", "dinov2", "dinov2_with_registers", "beit", "ijepa", "vit_msn", "siglip", "clip"]


@pytest.mark.parametrize("model_type", EXPLAINED)
def test_image_families_of_transformers_are_explained_with_parity(model_type):
    from gae_workbook.probe_vision import probe_family

    outcome, detail = probe_family(model_type, "image")
    assert outcome == "ok" and "hf-vision" in detail, (outcome, detail)


@pytest.mark.parametrize("model_type", ["data2vec-vision", "cvt", "mobilevit", "resnet", "siglip2"])
def test_image_families_the_capture_cannot_explain_are_refused(model_type):
    from gae_workbook.probe_vision import probe_family

    outcome, detail = probe_family(model_type, "image")
    expected = ("no attention",) if model_type == "resnet" else ("not routed", "refused")  # resnet: a convnet
    assert outcome in expected, (outcome, detail)


def test_windowed_attention_is_refused_not_misread():
    """A headless SwinModel routes its attention through the interface, but one map per window is
    no (B, N, N) token map: the generic adapter refuses it (SwinForImageClassification has its own
    adapter, tests/test_swin.py)."""
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
    )
    swin = transformers.SwinModel(config).eval()
    with pytest.raises(gu.AttentionCaptureError, match="within windows"):
        gu.explain(swin, torch.rand(2, 3, 32, 32), target=lambda out: out.pooler_output.sum(-1))
