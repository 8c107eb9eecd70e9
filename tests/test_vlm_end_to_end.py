"""LLaVA explained end to end: the answer's row over the image tokens carried through the projector's
token map and the vision tower's own GAE map to the input patch grid (``relevance["pixels"]``),
against an independent reference written out here: the tower and the language model run by hand
with ``output_attentions``, Eq. 5-6 by per-example loops, the composition ``r_img @ P @ Rbar_v``
(docs/rules.md, "End to end through a vision tower") by hand."""

import pytest
import torch

import gae_utils as gu

transformers = pytest.importorskip("transformers")

IMAGE = 63  # the image placeholder token id of the tiny configs
TEXT = dict(
    model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
)  # fmt: skip
VISION = dict(
    model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
    num_hidden_layers=3, num_attention_heads=4,
)  # fmt: skip


def tiny_llava(strategy="default", feature_layer=-2, attn="sdpa", seed=0, tower="clip_vision_model"):
    """A random LLaVA: CLIP tower (4 x 4 patches + CLS, 3 layers; SigLIP: no CLS), Llama language
    model (3 layers)."""
    torch.manual_seed(seed)
    config = transformers.LlavaConfig(
        vision_config=dict(VISION, model_type=tower), text_config=TEXT, image_token_id=IMAGE,
        vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer,
    )  # fmt: skip
    config._attn_implementation = attn
    return transformers.LlavaForConditionalGeneration(config).eval()


