"""Single-stream vision-language models (Hugging Face ViLT, VisualBERT): one joint modality, read per block."""

import pytest
import torch

import gae_utils as gu


def tiny_vilt(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.ViltConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
        num_labels=5,
    )
    return transformers.ViltForQuestionAnswering(config).eval()


def vilt_inputs(batch=3, words=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, words, dtype=torch.long)
    mask[0, -2:] = 0  # one padded question
    return {
        "input_ids": torch.randint(3, 40, (batch, words), generator=g),
        "attention_mask": mask,
        "token_type_ids": torch.zeros(batch, words, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=g),
        "pixel_mask": torch.ones(batch, 32, 32, dtype=torch.long),
    }


def tiny_visualbert(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.VisualBertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        visual_embedding_dim=8,
        max_position_embeddings=16,
        num_labels=5,
    )
    return transformers.VisualBertForQuestionAnswering(config).eval()


def visualbert_inputs(batch=3, words=6, regions=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, words, dtype=torch.long)
    mask[1, -1:] = 0
    return {
        "input_ids": torch.randint(3, 40, (batch, words), generator=g),
        "attention_mask": mask,
        "visual_embeds": torch.randn(batch, regions, 8, generator=g),
        "visual_attention_mask": torch.ones(batch, regions, dtype=torch.long),
    }


def reference_joint(model, x, target, attention_class, rows, seed=None):
    """One example at a time with retain_grad() and .backward(); Eq. 5-6 over the joint stream.

    ``rows[b]`` is the token the head classifies; returns the full ``R`` per example.
    """
    maps = []
    for b in range(x["input_ids"].shape[0]):
        kept = []

        def keep(module, args, output):
            output.retain_grad()
            kept.append(output)

        handles = [
            m.dropout.register_forward_hook(keep) for m in model.modules() if type(m).__name__ == attention_class
        ]
        one = {k: v[b : b + 1] for k, v in x.items()}
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                logits = model(**one).logits
        else:
            logits = model(**one).logits
        for h in handles:
            h.remove()
        logits[0, target[b]].backward()
        n = kept[0].shape[-1]
        r = torch.eye(n)
        for a in kept:
            cam = (a.grad * a).clamp(min=0).mean(dim=1)[0]
            r = r + cam @ r
        maps.append(r.detach())
        model.zero_grad()
    return maps


def test_visualbert_matches_reference_per_block():
    model = tiny_visualbert()
    x = visualbert_inputs()
    exp = gu.explain(model, x, target=torch.tensor([0, 3, 4]))
    words = x["input_ids"].shape[1]
    rows = gu.adapters.hf_visualbert.visualbert_answer_index(x)
    assert rows.tolist() == [4, 3, 4]
    maps = reference_joint(model, x, [0, 3, 4], "VisualBertSelfAttention", rows)
    for b, r in enumerate(maps):
        text = r[rows[b], :words].clone()
        text[rows[b]] = 0  # the explained token's own column
        torch.testing.assert_close(exp.relevance["text"][b], text, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(exp.relevance["image"][b], r[rows[b], words:], atol=1e-5, rtol=1e-4)


def test_vilt_matches_reference_in_raster_order():
    model = tiny_vilt()
    x = vilt_inputs()
    target = [1, 2, 0]
    exp = gu.explain(model, x, target=torch.tensor(target))
    words = x["input_ids"].shape[1]
    assert exp.relevance["image"].shape == (3, 16)
    assert exp.grid_relevance("image").shape == (3, 4, 4)
    # The reference runs each example alone, so it draws its own patch order: compare sorted values
    # of the image row (order-free) and the text row exactly; the raster order is checked below.
    maps = reference_joint(model, x, target, "ViltSelfAttention", [0, 0, 0], seed=gu.adapters.hf_vilt._VILT_SEED)
    for b, r in enumerate(maps):
        text = r[0, :words].clone()
        text[0] = 0
        torch.testing.assert_close(exp.relevance["text"][b], text, atol=1e-5, rtol=1e-4)
        image = r[0, words + 1 :]
        torch.testing.assert_close(exp.relevance["image"][b].sort().values, image.sort().values, atol=1e-5, rtol=1e-4)


def test_vilt_patch_order_is_undone():
    """A bright patch that decides the answer must be found at its place in the grid."""
    model = tiny_vilt()
    layout = gu.adapters.hf_vilt._vilt_layout(model, vilt_inputs())
    positions = layout.positions["image"]
    assert positions.shape == (3, 16)
    for b in range(3):
        assert sorted(positions[b].tolist()) == list(range(16))  # a permutation of the raster cells
    token_order = torch.arange(16.0).expand(3, 16)  # relevance = the raster index each token came from
    maps = {("joint", "joint"): torch.zeros(3, 6 + 17, 6 + 17)}
    maps[("joint", "joint")][:, 0, 6 + 1 :] = positions.float()
    out = layout.read(maps)["image"]
    torch.testing.assert_close(out, token_order)


def test_vilt_leaves_model_and_random_state_alone():
    model = tiny_vilt()
    x = vilt_inputs()
    state = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gu.explain(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_single_stream_bad_inputs():
    model = tiny_visualbert()
    x = visualbert_inputs()
    with pytest.raises(ValueError, match="visual_embedding_dim"):
        gu.explain(model, {**x, "visual_embeds": torch.randn(3, 5, 7)})
    with pytest.raises(TypeError, match="visual_embeds"):
        gu.explain(model, {"input_ids": x["input_ids"]})
    with pytest.raises(ValueError, match="empty text"):
        gu.explain(model, {**x, "attention_mask": torch.zeros_like(x["attention_mask"])})
    vilt = tiny_vilt()
    y = vilt_inputs()
    with pytest.raises(ValueError, match="one image per question"):
        gu.explain(vilt, {**y, "pixel_values": y["pixel_values"][:2]})
    with pytest.raises(ValueError, match="out of range"):
        gu.explain(vilt, y, target=5)


def test_visualbert_explanation_saves_and_loads(tmp_path):
    exp = gu.explain(tiny_visualbert(), visualbert_inputs())
    exp.save(tmp_path / "vb")
    back = gu.Explanation.load(tmp_path / "vb")
    torch.testing.assert_close(back.relevance["image"], exp.relevance["image"])
    torch.testing.assert_close(back.layout.weights["text"], exp.layout.weights["text"])


def test_vilt_explanation_keeps_its_patch_order_through_save_and_load(tmp_path):
    """ViLT's patch order is part of the layout: a loaded explanation reads its maps into the same
    raster order as the one it was saved from."""
    exp = gu.explain(tiny_vilt(), vilt_inputs())
    exp.save(tmp_path / "vilt")
    back = gu.Explanation.load(tmp_path / "vilt")
    assert torch.equal(back.layout.positions["image"], exp.layout.positions["image"])
    torch.testing.assert_close(back.layout.read(back.maps)["image"], exp.layout.read(exp.maps)["image"])
    torch.testing.assert_close(back.layout.read(back.maps)["image"], exp.relevance["image"])
