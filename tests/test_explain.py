"""explain() on unmodified timm and Hugging Face ViTs: correctness, parity, side effects, errors."""

import pytest
import torch
from conftest import tiny_hf_vit, tiny_timm_vit
from reference import reference_gae, reference_rollout

import gae_utils as gu
from gae_utils.explainer import explain, record


def model_state(model):
    """Everything an explanation must leave untouched."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "attn_impl": getattr(getattr(model, "config", None), "_attn_implementation", None),
    }


def assert_same_state(before, after):
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k
    for key in ("training", "fused", "requires_grad", "hooks", "attn_impl"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"]), "an explanation must not create parameter gradients"


def test_gae_matches_independent_reference(vit, images):
    exp = explain(vit, images, target=torch.tensor([0, 3, 6, 2]))
    ref = reference_gae(vit, images, torch.tensor([0, 3, 6, 2]))
    assert exp.relevance["image"].shape == (4, 16)
    torch.testing.assert_close(exp.relevance["image"], ref, rtol=1e-4, atol=1e-5)


def test_start_layer_matches_reference(vit, images):
    exp = explain(vit, images, target=1, start_layer=1)
    torch.testing.assert_close(
        exp.relevance["image"], reference_gae(vit, images, [1] * 4, start_layer=1), rtol=1e-4, atol=1e-5
    )


def test_rollout_matches_reference(vit, images):
    torch.testing.assert_close(
        explain(vit, images, method="rollout").relevance["image"], reference_rollout(vit, images)
    )


def test_float64_matches_reference_tightly(images):
    vit = tiny_timm_vit().double()
    exp = explain(vit, images.double(), target=2)
    assert exp.relevance["image"].dtype == torch.float64
    torch.testing.assert_close(
        exp.relevance["image"], reference_gae(vit, images.double(), [2] * 4), rtol=1e-10, atol=1e-12
    )


def test_hooked_logits_equal_stock_logits(vit, images):
    assert vit.blocks[0].attn.fused_attn is not None
    with torch.no_grad():
        stock = vit(images)
    rec = record(vit, images)
    torch.testing.assert_close(rec.logits, stock, rtol=1e-5, atol=1e-5)
    explain(vit, images, verify=True)  # the built-in parity check passes


def test_batch_equals_one_by_one(vit, images):
    batched = explain(vit, images).relevance["image"]
    single = torch.cat([explain(vit, images[i : i + 1]).relevance["image"] for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(gu.METHODS))
def test_k_targets_equal_separate_calls(vit, images, method):
    targets = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 0]])
    multi = explain(vit, images, target=targets, method=method)
    assert multi.relevance["image"].shape == (4, 2, 16)
    assert multi.target.shape == (4, 2)
    for k in range(2):
        single = explain(vit, images, target=targets[:, k], method=method).relevance["image"]
        torch.testing.assert_close(multi.relevance["image"][:, k], single, rtol=1e-5, atol=1e-6)


def test_target_forms_agree(vit, images):
    pred = record(vit, images).logits.argmax(-1)
    by_none = explain(vit, images).relevance["image"]
    torch.testing.assert_close(explain(vit, images, target=pred).relevance["image"], by_none)
    torch.testing.assert_close(explain(vit, images, target=pred.tolist()).relevance["image"], by_none)
    by_int = explain(vit, images, target=3).relevance["image"]
    by_callable = explain(vit, images, target=lambda out: out[:, 3]).relevance["image"]
    torch.testing.assert_close(by_int, by_callable)
    # a custom scalar: a regression-like score mixing two logits
    mixed = explain(vit, images, target=lambda out: out[:, 3] - out[:, 1])
    assert mixed.target is None and mixed.scores.shape == (4,)


def test_scaled_recording_equals_explaining_the_scaled_score(vit, images):
    rec = record(vit, images, target=3, keep_heads=True)
    direct = record(vit, images, target=lambda out: 50.0 * out[:, 3], keep_heads=True)
    scaled = rec.scaled(50.0)
    for method in gu.method_names():
        torch.testing.assert_close(
            scaled.explanation(method).relevance["image"], direct.explanation(method).relevance["image"]
        )
    torch.testing.assert_close(scaled.scores, direct.scores)
    # GAE itself is not scale-invariant: I + Abar @ R weighs the identity against the gradients
    small, large = rec.scaled(1e-3).explanation().relevance["image"], rec.scaled(1e3).explanation().relevance["image"]
    assert not torch.allclose(small / small.amax(-1, keepdim=True), large / large.amax(-1, keepdim=True), atol=1e-3)
    with pytest.raises(ValueError, match="positive"):
        rec.scaled(-1.0)


def test_no_side_effects(vit, images):
    vit.train()
    before = model_state(vit)
    for method in gu.METHODS:
        explain(vit, images, method=method)
    explain(vit, images, target=torch.zeros(4, 2, dtype=torch.long))
    assert_same_state(before, model_state(vit))


def test_train_mode_model_is_explained_in_eval_mode(images):
    vit = tiny_timm_vit(drop_rate=0.5, attn_drop_rate=0.5)
    expected = explain(vit, images).relevance["image"]
    vit.train()
    torch.testing.assert_close(explain(vit, images).relevance["image"], expected)
    assert vit.training


def test_frozen_model_gives_the_same_explanation(vit, images):
    expected = explain(vit, images, target=1).relevance["image"]
    vit.requires_grad_(False)
    frozen = explain(vit, images, target=1).relevance["image"]
    torch.testing.assert_close(frozen, expected)
    assert not any(p.requires_grad for p in vit.parameters())


def test_model_restored_after_exception_in_forward(vit, images):
    calls = {"n": 0}

    def boom(module, args, output):
        calls["n"] += 1
        raise RuntimeError("boom in block 1")

    user_handle = vit.blocks[1].register_forward_hook(boom)
    before = model_state(vit)
    with pytest.raises(RuntimeError, match="boom"):
        explain(vit, images)
    assert calls["n"] == 1
    assert_same_state(before, model_state(vit))
    user_handle.remove()


def test_model_restored_after_bad_target(vit, images):
    before = model_state(vit)
    with pytest.raises(ValueError, match="out of range: the model has 7 classes"):
        explain(vit, images, target=7)
    assert_same_state(before, model_state(vit))


def test_recorder_counts_hooks_inside_and_after(vit, images):
    adapter = gu.find_adapter(vit)

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vit.modules())

    outside = count()
    with gu.AttentionRecorder(vit, adapter) as rec:
        assert count() == outside + 2 * len(vit.blocks)  # one grad-enabling pre-hook + one capture hook per layer
        assert vit.blocks[0].attn.fused_attn is False
        rec.backward(vit(images)[:, :1])
    assert count() == outside
    assert vit.blocks[0].attn.fused_attn is True


def test_bad_inputs_raise_clear_errors(vit, images):
    with pytest.raises(ValueError, match=r"image size \(48, 48\) does not match the model's \(32, 32\); resize"):
        explain(vit, torch.rand(2, 3, 48, 48))
    with pytest.raises(ValueError, match="NaN"):
        bad = images.clone()
        bad[1, 0, 0, 0] = float("nan")
        explain(vit, bad)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        explain(vit, images[0])
    with pytest.raises(ValueError, match="channels"):
        explain(vit, torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="out of range"):
        explain(vit, images, target=-1)
    with pytest.raises(ValueError, match="integers"):
        explain(vit, images, target=torch.tensor([0.5, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="does not fit a batch of 4"):
        explain(vit, images, target=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="start_layer=3 is out of range"):
        explain(vit, images, start_layer=3)
    with pytest.raises(ValueError, match="unknown method"):
        explain(vit, images, method="lrp")
    with pytest.raises(ValueError, match="one score per example"):
        explain(vit, images, target=lambda out: out.sum())


def test_unsupported_model_names_class_and_fix():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match=r"(?s)Sequential.*Supported families.*register_adapter"):
        explain(model, torch.rand(2, 3))


def test_old_transformers_is_named_with_the_fix(monkeypatch, images):
    from gae_utils import adapters
    from gae_utils.adapters import check_transformers_version

    check_transformers_version("5.15.1")
    check_transformers_version("6.0.0.dev0")
    for old in ("4.57.6", "5.14.1"):
        with pytest.raises(gu.UnsupportedModelError, match=r"transformers>=5\.15.*pip install -U"):
            check_transformers_version(old)
    model = tiny_hf_vit()
    monkeypatch.setattr(adapters, "_installed_transformers", lambda: "4.57.6")
    with pytest.raises(gu.UnsupportedModelError, match="4.57.6"):
        explain(model, images)


def test_adapter_that_captures_nothing_fails_loudly(vit, images):
    broken = gu.Adapter(
        name="broken",
        model_classes=("VisionTransformer",),
        sites=(gu.AttentionSite("NoSuchAttention", gu.capture.ChildOutput("attn_drop")),),
        eager=gu.adapters.timm_vit.timm_eager,
        call=lambda m, x: m(x),
        logits=lambda o: o,
        check=lambda m, x: None,
        layout=gu.find_adapter(vit).layout,
    )
    with pytest.raises(gu.AttentionCaptureError, match="NoSuchAttention"):
        explain(vit, images, adapter=broken)


def test_fused_path_without_switch_fails_loudly(vit, images):
    """An adapter that forgets to switch fused attention off must not return an empty map."""
    timm_adapter = gu.find_adapter(vit)
    no_switch = gu.Adapter(**{**timm_adapter.__dict__, "eager": gu.adapters.base.no_switch})
    with pytest.raises(gu.AttentionCaptureError, match="no attention probabilities were captured"):
        explain(vit, images, adapter=no_switch)


@pytest.mark.parametrize(
    "overrides, prefix, rows",
    [
        (dict(reg_tokens=2), 3, (0,)),
        (dict(global_pool="avg", fc_norm=True), 1, None),
        (dict(class_token=False, global_pool="avg"), 0, None),
    ],
)
def test_timm_variants_layout(images, overrides, prefix, rows):
    vit = tiny_timm_vit(**overrides)
    exp = explain(vit, images)
    seg = exp.layout.segment("image")
    assert seg.prefix == prefix and seg.grid == (4, 4)
    assert exp.layout.readouts[0].rows == rows
    assert exp.relevance["image"].shape == (4, 16)
    assert torch.isfinite(exp.relevance["image"]).all()


def test_mean_pooled_row_is_mean_of_content_rows(images):
    vit = tiny_timm_vit(global_pool="avg", fc_norm=True)
    exp = explain(vit, images, target=2)
    full = exp.maps[("image", "image")]  # (B, 17, 17)
    torch.testing.assert_close(exp.relevance["image"], full[:, 1:, 1:].mean(dim=1))


def test_deit_distilled_explains_cls_and_dist_rows(images):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    deit = VisionTransformerDistilled(
        img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=2, num_heads=4
    ).eval()
    exp = explain(deit, images, verify=True)
    assert exp.layout.segment("image").prefix == 2
    full = exp.maps[("image", "image")]
    torch.testing.assert_close(exp.relevance["image"], full[:, :2, 2:].mean(dim=1))


@pytest.mark.parametrize(
    "cls_name", ["ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"]
)
def test_hugging_face_vit(images, cls_name):
    model = tiny_hf_vit(cls_name)
    before = model_state(model)
    exp = explain(model, images, verify=True)
    assert exp.relevance["image"].shape == (4, 16)
    assert exp.layout.segment("image").prefix == (2 if cls_name.startswith("DeiT") else 1)
    assert_same_state(before, model_state(model))


def test_hugging_face_sdpa_is_switched_for_the_call_and_restored(images):
    eager = tiny_hf_vit(attn="eager")
    sdpa = tiny_hf_vit(attn="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    torch.testing.assert_close(explain(sdpa, images).relevance["image"], explain(eager, images).relevance["image"])
    assert sdpa.config._attn_implementation == "sdpa"


def test_hf_and_timm_agree_on_shared_weights(images):
    """The same ViT in both libraries gives the same explanation (weights copied timm -> HF)."""
    vit = tiny_timm_vit(qkv_bias=True)
    hf = tiny_hf_vit()
    sd = {
        "vit.embeddings.cls_token": vit.cls_token,
        "vit.embeddings.position_embeddings": vit.pos_embed,
        "vit.embeddings.patch_embeddings.projection.weight": vit.patch_embed.proj.weight,
        "vit.embeddings.patch_embeddings.projection.bias": vit.patch_embed.proj.bias,
        "vit.layernorm.weight": vit.norm.weight,
        "vit.layernorm.bias": vit.norm.bias,
        "classifier.weight": vit.head.weight,
        "classifier.bias": vit.head.bias,
    }
    for i, blk in enumerate(vit.blocks):
        p = f"vit.layers.{i}."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)):
            sd[p + f"attention.{name}.weight"], sd[p + f"attention.{name}.bias"] = w, b
        pairs = {
            "attention.o_proj": blk.attn.proj,
            "layernorm_before": blk.norm1,
            "layernorm_after": blk.norm2,
            "mlp.fc1": blk.mlp.fc1,
            "mlp.fc2": blk.mlp.fc2,
        }
        for name, module in pairs.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = module.weight, module.bias
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=False)
    assert not unexpected and not [m for m in missing if "pooler" not in m], (missing, unexpected)
    for module in hf.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = vit.norm.eps
    torch.testing.assert_close(record(hf, images).logits, record(vit, images).logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        explain(hf, images, target=3).relevance["image"],
        explain(vit, images, target=3).relevance["image"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_save_load_round_trip(vit, images, tmp_path):
    exp = explain(vit, images, target=torch.tensor([[1, 2]] * 4), method="gae")
    exp.save(tmp_path / "runs" / "exp")  # parent folders are created
    back = gu.Explanation.load(tmp_path / "runs" / "exp")
    assert back.method == "gae" and back.multi_target and back.layout == exp.layout
    torch.testing.assert_close(back.relevance["image"], exp.relevance["image"])
    torch.testing.assert_close(back.maps[("image", "image")], exp.maps[("image", "image")])
    torch.testing.assert_close(back.target, exp.target)
    torch.testing.assert_close(back.heatmap(32), exp.heatmap(32))


def test_heatmap_shape_and_range(vit, images):
    exp = explain(vit, images)
    heat = exp.heatmap(32)
    assert heat.shape == (4, 32, 32)
    assert heat.min() == 0 and torch.allclose(heat.amax(dim=(1, 2)), torch.ones(4))
    assert exp.heatmap().shape == (4, 4, 4)


def test_methods_relevance_properties(vit, images):
    rec = record(vit, images, target=1)
    raw = rec.explanation("raw_attention")
    full_row = rec.layers[-1].attn_mean[:, 0]  # (B, 17) sums to 1
    torch.testing.assert_close(raw.relevance["image"], full_row[:, 1:])
    last = rec.explanation("gae_last_layer")
    torch.testing.assert_close(last.relevance["image"], rec.layers[-1].attn_bar[:, 0, 0, 1:])
    cam = rec.explanation("attn_gradcam").relevance["image"]
    assert (cam >= 0).all()
    attn = rec.layers[-1].attn[:, :, 0, 1:]  # (B, H, 16)
    grad = rec.layers[-1].grad[:, 0, :, 0, 1:]
    torch.testing.assert_close(cam, (grad.mean(-1, keepdim=True) * attn).mean(1).clamp(min=0))


def test_no_parameter_grads_and_history(vit, images):
    rec = record(vit, images, target=0, keep_heads=True)
    assert all(p.grad is None for p in vit.parameters())
    steps = rec.history()
    assert len(steps) == len(vit.blocks)
    torch.testing.assert_close(steps[-1][("image", "image")], rec.maps("gae")[("image", "image")])
    assert all(layer.attn is not None and layer.grad is not None for layer in rec.layers)


def test_frozen_hugging_face_model(images):
    model = tiny_hf_vit()
    expected = explain(model, images, target=2).relevance["image"]
    model.requires_grad_(False)
    torch.testing.assert_close(explain(model, images, target=2).relevance["image"], expected)


class _TinyAttention(torch.nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.probs = torch.nn.Identity()  # its output is the attention probabilities

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.probs((q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5).softmax(-1))
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class _TinyTokenModel(torch.nn.Module):
    """A custom torch.nn transformer over 1 CLS + 6 tokens (no library code)."""

    def __init__(self):
        super().__init__()
        self.embed, self.cls = torch.nn.Linear(3, 8), torch.nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = torch.nn.ModuleList([_TinyAttention() for _ in range(2)])
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):  # x: (B, 6, 3)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1)
        for blk in self.blocks:
            h = h + blk(h)
        return self.head(h[:, 0])


def test_registering_an_adapter_for_a_custom_model(monkeypatch):
    monkeypatch.setattr(gu.adapters, "ADAPTERS", list(gu.adapters.ADAPTERS))
    torch.manual_seed(0)
    model = _TinyTokenModel().eval()
    layout = gu.TokenLayout((gu.Segment("tokens", 7, prefix=1),), (gu.Readout("tokens", "tokens", "tokens", (0,)),))
    gu.adapters.register_adapter(
        gu.Adapter(
            name="tiny",
            model_classes=("_TinyTokenModel",),
            sites=(gu.AttentionSite("_TinyAttention", gu.capture.ChildOutput("probs"), query="tokens", key="tokens"),),
            eager=gu.adapters.base.no_switch,
            call=lambda m, x: m(x),
            logits=lambda out: out,
            check=lambda m, x: None,
            layout=lambda m, x: layout,
        )
    )
    x = torch.randn(3, 6, 3)
    exp = explain(model, x, target=1)
    # by hand: capture A with retain_grad, backward, Eq. 5-6
    kept = []

    def keep(module, args, output):
        output.retain_grad()
        kept.append(output)

    handles = [b.probs.register_forward_hook(keep) for b in model.blocks]
    model(x)[:, 1].sum().backward()
    for h in handles:
        h.remove()
    r = torch.eye(7).expand(3, 7, 7)
    for a in kept:
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    torch.testing.assert_close(exp.relevance["tokens"], r[:, 0, 1:])


def test_hugging_face_wrong_image_size():
    with pytest.raises(ValueError, match=r"does not match the model's config.image_size \(32, 32\); resize"):
        explain(tiny_hf_vit(), torch.rand(2, 3, 48, 48))


def test_headless_timm_vit_asks_for_a_callable_target(images):
    features = tiny_timm_vit(num_classes=0)  # a feature extractor: forward returns (B, 32) pooled features
    with pytest.raises(ValueError, match="num_classes=0.*target=callable"):
        explain(features, images)
    with pytest.raises(ValueError, match="num_classes=0"):
        explain(features, images, target=3)  # would silently explain feature 3 as if it were a class
    direction = torch.linspace(-1, 1, 32)
    exp = explain(features, images, target=lambda f: f @ direction)
    assert exp.relevance["image"].shape == (4, 16) and exp.target is None
    torch.testing.assert_close(exp.scores, features(images) @ direction, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls_name", ["ViTModel", "DeiTModel"])
def test_headless_hugging_face_encoder_asks_for_a_callable_target(images, cls_name):
    model = tiny_hf_vit(cls_name)
    with pytest.raises(ValueError, match="no class logits.*target=callable"):
        explain(model, images)
    exp = explain(model, images, target=lambda out: out.pooler_output.sum(-1))
    assert exp.relevance["image"].shape == (4, 16)
    assert exp.layout.segment("image").prefix == (2 if cls_name.startswith("DeiT") else 1)


@pytest.mark.parametrize("overrides", [{}, {"global_pool": "avg"}, {"class_token": True, "reg_tokens": 2}])
def test_vit_rows_without_maps_equal_the_full_maps(images, overrides):
    model = tiny_timm_vit(**overrides)
    for target in (None, torch.tensor([[1, 2]] * 4)):
        full = explain(model, images, target=target, start_layer=1)
        rows = explain(model, images, target=target, start_layer=1, maps=False)
        torch.testing.assert_close(rows.relevance["image"], full.relevance["image"], rtol=1e-5, atol=1e-7)


def test_rows_without_maps_refuse_a_recording_with_cross_attention():
    layers = [
        gu.LayerRecord("a", "self", "text", "text", None, torch.rand(1, 2, 2), attn_bar=torch.rand(1, 1, 2, 2)),
        gu.LayerRecord("b", "cross", "text", "image", None, torch.rand(1, 2, 3), attn_bar=torch.rand(1, 1, 2, 3)),
    ]
    with pytest.raises(ValueError, match="self-attention layers of one modality"):
        gu.propagation.propagate_rows(layers, torch.rand(1, 1, 2))


def test_image_size_check_takes_a_square_size_as_an_int():
    from gae_utils.adapters.base import check_image_size

    check_image_size(torch.zeros(2, 3, 32, 32), 32)  # the model's size: no error
    with pytest.raises(ValueError, match=r"\(32, 48\) does not match the model's config.image_size \(32, 32\)"):
        check_image_size(torch.zeros(2, 3, 32, 48), 32, "config.image_size ")