def left_padded(n_image: int = 16):
    """Two prompts of different lengths, left padded, one 32 x 32 image each."""
    rows = [[1, 5, 6, *[IMAGE] * n_image, 7, 8, 9], [1, *[IMAGE] * n_image, 30]]
    length = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = torch.tensor(p), 1
    pixels = torch.rand(len(rows), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return rows, {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def gae(attentions, grads):
    """Eq. 5-6 for one example: ``R = I``, then ``R += mean_h (dA * A)^+ @ R`` layer by layer."""
    n = attentions[0].shape[-1]
    relevancy = torch.eye(n)
    for attn, grad in zip(attentions, grads):
        attn_bar = torch.zeros(n, n)
        for h in range(attn.shape[1]):
            attn_bar += (grad[0, h] * attn[0, h]).clamp(min=0) / attn.shape[1]
        relevancy = relevancy + attn_bar @ relevancy
    return relevancy


def reference(model, prompt, pixels, token, normalize=True):
    """One unpadded example run by hand: tower, the projector on the layer it reads, image features
    placed at the image tokens, the language model; gradients of the next token's logit with respect
    to every attention map (tower layers up to the one read, language model layers)."""
    inner, config = model.model, model.config
    tower = inner.vision_tower(pixels[None], output_attentions=True, output_hidden_states=True)
    read = config.vision_feature_layer % len(tower.hidden_states)  # hidden state the projector reads
    drop = 1 if config.vision_feature_select_strategy == "default" else 0
    features = inner.multi_modal_projector(tower.hidden_states[read][:, drop:])  # (1, N_img, D)
    ids = torch.tensor([prompt])
    is_image = ids[0] == IMAGE
    embeds = inner.get_input_embeddings()(ids).clone()
    embeds[0, is_image] = features[0]
    out = inner.language_model(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    logit = model.lm_head(out.last_hidden_state[0, -1])[token]
    tower_maps = tower.attentions[:read]  # layer i produces hidden state i + 1
    grads = torch.autograd.grad(logit, [*out.attentions, *tower_maps])
    r_text = gae(out.attentions, grads[: len(out.attentions)])
    r_tower = gae(tower_maps, grads[len(out.attentions) :])
    row_image = r_text[-1, is_image].detach()  # the answer's row over the image tokens
    n_v = r_tower.shape[0]
    if normalize:  # Eq. 8-9: Rbar = (R - I) / rowsum(R - I) + I, zero rows kept as I
        residual = r_tower - torch.eye(n_v)
        sums = residual.sum(-1, keepdim=True)
        r_tower = residual / torch.where(sums == 0, torch.ones_like(sums), sums) + torch.eye(n_v)
    carried = torch.zeros(n_v)
    for m in range(row_image.shape[0]):  # P: image token m reads tower token m + drop
        carried[m + drop] += row_image[m]
    prefix = n_v - 16  # CLIP's CLS; SigLIP has none
    return (carried @ r_tower.detach())[prefix:], row_image[len(row_image) - 16 :]


def snapshot(model):
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [c._attn_implementation_internal for c in configs],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        sorted(AttentionInterface._global_mapping), sorted(AttentionMaskInterface._global_mapping),
    )  # fmt: skip


def assert_same(before, after):
    params, *rest = before
    assert params.keys() == after[0].keys()
    assert all(torch.equal(params[k], after[0][k]) for k in params)
    assert rest == list(after[1:])


def explained_three_ways(model, x, targets):
    """GAE (verified against the stock model), its rows (``maps=False``) and ``gae_no_norm`` of
    ``targets`` ``(B, K)``, with the model checked unchanged by the three explanations."""
    with torch.no_grad():
        model(**x)  # transformers installs its own output-capturing hooks on the first call
    before = snapshot(model)
    exp = gu.explain(model, x, target=targets, verify=True)
    rows_only = gu.explain(model, x, target=targets, maps=False)
    no_norm = gu.explain(model, x, target=targets, method="gae_no_norm")
    assert_same(before, snapshot(model))
    return exp, rows_only, no_norm


@pytest.mark.parametrize(
    "tower, strategy, n_image",
    [("clip_vision_model", "default", 16), ("clip_vision_model", "full", 17), ("siglip_vision_model", "full", 16)],
)
def test_pixels_match_an_independent_reference_batched_left_padded_two_targets(tower, strategy, n_image):
    model = tiny_llava(strategy, tower=tower)
    rows, x = left_padded(n_image)
    targets = torch.tensor([[3, 40], [11, 62]])
    exp, rows_only, no_norm = explained_three_ways(model, x, targets)
    assert exp.relevance["pixels"].shape == (2, 2, 16)
    assert exp.grid_relevance("pixels").shape == (2, 2, 4, 4)
    model.set_attn_implementation("eager")  # the reference reads output_attentions
    for b, prompt in enumerate(rows):
        for k in range(2):
            token = int(targets[b, k])
            pixels, image = reference(model, prompt, x["pixel_values"][b], token)
            torch.testing.assert_close(exp.relevance["pixels"][b, k], pixels, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(exp.relevance["image"][b, k], image, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(rows_only.relevance["pixels"][b, k], pixels, rtol=1e-5, atol=1e-5)
            plain, _ = reference(model, prompt, x["pixel_values"][b], token, normalize=False)
            torch.testing.assert_close(no_norm.relevance["pixels"][b, k], plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(exp.relevance["pixels"], no_norm.relevance["pixels"])


def test_only_the_tower_layers_up_to_the_one_read_are_recorded():
    """vision_feature_layer=-2: the last tower layer runs but feeds nothing the answer reads, so it is
    not recorded (GAE would give it Abar = 0; raw attention and rollout would read it)."""
    _, x = left_padded()
    for feature_layer, n_read in ((-2, 2), (-1, 3), (1, 1)):
        rec = gu.record(tiny_llava(feature_layer=feature_layer), x, target=torch.tensor([[3], [11]]))
        tower = [layer for layer in rec.layers if layer.query == "pixels"]
        assert [layer.name.split(".")[-2] for layer in tower] == [str(i) for i in range(n_read)]
        assert all(layer.reached for layer in tower)
    for method in gu.method_names(ablations=True):  # every method reads the pixels
        assert rec.explanation(method).relevance["pixels"].shape == (2, 1, 16)  # K = 1 asked
    from gae_utils.adapters.hf_vlm import end_to_end_reason

    assert "reads the tower's embeddings" in end_to_end_reason(tiny_llava(feature_layer=0))


def test_pixels_draw_as_heatmaps_and_figures():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model = tiny_llava()
    _, x = left_padded()
    exp = gu.explain(model, x)
    heat = exp.heatmap(32, name="pixels")
    assert heat.shape == (2, 32, 32) and heat.min() == 0 and heat.max() == 1
    fig = exp.plot(x["pixel_values"], name="pixels")
    assert len(fig.axes) >= 2  # two panels (and the colour bar)


def test_llava_inputs_whose_image_tokens_do_not_match_the_tower_are_refused():
    model = tiny_llava()
    _, x = left_padded()
    fewer = dict(x, input_ids=x["input_ids"][:, 1:], attention_mask=x["attention_mask"][:, 1:])
    fewer["input_ids"] = fewer["input_ids"].where(fewer["input_ids"] != IMAGE, 5)
    fewer["input_ids"][:, -17:-1] = IMAGE  # 16 tokens, but the "full" tower gives 17
    with pytest.raises(ValueError, match="LLaVA reads 17 image tokens per image"):
        gu.explain(tiny_llava("full"), fewer)
    with pytest.raises(ValueError, match="2 images for 1 examples"):
        gu.explain(model, {k: v[:1] if k != "pixel_values" else v for k, v in x.items()})


def test_a_projector_reading_several_tower_layers_keeps_the_image_token_map_only():
    model = tiny_llava(feature_layer=[-2, -1])
    _, x = left_padded()
    exp = gu.explain(model, x)
    assert set(exp.relevance) == {"text", "image"}
    with pytest.raises(KeyError, match="needs one tower layer"):
        exp.grid_relevance("pixels")


@pytest.mark.parametrize("family", ["internvl", "aya_vision"])
def test_other_families_keep_the_image_token_map_and_say_why_pixels_are_absent(family):
    from gae_workbook.evaluation.probe import _fit_vlm_inputs, tiny_model

    model = tiny_model(family, "vlm")  # pixel shuffle + MLP projectors not carried end to end
    x = _fit_vlm_inputs(model)
    exp = gu.explain(model, x)
    assert set(exp.relevance) == {"text", "image"}
    assert gu.find_adapter(model).name == "hf-vlm"
    for ask in (lambda: exp.grid_relevance("pixels"), lambda: exp.heatmap(name="pixels")):
        with pytest.raises(KeyError, match="only LLaVA's one-token-per-patch projector"):
            ask()
    with pytest.raises(KeyError, match="Use relevance\\['image'\\]"):
        exp.plot(name="pixels")


def test_a_through_readout_needs_its_rule():
    from gae_utils.layout import Readout, Segment, TokenLayout

    layout = TokenLayout(
        (Segment("pixels", 2, 1, (1, 1)), Segment("text", 3)),
        (Readout("pixels", "text", "pixels", (2,), through="text"),),
        token_maps={"pixels": torch.zeros(1, 3, 2)},
    )
    maps = {("text", "text"): torch.eye(3).expand(1, 1, 3, 3), ("pixels", "pixels"): torch.eye(2).expand(1, 1, 2, 2)}
    with pytest.raises(ValueError, match="carry=gae_utils.rules.carry_through_tower"):
        layout.read(maps)


def test_a_tower_other_than_one_fixed_grid_per_image_keeps_the_image_token_map(monkeypatch):
    from gae_utils.adapters import vlm_tower
    from gae_utils.adapters.hf_vlm import end_to_end_reason

    model = tiny_llava("full", tower="siglip_vision_model")
    assert end_to_end_reason(model) is None
    monkeypatch.setattr(vlm_tower, "TOWERS", ("clip_vision_model",))  # as if SigLIP were Pixtral
    assert "siglip_vision_model) is not one fixed patch grid" in end_to_end_reason(model)
    exp = gu.explain(model, left_padded()[1])
    assert set(exp.relevance) == {"text", "image"}
    with pytest.raises(KeyError, match="not one fixed patch grid"):
        exp.heatmap(name="pixels")


def test_an_end_to_end_explanation_saves_and_loads(tmp_path):
    exp = gu.explain(tiny_llava(), left_padded()[1], target=torch.tensor([[3, 40], [11, 62]]))
    exp.save(tmp_path / "llava")
    loaded = gu.Explanation.load(tmp_path / "llava")
    assert loaded == exp and loaded.layout.token_maps["pixels"].shape == (2, 22, 17)
    torch.testing.assert_close(loaded.grid_relevance("pixels"), exp.grid_relevance("pixels"))
    from gae_workbook.evaluation.probe import _fit_vlm_inputs, tiny_model

    internvl = tiny_model("internvl", "vlm")
    gu.explain(internvl, _fit_vlm_inputs(internvl)).save(tmp_path / "internvl")
    with pytest.raises(KeyError, match="only LLaVA's"):  # the reason survives the round trip
        gu.Explanation.load(tmp_path / "internvl").grid_relevance("pixels")


def test_start_layer_counts_the_tower_layers_first():
    """Forward order: the 2 tower layers read (vision_feature_layer=-2), then the language model's 3.
    Skipping the tower leaves R_v = I, so the pixels are the image-token map itself."""
    rec = gu.record(tiny_llava(), left_padded()[1], target=torch.tensor([[3], [11]]))
    assert [layer.query for layer in rec.layers] == ["pixels"] * 2 + ["text"] * 3
    full, no_tower = rec.explanation(), rec.explanation(start_layer=2)
    torch.testing.assert_close(no_tower.relevance["image"], full.relevance["image"])
    torch.testing.assert_close(no_tower.relevance["pixels"], full.relevance["image"])
    assert not torch.allclose(full.relevance["pixels"], full.relevance["image"])
    rows = rec.explanation(start_layer=2, maps=False)
    torch.testing.assert_close(rows.relevance["pixels"], no_tower.relevance["pixels"])
