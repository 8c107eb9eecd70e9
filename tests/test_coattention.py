"""Two-stream co-attention (Hugging Face LXMERT): Eq. 6-11 with the simultaneous cross-modality update."""

import pytest
import torch

import gae_utils as gu


def tiny_lxmert(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LxmertConfig(
        vocab_size=30,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        l_layers=2,
        x_layers=2,
        r_layers=1,
        visual_feat_dim=8,
        visual_pos_dim=4,
        num_qa_labels=5,
    )
    return transformers.LxmertForQuestionAnswering(config).eval()


def inputs(batch=3, words=6, regions=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, 30, (batch, words), generator=g),
        "attention_mask": torch.ones(batch, words, dtype=torch.long),
        "visual_feats": torch.randn(batch, regions, 8, generator=g),
        "visual_pos": torch.rand(batch, regions, 4, generator=g),
    }


def reference(model, x, target):
    """One example at a time, retain_grad() and .backward(); the rules of docs/rules.md written out."""
    out_text, out_image = [], []
    for b in range(x["input_ids"].shape[0]):
        calls = []
        handles = []
        for name, module in model.named_modules():
            if type(module).__name__ == "LxmertAttention":

                def keep(mod, args, output, name=name):
                    output.retain_grad()
                    calls.append((name, output))

                handles.append(module.dropout.register_forward_hook(keep))
        one = {k: v[b : b + 1] for k, v in x.items()}
        logits = model(**one).question_answering_score
        for h in handles:
            h.remove()
        logits[0, target[b]].backward()
        nt, ni = one["input_ids"].shape[1], one["visual_feats"].shape[1]
        r = {"tt": torch.eye(nt), "ii": torch.eye(ni), "ti": torch.zeros(nt, ni), "it": torch.zeros(ni, nt)}

        def bar(a):
            grad = a.grad if a.grad is not None else torch.zeros_like(a)  # no gradient reached: dy/dA = 0
            return (grad * a).clamp(min=0).mean(dim=1)[0]

        def norm(m):
            hat = m - torch.eye(m.shape[0])
            sums = hat.sum(-1, keepdim=True)
            return torch.where(sums == 0, hat, hat / torch.where(sums == 0, torch.ones_like(sums), sums)) + torch.eye(
                m.shape[0]
            )

        def self_layer(s, o, a):
            r[s + s] = r[s + s] + a @ r[s + s]
            r[s + o] = r[s + o] + a @ r[s + o]

        i = 0
        while i < len(calls):
            name, a = calls[i]
            if "visual_attention" in name:  # text->image then image->text, both from the maps before the block
                a_ti, a_it = bar(a), bar(calls[i + 1][1])
                d_ti = norm(r["tt"]).T @ a_ti @ norm(r["ii"])
                d_tt = a_ti @ r["it"]
                d_it = norm(r["ii"]).T @ a_it @ norm(r["tt"])
                d_ii = a_it @ r["ti"]
                r["ti"], r["tt"], r["it"], r["ii"] = r["ti"] + d_ti, r["tt"] + d_tt, r["it"] + d_it, r["ii"] + d_ii
                i += 2
                continue
            if ".layer." in name or "lang_self_att" in name:
                self_layer("t", "i", bar(a))
            else:
                self_layer("i", "t", bar(a))
            i += 1
        text = r["tt"][0].clone()
        text[0] = 0  # the authors zero R[t, t][0, 0]
        out_text.append(text)
        out_image.append(r["ti"][0])
        model.zero_grad(set_to_none=True)
    return torch.stack(out_text), torch.stack(out_image)


