"""Hierarchical windowed vision transformers (Swin, issue 19): GAE with shifted windows and patch
merges, checked against a reference written out here with plain loops and dense matrices from
attention maps and gradients captured by hooks of this file (not the library's recorder)."""

import pytest
import torch

import gae_utils as gu
from gae_utils.methods import METHODS
from gae_utils.propagation import propagate_windowed

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TARGETS = torch.tensor([[0, 2], [1, 0]])  # (B, K): two targets for each of two images


GAIN, SHARPNESS = 1e4, 10.0
"""The heads' weights are scaled by GAIN and the query/key projections by SHARPNESS: at random
initialisation dy/dA is so small that GAE's relevance lies within 1e-6 of uniform, and attention
is so flat that rollout's does too; a 1e-5 comparison would not see them. Scaled, the maps vary by
more than 5e-4 (checked in the conformance test)."""


def _scaled(model, head):
    with torch.no_grad():
        head.weight.mul_(GAIN)
        for name, module in model.named_modules():
            if name.rpartition(".")[2] in ("qkv", "q_proj", "k_proj"):
                module.weight.mul_(SHARPNESS)
            if name.rpartition(".")[2] in ("norm1", "norm2") and not module.weight.any():
                module.weight.fill_(1.0)  # Swin v2 zero-initialises its post-norms: no attention path
    return model.eval()


def tiny_timm_swin(seed=0, version=1):
    """16 x 16 patches, 4 x 4 windows: stage 0 has 16 windows, stage 1 (8 x 8) has 4; the second
    block of each stage is shifted."""
    torch.manual_seed(seed)
    name = "swin_tiny_patch4_window7_224" if version == 1 else "swinv2_tiny_window8_256"
    model = timm.create_model(
        name, pretrained=False, num_classes=3, embed_dim=8, depths=(2, 2), num_heads=(1, 2), img_size=64, window_size=4
    )
    return _scaled(model, model.head.fc)


def tiny_hf_swin(seed=0):
    torch.manual_seed(seed)
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=4,
        num_labels=3,
        attn_implementation="eager",
    )
    model = transformers.SwinForImageClassification(config)
    return _scaled(model, model.classifier)


