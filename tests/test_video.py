"""Video transformers (issue 22): relevance over space and time. VideoMAE and ViViT attend over all
tubelets; each method is checked against a reference written out here, one clip at a time, from a
copy of the model run with eager attention and ``output_attentions=True`` (the maps' gradients kept
with ``retain_grad``), with plain loops for Eq. 5-6 and the baselines."""

import copy

import pytest
import torch

import gae_utils as gu

transformers = pytest.importorskip("transformers")

TARGETS = torch.tensor([[0, 2], [1, 0], [3, 3]])  # (B, K): two targets for each of three clips
FRAMES, SIZE = 4, 16
GAIN, SHARPNESS = 1e3, 6.0
"""Head weights scaled by GAIN and query/key projections by SHARPNESS: at random initialisation the
maps are near uniform and dy/dA tiny, so a 1e-5 comparison would see nothing; scaled, the maps vary
(checked below)."""


def _scaled(model, head):
    with torch.no_grad():
        head.weight.mul_(GAIN)
        for name, module in model.named_modules():
            if name.rpartition(".")[2] in ("query", "key", "q_proj", "k_proj", "qkv"):
                module.weight.mul_(SHARPNESS)
    return model.eval()


def tiny_vivit(seed=0):
    torch.manual_seed(seed)
    config = transformers.VivitConfig(
        image_size=SIZE, num_frames=FRAMES, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
    )  # fmt: skip
    model = transformers.VivitForVideoClassification(config)
    return _scaled(model, model.classifier)


def tiny_videomae(seed=0, mean_pooling=True):
    torch.manual_seed(seed)
    config = transformers.VideoMAEConfig(
        image_size=SIZE, patch_size=8, num_frames=FRAMES, tubelet_size=2, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, num_labels=5, use_mean_pooling=mean_pooling,
    )  # fmt: skip
    model = transformers.VideoMAEForVideoClassification(config)
    return _scaled(model, model.classifier)