def test_lxmert_matches_the_rules_written_out():
    model = tiny_lxmert()
    x = inputs()
    target = torch.tensor([0, 3, 4])
    exp = gu.explain(model, x, target=target)
    text, image = reference(model, x, target)
    assert exp.relevance["text"].shape == (3, 6) and exp.relevance["image"].shape == (3, 4)
    torch.testing.assert_close(exp.relevance["text"], text, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(exp.relevance["image"], image, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_lxmert_records_directions_groups_and_unreached_layers():
    model = tiny_lxmert()
    rec = gu.record(model, inputs(batch=2))
    kinds = [(layer.kind, layer.query, layer.key) for layer in rec.layers]
    assert kinds.count(("cross", "text", "image")) == 2 and kinds.count(("cross", "image", "text")) == 2
    cross = [layer for layer in rec.layers if layer.kind == "cross"]
    assert cross[0].group == cross[1].group != cross[2].group == cross[3].group
    # the answer reads the text stream: the last image->text attention and image self-attention do not reach it
    assert [layer.reached for layer in rec.layers[-4:]] == [True, False, True, False]


@pytest.mark.parametrize("method", ["gae_last_layer", "raw_attention", "attn_gradcam"])
def test_lxmert_baselines_read_both_modalities(method):
    exp = gu.explain(tiny_lxmert(), inputs(batch=2), method=method)
    assert exp.relevance["text"].shape == (2, 6) and exp.relevance["image"].shape == (2, 4)
    assert torch.isfinite(exp.relevance["image"]).all()


def test_rollout_through_cross_attention_uses_the_rules_on_mean_attention():
    rec = gu.record(tiny_lxmert(), inputs(batch=2))
    bars = [layer.attn_mean[:, None] for layer in rec.layers]  # (B, 1, Nq, Nk): no gradients
    expected = gu.propagate(rec.layers, bars)
    got = rec.explanation("rollout")
    torch.testing.assert_close(got.relevance["image"], expected[("text", "image")][:, 0, 0])


def test_ablation_without_normalisation_differs_only_with_cross_attention(vit):
    rec = gu.record(tiny_lxmert(), inputs(batch=2))
    plain, ablation = rec.explanation("gae"), rec.explanation("gae_no_norm")
    assert not torch.allclose(plain.relevance["image"], ablation.relevance["image"])
    unnormalised = gu.propagate(rec.layers, normalize=False)[("text", "image")][:, 0, 0]
    torch.testing.assert_close(ablation.relevance["image"], unnormalised)
    assert "gae_no_norm" not in gu.method_names() and "gae_no_norm" in gu.method_names(True)
    images = torch.rand(2, 3, 32, 32)
    rec_vit = gu.record(vit, images)
    torch.testing.assert_close(
        rec_vit.explanation("gae").relevance["image"], rec_vit.explanation("gae_no_norm").relevance["image"]
    )


def test_lxmert_bad_inputs():
    model = tiny_lxmert()
    bad = inputs(batch=2)
    bad["visual_pos"] = bad["visual_pos"][:, :3]
    with pytest.raises(ValueError, match="visual_feats"):
        gu.explain(model, bad)
    with pytest.raises(TypeError, match="visual_feats"):
        gu.explain(model, {"input_ids": bad["input_ids"]})


def test_regions_are_grid_windows_with_their_boxes_and_labels():
    from gae_workbook.exploration.views import region_heatmap
    from shapesworld.inputs import normalize_pixels, region_features
    from shapesworld.scenes import ShapesWorld
    from shapesworld.targets import region_labels

    images = torch.rand(2, 3, 64, 64)
    feats, boxes = region_features(images)
    assert feats.shape == (2, 16, 768) and boxes.shape == (2, 16, 4)
    # region 5 is the cell at row 1, column 1 (pixels 16..31)
    torch.testing.assert_close(feats[1, 5], normalize_pixels(images)[1, :, 16:32, 16:32].reshape(-1))
    torch.testing.assert_close(boxes[0, 5], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    batch = ShapesWorld(seed=3).batch(4)
    labels = region_labels(batch.masks)  # (4, 16)
    for b, scene in enumerate(batch.scenes):
        present = {o.label for o in scene.objects}
        assert set(labels[b].tolist()) <= present | {16} and set(labels[b].tolist()) & present
    heat = region_heatmap(torch.arange(16.0).expand(2, 16), 64)
    assert heat.shape == (2, 64, 64) and heat[0, 0, 0] == 0 and heat[0, -1, -1] == 1


def test_short_vqa_training_run_lowers_the_loss_and_is_explainable(tmp_path):
    from gae_workbook.models import zoo
    from gae_workbook.models.train import train_shapes_vqa
    from shapesworld.inputs import vqa_inputs
    from shapesworld.language import Vocabulary, sample_question
    from shapesworld.scenes import ShapesWorld

    model, card = train_shapes_vqa(
        steps=25, batch_size=32, train_scenes=400, warmup=5, lr=3e-3, eval_n=50, out=tmp_path, progress=False
    )
    assert card.kwargs["visual_feat_dim"] == 768 and "region_loss" in card.training
    assert card.training["loss_last_10"] < card.training["loss_first_10"]
    assert set(card.training["heldout"]) >= {"accuracy", "accuracy_colour", "accuracy_count"}
    loaded = zoo.load("shapes-vqa", directory=tmp_path)
    batch = ShapesWorld(seed=4).batch(3)
    import numpy as np

    qs = [sample_question(s, np.random.default_rng(0)) for s in batch.scenes]
    exp = gu.explain(loaded, vqa_inputs(batch.images, qs, Vocabulary.questions()))
    assert exp.relevance["image"].shape == (3, 16) and exp.relevance["text"].shape == (3, 10)


def test_flow_steps_merge_a_co_attention_block_and_render():
    import matplotlib.pyplot as plt

    from gae_workbook.exploration import views, widgets

    model = tiny_lxmert()
    x = inputs(batch=2, regions=4)
    rec = gu.record(model, x, target=torch.tensor([[0, 1], [2, 3]]), keep_heads=True)
    steps = views.flow_steps(rec)
    assert len(steps) == len(rec.history())  # one history entry per step
    assert sum("cross text->image + " in s and "cross image->text" in s for s in steps) == 2
    tokens = [[f"w{i}" for i in range(6)]] * 2
    fig = widgets.render_flow(rec, index=1, target=1, steps=[0, -1], tokens=tokens[1])
    assert len(fig.axes) == 8
    plt.close(fig)
    # the explained row read by the layout is the [CLS] row of the final R[t, i]
    row = views.stream_row(rec, 1, 1, -1, ("text", "image"), 0)
    torch.testing.assert_close(row, rec.explanation("gae").relevance["image"][1, 1])
    images = torch.rand(2, 3, 16, 16)
    for pair in views.PAIRS:
        fig = widgets.render_stream_row(rec, images, tokens, 0, 0, -1, pair, 1)
        plt.close(fig)
    cross = next(i for i, layer in enumerate(rec.layers) if layer.kind == "cross")
    head = views.stream_row(rec, 0, 1, cross, ("text", "image"), 2, view="head", head=1)
    layer = rec.layers[cross]
    torch.testing.assert_close(head, (layer.grad[0, 1, 1] * layer.attn[0, 1]).clamp(min=0)[2])
    with pytest.raises(ValueError, match="attends text->image, not image->image"):
        views.stream_row(rec, 0, 0, cross, ("image", "image"), 0, view="head")
    with pytest.raises(ValueError, match="out of range"):
        views.stream_row(rec, 0, 0, -1, ("text", "text"), 6)