def images(size, n=2, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the independent reference ----------------------------------------------------------------------


def _stage_layers(model):
    """(grid side, window, shift) of each attention layer, read from the model's blocks."""
    out = []
    names = ("SwinTransformerBlock", "SwinTransformerV2Block", "SwinLayer")
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        side = getattr(block, "ran_on", block.input_resolution)[0]
        window = block.window_size[0] if isinstance(block.window_size, tuple) else block.window_size
        shift = block.shift_size[0] if isinstance(block.shift_size, tuple) else block.shift_size
        out.append((side, window, shift))
    return out


def _captured_maps(model, x, kind):
    """Per layer, the probabilities (B*nW, H, Nw, Nw) and, per target column, their gradient."""
    probs = []
    if kind == "timm":
        for m in model.modules():
            if type(m).__name__ == "WindowAttention":
                m.fused_attn = False
                m.attn_drop.register_forward_hook(lambda mod, inp, out: probs.append(out))
        logits = model(x)
    else:  # eager SwinAttention returns the probabilities it multiplied the values with
        for m in model.modules():
            if type(m).__name__ == "SwinAttention":
                m.register_forward_hook(lambda mod, inp, out: probs.append(out[1]))
            if type(m).__name__ == "SwinLayer":  # the grid it runs on (input_resolution floors odd sizes)
                m.register_forward_pre_hook(lambda mod, args: setattr(mod, "ran_on", args[1]))
        logits = model(pixel_values=x).logits
    grads = []
    for k in range(TARGETS.shape[1]):
        score = logits.gather(1, TARGETS[:, k : k + 1]).sum()
        grads.append(torch.autograd.grad(score, probs, retain_graph=True))
    return [p.detach() for p in probs], grads


def _source(r, c, side, padded, shift, kind):
    """Stage token at (r, c) of the rolled, padded grid, or None for padding: timm rolls the
    side x side grid, then pads it to padded x padded; Hugging Face pads, then rolls."""
    if kind == "timm":
        return None if r >= side or c >= side else ((r + shift) % side) * side + (c + shift) % side
    r, c = (r + shift) % padded, (c + shift) % padded
    return None if r >= side or c >= side else r * side + c


def _block_diagonal(maps, side, window, shift, kind):
    """Dense (N, N) map of one example from its windows' (nW, Nw, Nw) maps: window (a, c),
    position (p, q) sits at (a*window + p, c*window + q) of the rolled, padded grid; pairs with a
    padding position are left out (padding carries no input patch)."""
    n, padded = side * side, -(-side // window) * window
    dense = torch.zeros(n, n, dtype=torch.float64)
    per_row = padded // window
    for w in range(maps.shape[0]):
        a, c = divmod(w, per_row)
        tokens = [
            _source(a * window + p, c * window + q, side, padded, shift, kind)
            for p in range(window)
            for q in range(window)
        ]
        for i, ti in enumerate(tokens):
            for j, tj in enumerate(tokens):
                if ti is not None and tj is not None:
                    dense[ti, tj] = maps[w, i, j]
    return dense


def _merge(side, reduce="mean"):
    """Dense P of a 2x2 merge: ceil(side/2)^2 x side^2, each parent pools its four children (an
    odd side: the missing children are the models' zero padding)."""
    half = (side + 1) // 2
    merge = torch.zeros(half * half, side * side, dtype=torch.float64)
    for i in range(side):
        for j in range(side):
            merge[(i // 2) * half + j // 2, i * side + j] = 0.25 if reduce == "mean" else 1.0
    return merge


def reference(model, x, kind, method="gae"):
    """(B, K, N_0): per example and target, R over the stages with dense matrices, read as the
    mean of the last stage's rows."""
    probs, grads = _captured_maps(model, x, kind)
    layers = _stage_layers(model)
    batch, k_targets = TARGETS.shape
    out = torch.zeros(batch, k_targets, layers[0][0] ** 2, dtype=torch.float64)
    for b in range(batch):
        for k in range(k_targets):
            relevance, side = torch.eye(layers[0][0] ** 2, dtype=torch.float64), layers[0][0]
            for n, (stage_side, window, shift) in enumerate(layers):
                while side != stage_side:
                    relevance, side = _merge(side) @ relevance, (side + 1) // 2
                n_windows = (-(-side // window)) ** 2
                attn = probs[n][b * n_windows : (b + 1) * n_windows].double()  # (nW, H, Nw, Nw)
                grad = grads[k][n][b * n_windows : (b + 1) * n_windows].double()
                if method == "gae":
                    bar = (grad * attn).clamp(min=0).mean(dim=1)  # Eq. 5, per window
                    relevance = relevance + _block_diagonal(bar, side, window, shift, kind) @ relevance
                elif method == "rollout":
                    eye = torch.eye(attn.shape[-1], dtype=torch.float64)
                    step = 0.5 * attn.mean(dim=1) + 0.5 * eye
                    step = step / step.sum(dim=-1, keepdim=True)
                    relevance = _block_diagonal(step, side, window, shift, kind) @ relevance
                elif method == "raw_attention" and n == len(layers) - 1:
                    relevance = _block_diagonal(attn.mean(dim=1), side, window, shift, kind) @ relevance
                elif method == "gae_last_layer" and n == len(layers) - 1:
                    bar = (grad * attn).clamp(min=0).mean(dim=1)
                    relevance = relevance + _block_diagonal(bar, side, window, shift, kind) @ relevance
                elif method == "attn_gradcam" and n == len(layers) - 1:
                    cam = torch.zeros(attn.shape[0], attn.shape[2], attn.shape[3], dtype=torch.float64)
                    for w in range(attn.shape[0]):
                        for i in range(attn.shape[2]):  # each query row: heads weighted by their mean gradient
                            weight = grad[w, :, i, :].mean(dim=-1, keepdim=True)  # (H, 1)
                            cam[w, i] = (weight * attn[w, :, i, :]).mean(dim=0).clamp(min=0)
                    relevance = _block_diagonal(cam, side, window, shift, kind) @ relevance
            out[b, k] = relevance.mean(dim=0)
    return out


# --- conformance ------------------------------------------------------------------------------------

CASES = [("timm", tiny_timm_swin, 64), ("hf", tiny_hf_swin, 32)]


@pytest.mark.parametrize("kind, build, size", CASES)
@pytest.mark.parametrize("method", ["gae", "rollout", "raw_attention", "gae_last_layer", "attn_gradcam"])
def test_methods_match_the_independent_per_window_reference(kind, build, size, method):
    x = images(size)
    model = build()
    exp = gu.explain(model, x, target=TARGETS, method=method)
    want = reference(build(), x, kind, method)
    assert (want - want.mean(dim=-1, keepdim=True)).abs().max() > 5e-4  # 50x the tolerance
    assert exp.relevance["image"].shape == want.shape == (2, 2, (size // {"timm": 4, "hf": 2}[kind]) ** 2)
    torch.testing.assert_close(exp.relevance["image"].double(), want, atol=1e-5, rtol=1e-5)


def padded_timm_swin(seed=0):
    """20 x 20 patches in 8 x 8 windows (padded to 24), then 10 x 10 (padded to 16), 5 x 5 (one
    window of 5) and an odd merge to 3 x 3."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        embed_dim=8,
        depths=(2, 2, 2, 1),
        num_heads=(1, 2, 2, 2),
        img_size=80,
        window_size=8,
    )
    return _scaled(model, model.head.fc)


def padded_hf_swin(seed=0):
    torch.manual_seed(seed)
    """22 x 22 patches in 5 x 5 windows (padded to 25), 11 x 11 (to 15), an odd merge to 6 x 6 (to
    10); Hugging Face Swin cannot run a stage smaller than its window (its position bias keeps the
    window's size)."""
    config = transformers.SwinConfig(
        image_size=44,
        patch_size=2,
        embed_dim=8,
        depths=[2, 2, 2],
        num_heads=[1, 2, 2],
        window_size=5,
        num_labels=3,
        attn_implementation="eager",
    )
    model = transformers.SwinForImageClassification(config)
    return _scaled(model, model.classifier)


PADDED = [
    ("timm", padded_timm_swin, 80, [20, 20, 10, 10, 5, 5, 3]),
    ("hf", padded_hf_swin, 44, [22, 22, 11, 11, 6, 6]),
]


@pytest.mark.parametrize("kind, build, size, sides", PADDED)
@pytest.mark.parametrize("method", ["gae", "rollout"])
def test_padded_windows_and_an_odd_merge_match_the_reference(kind, build, size, sides, method):
    """Padding positions (timm pads after the roll, Hugging Face before it) and an odd merge
    (5 x 5 -> 3 x 3, 11 x 11 -> 6 x 6), against the reference."""
    x, model = images(size), build()
    exp = gu.explain(build(), x, target=TARGETS, method=method)
    want = reference(model, x, kind, method)
    assert [side for side, _, _ in _stage_layers(model)] == sides  # as run
    assert (want - want.mean(dim=-1, keepdim=True)).abs().max() > 5e-4
    torch.testing.assert_close(exp.relevance["image"].double(), want, atol=1e-5, rtol=1e-5)
    assert exp.layout.segment("last_stage").grid == (sides[-1], sides[-1])


def test_the_reference_sees_shifts_several_windows_and_a_merge():
    """The tiny models have what the rule must handle: more than one window per stage, shifted
    layers in each stage, and a merge (otherwise the conformance above would prove less)."""
    for model in (tiny_timm_swin(), tiny_hf_swin()):
        layers = _stage_layers(model)
        assert all((side // window) ** 2 > 1 for side, window, _ in layers)
        assert [shift > 0 for _, _, shift in layers] == [False, True, False, True]
        assert layers[0][0] == 2 * layers[-1][0]


@pytest.mark.parametrize("kind, build, size", CASES)
def test_rows_without_maps_equal_the_maps_rows_and_every_method_runs(kind, build, size):
    model, x = build(), images(size)
    full = gu.explain(model, x, target=TARGETS)
    rows = gu.explain(model, x, target=TARGETS, maps=False)
    torch.testing.assert_close(rows.relevance["image"], full.relevance["image"], atol=1e-6, rtol=1e-5)
    assert full.maps[("last_stage", "image")].shape == (2, 2, 8 * 8, 16 * 16)  # last stage x first
    for method in METHODS:
        one = gu.explain(model, x, target=TARGETS, method=method).relevance["image"]
        assert one.shape == full.relevance["image"].shape and torch.isfinite(one).all() and one.abs().sum() > 0


def test_start_layer_skips_the_first_layers_in_maps_and_rows():
    model, x = tiny_timm_swin(), images(64)
    full = gu.explain(model, x, target=TARGETS, start_layer=2)
    rows = gu.explain(model, x, target=TARGETS, start_layer=2, maps=False)
    torch.testing.assert_close(rows.relevance["image"], full.relevance["image"], atol=1e-6, rtol=1e-5)
    rec = gu.record(model, x, target=TARGETS)
    bars = [None, None] + [layer.attn_bar for layer in rec.layers[2:]]  # stage 0 skipped
    want = propagate_windowed(rec.layers, bars).mean(dim=-2)
    torch.testing.assert_close(full.relevance["image"], want)
    assert not torch.equal(full.relevance["image"], gu.explain(model, x, target=TARGETS).relevance["image"])


def test_one_target_per_example_and_a_batch_of_one_read_the_same_rows():
    model, x = tiny_timm_swin(), images(64, n=3)
    batch = gu.explain(model, x, target=torch.tensor([0, 1, 2]))
    assert batch.relevance["image"].shape == (3, 256)
    for b in range(3):
        alone = gu.explain(model, x[b : b + 1], target=b)
        torch.testing.assert_close(alone.relevance["image"][0], batch.relevance["image"][b], atol=1e-6, rtol=1e-5)
    two = gu.explain(model, x, target=torch.tensor([[0, 1]] * 3))
    torch.testing.assert_close(two.relevance["image"][:, 0], gu.explain(model, x, target=0).relevance["image"])


def test_swinv2_of_timm_is_captured_the_same_way():
    model, x = tiny_timm_swin(version=2), images(64)
    exp = gu.explain(model, x, target=TARGETS)
    want = reference(tiny_timm_swin(version=2), x, "timm")
    assert (want - want.mean(dim=-1, keepdim=True)).abs().max() > 5e-4
    torch.testing.assert_close(exp.relevance["image"].double(), want, atol=1e-5, rtol=1e-5)


def test_with_mean_merges_rollout_and_raw_attention_stay_distributions_over_the_patches():
    for _, build, size in CASES:
        for method in ("rollout", "raw_attention"):
            total = gu.explain(build(), images(size), target=TARGETS, method=method).relevance["image"].sum(-1)
            torch.testing.assert_close(total, torch.ones_like(total))


def test_merge_by_sum_scales_the_map_by_four_per_merge():
    """Every step is a left product (Eq. 6: (I + Abar) R; merges: P R), so the sum pooling gives
    the mean's R times 4 per merge: the normalised maps are the same."""
    model, x = tiny_timm_swin(), images(64)
    rec = gu.record(model, x, target=TARGETS)
    bars = [layer.attn_bar for layer in rec.layers]
    mean = propagate_windowed(rec.layers, bars, reduce="mean")
    total = propagate_windowed(rec.layers, bars, reduce="sum")
    torch.testing.assert_close(total, 4 * mean)  # one merge
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        propagate_windowed(rec.layers, bars, reduce="max")


# --- window layout, the model unchanged, the map's grid -----------------------------------------------


@pytest.mark.parametrize("grid, window, shift", [((8, 8), 4, 2), ((6, 10), 4, 2), ((7, 5), 3, 1)])
def test_window_index_undoes_the_models_shift_partition_and_padding(grid, window, shift):
    """Our index against the models' own roll + pad + window_partition of a grid of token ids."""
    from timm.models.swin_transformer import window_partition as timm_partition
    from transformers.models.swin.modeling_swin import window_partition as hf_partition

    from gae_utils.adapters.swin import window_index

    h, w = grid
    ids = torch.arange(h * w, dtype=torch.float32).view(1, h, w, 1) + 1  # 0: padding
    pad = (0, 0, 0, (-w) % window, 0, (-h) % window)
    rolled = torch.nn.functional.pad(torch.roll(ids, (-shift, -shift), (1, 2)), pad)  # timm: roll, pad
    want = timm_partition(rolled, (window, window)).reshape(-1, window * window).long() - 1
    got = window_index(grid, (window, window), (shift, shift))
    assert torch.equal(got, want.where(want >= 0, h * w))
    padded = torch.roll(torch.nn.functional.pad(ids, pad), (-shift, -shift), (1, 2))  # HF: pad, roll
    want = hf_partition(padded, window).reshape(-1, window * window).long() - 1
    got = window_index(grid, (window, window), (shift, shift), pad_first=True)
    assert torch.equal(got, want.where(want >= 0, h * w))


def _state(model):
    flags = [(n, getattr(m, "fused_attn", None)) for n, m in model.named_modules()]
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        flags,
        getattr(getattr(model, "config", None), "_attn_implementation", None),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
    )


@pytest.mark.parametrize("kind, build, size", CASES)
def test_model_unchanged_after_explaining(kind, build, size):
    model = build()
    if kind == "timm":
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = True  # the fused path, switched off only for the call
    else:
        model.set_attn_implementation("sdpa")
    model.train()
    model.layers[0].requires_grad_(False) if kind == "timm" else model.swin.embeddings.requires_grad_(False)
    before = _state(model)
    for method in ("gae", "attn_gradcam"):
        gu.explain(model, images(size), target=TARGETS, method=method)
        after = _state(model)
        assert after[1:] == before[1:]
        assert all(torch.equal(after[0][k], v) for k, v in before[0].items())
        assert all(p.grad is None for p in model.parameters())


def test_swin_t_at_224_maps_onto_the_56_by_56_first_stage_grid():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4).eval()
    exp = gu.explain(model, images(224, n=1), target=1, maps=False)
    assert exp.relevance["image"].shape == (1, 56 * 56)
    assert exp.heatmap().shape == (1, 56, 56)
    assert exp.heatmap(size=224).shape == (1, 224, 224)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pvt_v2_b0", "twins_pcpvt_small", "mvitv2_tiny", "swinv2_cr_tiny_224"])
def test_other_timm_hierarchical_families_are_refused_naming_what_is_missing(name):
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    with pytest.raises(gu.UnsupportedModelError) as info:
        gu.find_adapter(model)
    message = str(info.value)
    families = gu.adapters.images.HIERARCHICAL_FAMILIES
    what = next(w for k, w in families.items() if type(model).__name__.startswith(k))
    assert message.startswith(f"{type(model).__name__} is a hierarchical vision transformer with {what}, which")
    assert "Swin rule (per-window maps, 2x2 merges) does not describe" in message
    assert "SwinForImageClassification" in message and message.count("\n") == 0


def test_pvt_keys_pooled_by_a_convolution_are_refused_when_explained():
    model = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=3).eval()
    with pytest.raises(gu.UnsupportedModelError, match="keys and values pooled by a strided convolution"):
        gu.explain(model, images(64))


def test_the_image_probe_reports_hierarchical_families_explained_with_parity_or_refused():
    from gae_workbook.evaluation import probe

    results = probe.probe(["swin", "swinv2", "pvt_v2", "timm:swin", "timm:pvt_v2", "vit"], "image", progress=False)
    assert results["swin"] == ("ok", "hf-swin, image grid (16, 16)")  # explained with verify=True: parity
    assert results["timm:swin"] == ("ok", "timm-swin, image grid (16, 16), parity with the stock model")
    assert results["timm:pvt_v2"][0] == "refused" and "keys and values pooled by a strided" in results["timm:pvt_v2"][1]
    assert results["pvt_v2"][0] == "not routed" and "keys and values pooled" in results["pvt_v2"][1]
    assert results["swinv2"][0] == "not routed" and "no adapter gives its per-window" in results["swinv2"][1]
    assert "timm:swinv2" not in results  # only the families asked for


def test_errors_of_the_swin_path_name_the_fix():
    model = tiny_timm_swin()
    rec = gu.record(model, images(64), target=0)
    with pytest.raises(ValueError, match=r"attend within windows \(Swin\).*use propagate_windowed"):
        rec.history()
    with pytest.raises(ValueError, match=r"resize the images to \(64, 64\)"):
        gu.explain(model, images(32))
    with pytest.raises(ValueError, match=r"resize the images to \(32, 32\)"):
        gu.explain(tiny_hf_swin(), images(64))
    pooled = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=3,
        embed_dim=8,
        depths=(2,),
        num_heads=(1,),
        img_size=64,
        window_size=4,
        global_pool="max",
    ).eval()
    with pytest.raises(ValueError, match="global_pool='max'.*build the model with global_pool='avg'"):
        gu.explain(pooled, images(64))


def test_a_swin_explanation_plots_on_its_grid_and_round_trips(tmp_path):
    model, x = tiny_timm_swin(), images(64)
    exp = gu.explain(model, x, target=TARGETS)
    fig = exp.plot(torch.rand(2, 3, 64, 64))  # the pictures, in [0, 1]
    assert len(fig.axes) >= 4  # 2 images x 2 targets, and colour bars
    exp.save(tmp_path / "swin")
    assert gu.Explanation.load(tmp_path / "swin") == exp


def test_the_benchmark_times_a_swin_without_the_vit_only_loop():
    from gae_workbook.tools import bench

    result = bench.run_benchmark("swin_tiny_patch4_window7_224", batch=1, repeats=1, memory=False)
    assert set(result["ratios"]) == {
        f"{k} / forward" for k in ("forward", "forward_fused", "floor", "gae", "gae_rows", "gae_k5")
    }
    assert all(v > 0 for v in result["seconds"].values())


def test_a_method_without_a_windowed_form_is_refused_by_name(monkeypatch):
    from dataclasses import replace

    from gae_utils import methods

    monkeypatch.setitem(methods.METHODS, "rollout", replace(methods.METHODS["rollout"], windows=None))
    with pytest.raises(ValueError, match="method 'rollout' has no windowed form .*use one of \\['gae'"):
        gu.explain(tiny_timm_swin(), images(64), method="rollout")


def test_a_headless_timm_swin_asks_for_a_callable_target_and_explains_one():
    torch.manual_seed(0)
    headless = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        embed_dim=8,
        depths=(2, 2),
        num_heads=(1, 2),
        img_size=64,
        window_size=4,
    ).eval()
    with pytest.raises(ValueError, match="num_classes=0.*Pass target=callable"):
        gu.explain(headless, images(64), target=0)
    exp = gu.explain(headless, images(64), target=lambda features: features.sum(dim=-1))
    assert exp.relevance["image"].shape == (2, 256) and torch.isfinite(exp.relevance["image"]).all()


def test_a_window_layout_that_does_not_fit_the_maps_is_refused():
    from dataclasses import replace

    from gae_utils.adapters.swin import TIMM_SWIN

    def wrong(model, x):  # every stage read as one window of the whole grid
        return [(grid, torch.arange(grid[0] * grid[1])[None]) for grid, _ in TIMM_SWIN.windows(model, x)]

    with pytest.raises(gu.AttentionCaptureError, match=r"has maps \(32, 16, 16\) but the adapter's windows give 2 x 1"):
        gu.explain(tiny_timm_swin(), images(64), adapter=replace(TIMM_SWIN, windows=wrong))


def test_a_float64_swin_is_explained_in_float64():
    model, x = tiny_timm_swin().double(), images(64).double()
    exp = gu.explain(model, x, target=TARGETS)
    assert exp.relevance["image"].dtype == torch.float64
    want = gu.explain(tiny_timm_swin(), images(64), target=TARGETS).relevance["image"]
    torch.testing.assert_close(exp.relevance["image"].float(), want, atol=1e-6, rtol=1e-4)