def clips(n=3, seed=1, frames=FRAMES):
    return torch.randn(n, frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


GLOBAL = [("vivit", tiny_vivit, 1, "cls"), ("videomae", tiny_videomae, 0, "mean")]
GLOBAL += [("videomae-first", lambda: tiny_videomae(mean_pooling=False), 0, "first")]


# --- the independent reference ------------------------------------------------------------------


def reference(model, x, targets, method, start_layer=0, prefix=1, pooling="cls"):
    """``(B, K, T'*h*w)`` relevance, one clip and one target at a time, in plain loops."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    rows_all = []
    for b in range(x.shape[0]):
        rows_b = []
        for k in range(targets.shape[1]):
            output = eager(pixel_values=x[b : b + 1], output_attentions=True)
            attns = list(output.attentions)  # each (1, H, N, N)
            for a in attns:
                a.retain_grad()
            output.logits[0, int(targets[b, k])].backward()
            n = attns[0].shape[-1]
            explained = [0] if pooling in ("cls", "first") else list(range(prefix, n))
            if method in ("gae", "gae_no_norm", "gae_last_layer"):
                first = len(attns) - 1 if method == "gae_last_layer" else start_layer
                r = torch.eye(n, dtype=x.dtype)
                for a in attns[first:]:
                    cam = torch.zeros(n, n, dtype=x.dtype)
                    for h in range(a.shape[1]):  # Eq. 5: clamp per head, then the head mean
                        cam += (a.grad[0, h] * a[0, h]).clamp(min=0) / a.shape[1]
                    r = r + cam @ r  # Eq. 6
            elif method == "raw_attention":
                r = attns[-1][0].mean(0)
            elif method == "rollout":
                r = torch.eye(n, dtype=x.dtype)
                for a in attns[start_layer:]:
                    step = 0.5 * a[0].mean(0) + 0.5 * torch.eye(n, dtype=x.dtype)
                    r = (step / step.sum(-1, keepdim=True)) @ r
            else:  # attn_gradcam: per-head weight = mean gradient over the content columns
                a = attns[-1]
                r = torch.zeros(n, n, dtype=x.dtype)
                for h in range(a.shape[1]):
                    weight = a.grad[0, h, :, prefix:].mean(-1, keepdim=True)
                    r += weight * a[0, h] / a.shape[1]
                r = r.clamp(min=0)
            row = sum(r[i] for i in explained) / len(explained)
            rows_b.append(row[prefix:].detach())
            eager.zero_grad()
        rows_all.append(torch.stack(rows_b))
    return torch.stack(rows_all)  # (B, K, T'*h*w)


def _varies(model, x):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attns = eager(pixel_values=x, output_attentions=True).attentions
    return min(float(a.amax(-1).mean() - 1 / a.shape[-1]) for a in attns)


# --- conformance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", gu.method_names(ablations=True))
@pytest.mark.parametrize("name, build, prefix, pooling", GLOBAL)
def test_every_method_matches_the_independent_reference(name, build, prefix, pooling, method):
    model, x = build(), clips()
    assert _varies(model, x) > 0.05  # the maps are not near uniform
    exp = gu.explain(model, x, target=TARGETS, method=method)
    assert exp.relevance["video"].shape == (3, 2, 8)  # (B, K, T' * h * w): 2 x 2 x 2 tubelets
    ref = reference(model, x, TARGETS, method, prefix=prefix, pooling=pooling)
    assert ref.std() > 1e-3  # the relevance varies over the tubelets
    torch.testing.assert_close(exp.relevance["video"], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, build, prefix, pooling", GLOBAL)
def test_start_layer_and_rows_without_maps_match_the_reference(name, build, prefix, pooling):
    model, x = build(), clips()
    ref = reference(model, x, TARGETS, "gae", start_layer=1, prefix=prefix, pooling=pooling)
    for maps in (True, False):
        exp = gu.explain(model, x, target=TARGETS, start_layer=1, maps=maps)
        torch.testing.assert_close(exp.relevance["video"], ref, atol=1e-5, rtol=1e-5)
    rollout = gu.explain(model, x, target=TARGETS, method="rollout", start_layer=1)
    ref = reference(model, x, TARGETS, "rollout", start_layer=1, prefix=prefix, pooling=pooling)
    torch.testing.assert_close(rollout.relevance["video"], ref, atol=1e-5, rtol=1e-5)


def test_a_deliberate_mistake_in_the_reference_is_caught():
    """The reference with the head mean taken before the clamp (not Eq. 5), and with VideoMAE read
    at its first tubelet instead of the mean its head pools, differs from the library."""
    model, x = tiny_videomae(), clips()
    exp = gu.explain(model, x, target=TARGETS)
    wrong_row = reference(model, x, TARGETS, "gae", prefix=0, pooling="first")
    assert not torch.allclose(exp.relevance["video"], wrong_row, atol=1e-3)
    model = tiny_vivit()
    exp = gu.explain(model, x, target=TARGETS, method="gae_last_layer")
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    out = eager(pixel_values=x[:1], output_attentions=True)
    attn = out.attentions[-1]
    attn.retain_grad()
    out.logits[0, int(TARGETS[0, 0])].backward()
    wrong = (attn.grad * attn).mean(1).clamp(min=0)[0, 0, 1:]  # clamp after the head mean
    assert not torch.allclose(exp.relevance["video"][0, 0], wrong.detach(), atol=1e-3)


def test_one_target_a_batch_of_one_and_the_tubelet_order_in_time():
    model, x = tiny_vivit(), clips()
    batch = gu.explain(model, x, target=TARGETS[:, 0])
    single = gu.explain(model, x[1:2], target=TARGETS[1:2, 0])
    assert batch.relevance["video"].shape == (3, 8)
    torch.testing.assert_close(single.relevance["video"][0], batch.relevance["video"][1], atol=1e-6, rtol=1e-5)
    grid = batch.grid_relevance("video")  # (B, T', h, w): the first tubelets in time come first
    assert grid.shape == (3, 2, 2, 2)
    assert torch.equal(grid[:, 1].flatten(1), batch.relevance["video"][:, 4:])


def test_the_heatmap_repeats_each_tubelet_over_its_frames_and_normalises_per_clip():
    model, x = tiny_videomae(), clips()
    exp = gu.explain(model, x, target=TARGETS)
    heat = exp.heatmap(size=SIZE, name="video", frames=FRAMES)
    assert heat.shape == (3, 2, FRAMES, SIZE, SIZE)  # (B, K, T, H, W)
    assert torch.equal(heat[:, :, 0], heat[:, :, 1]) and torch.equal(heat[:, :, 2], heat[:, :, 3])
    assert not torch.equal(heat[:, :, 1], heat[:, :, 2])  # tubelets differ in time
    flat = heat.flatten(2)
    assert torch.allclose(flat.amax(-1), torch.ones(3, 2)) and torch.allclose(flat.amin(-1), torch.zeros(3, 2))
    per_tubelet = exp.heatmap(name="video")  # no size, no frames: the (T', h, w) grid
    assert per_tubelet.shape == (3, 2, 2, 2, 2)
    rel = exp.relevance["video"][0, 0]
    assert per_tubelet[0, 0].flatten().argmax() == rel.argmax()
    with pytest.raises(ValueError, match="not a multiple of the 2 tubelets in time; pass the clip's"):
        exp.heatmap(name="video", frames=3)
    with pytest.raises(ValueError, match=r"over a clip's \(T', h, w\) tubelets; draw frame t .* exp.heatmap"):
        exp.plot(name="video")


def _state(model):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        model.config._attn_implementation,
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        sorted(ALL_ATTENTION_FUNCTIONS.keys()),
    )


@pytest.mark.parametrize("name, build, prefix, pooling", GLOBAL[:2])
def test_the_model_is_unchanged_after_explaining(name, build, prefix, pooling):
    model = build()
    model.set_attn_implementation("sdpa")
    model.train()
    model.classifier.requires_grad_(False)
    before = _state(model)
    for method in ("gae", "attn_gradcam"):
        gu.explain(model, clips(), target=TARGETS, method=method)
        after = _state(model)
        assert after[1:] == before[1:]
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
        assert all(p.grad is None for p in model.parameters())


def test_clip_errors_name_the_fix():
    model, x = tiny_vivit(), clips()
    with pytest.raises(ValueError, match=r"add a batch dimension with clip\[None\]"):
        gu.explain(model, x[0])
    with pytest.raises(ValueError, match=r"channels-first \(B, C, T, H, W\): clips.permute\(0, 2, 1, 3, 4\)"):
        gu.explain(model, x.transpose(1, 2).contiguous())
    with pytest.raises(ValueError, match="built for clips of 4 frames .* sample 4 frames"):
        gu.explain(model, clips(frames=6))
    with pytest.raises(TypeError, match="float clips"):
        gu.explain(model, (x * 255).to(torch.uint8))


def test_a_clip_given_to_an_image_model_is_said_to_look_like_a_video():
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    vit = transformers.ViTForImageClassification(config).eval()
    with pytest.raises(ValueError, match=r"looks like a video, and this is an image model.*VideoMAE, ViViT"):
        gu.explain(vit, clips())


# --- TimeSformer: divided space-time attention ------------------------------------------------------

TS_FRAMES = 3


def tiny_timesformer(seed=0):
    torch.manual_seed(seed)
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=8, num_frames=TS_FRAMES, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
    )  # fmt: skip
    model = transformers.TimesformerForVideoClassification(config)
    return _scaled(model, model.classifier)


def _keep(probs):
    def hook(module, args, out):
        out.retain_grad()
        probs.append(out)

    return hook


def _captured(model, clip, target):
    """Per-group probabilities and their gradients of one clip, in the order the model runs them
    (hooks of this file on each attention's ``attn_drop``)."""
    probs, hooks = [], []
    for layer in model.timesformer.encoder.layer:
        for attention in (layer.temporal_attention, layer.attention):
            hooks.append(attention.attention.attn_drop.register_forward_hook(_keep(probs)))
    logits = model(pixel_values=clip).logits
    logits[0, int(target)].backward()
    for hook in hooks:
        hook.remove()
    model.zero_grad()
    return [(p.detach(), p.grad) for p in probs]


def _dense(temporal, spatial, frames, patches, grad=False, cls_scale=True):
    """The two layers of one block as per-head ``(H, N, N)`` maps over the model's global token
    order (token ``1 + p * T + t``; 0 the CLS). The CLS output is the mean of its per-frame copies:
    its row of the attention is the mean of the copies' rows, and the gradient of that mean row is
    T times a copy's (``cls_scale=False``: the deliberate mistake of forgetting it)."""
    heads, n = temporal.shape[1], 1 + patches * frames
    tok = lambda p, t: 1 + p * frames + t  # noqa: E731
    a_t, a_s = torch.zeros(heads, n, n), torch.zeros(heads, n, n)
    for p in range(patches):
        for t in range(frames):
            for t2 in range(frames):
                a_t[:, tok(p, t), tok(p, t2)] = temporal[p, :, t, t2]
    scale = (frames if cls_scale else 1.0) if grad else 1.0 / frames
    for t in range(frames):
        for i in range(patches):
            a_s[:, tok(i, t), 0] = spatial[t, :, 1 + i, 0]
            a_s[:, 0, tok(i, t)] = spatial[t, :, 0, 1 + i] * scale
            for j in range(patches):
                a_s[:, tok(i, t), tok(j, t)] = spatial[t, :, 1 + i, 1 + j]
    if grad:  # every copy's gradient at the CLS column is the same (one value, one mean)
        torch.testing.assert_close(spatial[:, :, 0, 0], spatial[:1, :, 0, 0].expand(frames, -1))
    a_s[:, 0, 0] = spatial[:, :, 0, 0].mean(0) * (scale if grad else 1.0)
    return a_t, a_s


def ts_reference(model, x, targets, method, start_layer=0, cls_scale=True):
    """``(B, K, T*h*w)``: dense global maps per clip and target, the methods as for a ViT, the row
    moved from the model's (patch, frame) order to (frame, patch)."""
    frames, patches = x.shape[1], (x.shape[-1] // 8) * (x.shape[-2] // 8)
    n, out = 1 + frames * patches, []
    for b in range(x.shape[0]):
        rows = []
        for k in range(targets.shape[1]):
            cap = _captured(model, x[b : b + 1], targets[b, k])
            layers = []
            for block in range(0, len(cap), 2):
                (pt, gt), (ps, gs) = cap[block], cap[block + 1]
                a = _dense(pt, ps, frames, patches)
                g = _dense(gt, gs, frames, patches, grad=True, cls_scale=cls_scale)
                layers += [(a[0], g[0]), (a[1], g[1])]
            eye = torch.eye(n)
            if method in ("gae", "gae_no_norm", "gae_last_layer"):
                r = eye.clone()
                for a, g in layers[len(layers) - 1 if method == "gae_last_layer" else start_layer :]:
                    r = r + (g * a).clamp(min=0).mean(0) @ r  # Eq. 5, Eq. 6
            elif method == "raw_attention":
                r = layers[-1][0].mean(0)
            elif method == "rollout":
                r = eye.clone()
                for a, _ in layers[start_layer:]:
                    step = 0.5 * a.mean(0) + 0.5 * eye
                    r = (step / step.sum(-1, keepdim=True)) @ r
            else:  # attn_gradcam of the last (spatial) layer per frame, the CLS copies averaged
                (ps, gs), r = cap[-1], torch.zeros(n, n)
                for t in range(frames):
                    cam = (gs[t, :, 0].mean(-1, keepdim=True) * ps[t, :, 0]).mean(0).clamp(min=0)
                    for i in range(patches):
                        r[0, 1 + i * frames + t] = cam[1 + i] / frames
            rows.append(r[0, 1:].view(patches, frames).T.flatten())  # (T * P,) in (t, p) order
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("method", gu.method_names(ablations=True))
def test_timesformer_every_method_matches_the_independent_reference(method):
    model, x = tiny_timesformer(), clips(frames=TS_FRAMES)
    exp = gu.explain(model, x, target=TARGETS, method=method)
    assert exp.relevance["video"].shape == (3, 2, TS_FRAMES * 4)  # (B, K, T * h * w)
    ref = ts_reference(model, x, TARGETS, method)
    assert ref.std() > 1e-3
    torch.testing.assert_close(exp.relevance["video"], ref, atol=1e-5, rtol=1e-5)


def test_timesformer_maps_vary_start_layer_and_rows_without_maps():
    model, x = tiny_timesformer(), clips(frames=TS_FRAMES)
    cap = _captured(model, x[:1], 0)
    assert min(float(p.amax(-1).mean() - 1 / p.shape[-1]) for p, _ in cap) > 0.05  # not uniform
    ref = ts_reference(model, x, TARGETS, "gae", start_layer=1)  # skips the first temporal layer
    for maps in (True, False):
        exp = gu.explain(model, x, target=TARGETS, start_layer=1, maps=maps)
        torch.testing.assert_close(exp.relevance["video"], ref, atol=1e-5, rtol=1e-5)
    exp = gu.explain(model, x, target=TARGETS, method="rollout", start_layer=2)
    ref = ts_reference(model, x, TARGETS, "rollout", start_layer=2)
    torch.testing.assert_close(exp.relevance["video"], ref, atol=1e-5, rtol=1e-5)
    grid = exp.grid_relevance("video")
    assert grid.shape == (3, 2, TS_FRAMES, 2, 2)  # (B, K, T, h, w)
    assert exp.heatmap(SIZE, name="video", frames=TS_FRAMES).shape == (3, 2, TS_FRAMES, SIZE, SIZE)


def test_timesformer_a_deliberate_mistake_is_caught():
    """Forgetting that the CLS output averages its frame copies (its gradient T times a copy's)
    changes GAE's relevance beyond the tolerance."""
    model, x = tiny_timesformer(), clips(n=1, frames=TS_FRAMES)
    exp = gu.explain(model, x, target=TARGETS[:1])
    wrong = ts_reference(model, x, TARGETS[:1], "gae", cls_scale=False)
    assert not torch.allclose(exp.relevance["video"], wrong, atol=1e-4)


def test_timesformer_is_unchanged_after_explaining_and_other_attention_types_are_refused():
    model = tiny_timesformer()
    model.train()
    model.classifier.requires_grad_(False)
    before = _state(model)
    for method in ("gae", "attn_gradcam", "rollout"):
        gu.explain(model, clips(frames=TS_FRAMES), target=TARGETS, method=method)
        after = _state(model)
        assert after[1:] == before[1:]
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
        assert all(p.grad is None for p in model.parameters())
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=8, num_frames=TS_FRAMES, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, attention_type="joint_space_time",
    )  # fmt: skip
    joint = transformers.TimesformerForVideoClassification(config).eval()
    with pytest.raises(gu.UnsupportedModelError, match="attention_type='divided_space_time'"):
        gu.explain(joint, clips(frames=TS_FRAMES))


# --- the probe and the refused families -------------------------------------------------------------


def test_the_image_probe_reports_the_video_families_explained_with_parity_or_refused():
    from gae_workbook.evaluation import probe

    installed = set(probe._table("video"))
    results = probe.probe([f"video:{f}" for f in installed], kind="image", progress=False)
    explained = {f for f in ("videomae", "vivit", "timesformer") if f in installed}
    assert explained == {"videomae", "vivit", "timesformer"}
    for family in explained:
        outcome, detail = results[f"video:{family}"]
        assert outcome == "ok" and "parity with the stock model" in detail, (family, detail)
    for family in installed - explained:  # VJEPA2, VideoPrism, ...: the reason names what is missing
        outcome, detail = results[f"video:{family}"]
        assert outcome == "refused" and "is a video model with" in detail, (family, detail)
        assert "no adapter lays out its space-time tokens and reads its head" in detail


def test_a_video_family_no_adapter_serves_is_refused_naming_what_is_missing():
    config = transformers.VJEPA2Config(
        crop_size=16, patch_size=8, frames_per_clip=4, tubelet_size=2, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=4,
        num_pooler_layers=1, num_labels=3,
    )  # fmt: skip
    model = transformers.VJEPA2ForVideoClassification(config).eval()
    with pytest.raises(gu.UnsupportedModelError, match="attentive pooler .* Explained video classifiers: Vivit"):
        gu.explain(model, torch.randn(2, 4, 3, 16, 16))


def test_the_benchmark_times_a_batch_of_clips_against_a_forward_on_one_thread():
    from gae_workbook.tools import bench

    threads = torch.get_num_threads()
    result = bench.run_video_benchmark("timesformer", batch=2, repeats=1, frames=2, size=32)
    assert torch.get_num_threads() == threads  # restored
    assert result["threads"] == 1 and result["tokens"] == 1 + 2 * 4
    assert set(result["ratios"]) == {"gae / forward", "gae_rows / forward"}
    assert all(v > 0 for v in result["seconds"].values())
    assert result["ratios"]["gae / forward"] == result["seconds"]["gae"] / result["seconds"]["forward"]
    with pytest.raises(ValueError, match="unknown video family 'x3d'; choose one of"):
        bench.run_video_benchmark("x3d")


def test_window_rows_sum_a_tokens_copies_and_pass_a_token_of_no_group_through():
    """The grouped scatter against the dense block sum: token 0 sits in both groups, token 3 in
    none (its step row is the identity's in a non-residual update)."""
    from gae_utils.rules import window_update_rows

    index = torch.tensor([[0, 1], [0, 2]])  # (nW, Nw) over N = 4 tokens
    maps = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(0))  # (nW, Nw, Nw)
    rows = torch.rand(3, 4, generator=torch.Generator().manual_seed(1))  # (M, N)
    dense = torch.zeros(4, 4)
    for w in range(2):
        for i in range(2):
            for j in range(2):
                dense[index[w, i], index[w, j]] += maps[w, i, j]
    torch.testing.assert_close(window_update_rows(rows, maps, index), rows + rows @ dense)
    step = dense.clone()
    step[3, 3] = 1.0  # no group: the token keeps itself
    torch.testing.assert_close(window_update_rows(rows, maps, index, residual=False), rows @ step)
