"""Encoder-decoders: every generated token explained at once, against a per-token .backward() reference."""

import pytest
import torch

import gae_utils as gu
from gae_utils.adapters import find_adapter
from gae_utils.generation import explain_generation, generation_steps, record_generation
from gae_workbook.evaluate import alignment_hits
from gae_workbook.exploration import views
from gae_workbook.models import zoo
from gae_workbook.models.translator import TransformerTranslator, greedy_decode

V = 30


# Marian and BART share their configuration keys: the same tiny size for both
BART_FAMILY = dict(
    vocab_size=V,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_position_embeddings=32,
    pad_token_id=0,
    eos_token_id=5,
    decoder_start_token_id=4,
)


def tiny_marian(seed=0, attn="eager"):
    import transformers

    torch.manual_seed(seed)
    config = transformers.MarianConfig(**BART_FAMILY, attn_implementation=attn)
    return transformers.MarianMTModel(config).eval()


def tiny_bart(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BartConfig(**BART_FAMILY, bos_token_id=4, attn_implementation="eager")
    return transformers.BartForConditionalGeneration(config).eval()


def tiny_t5(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=V,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=5,
        decoder_start_token_id=0,
        attn_implementation="eager",
    )
    return transformers.T5ForConditionalGeneration(config).eval()


def tiny_torch(seed=0):
    torch.manual_seed(seed)
    return TransformerTranslator(V, V, d_model=16, nhead=2, dim_feedforward=32, eos_token_id=5).eval()


HF_FAMILIES = {"marian": tiny_marian, "bart": tiny_bart, "t5": tiny_t5}
FAMILIES = {**HF_FAMILIES, "torch": tiny_torch}


def batch(seed=1):
    """Three sources of different lengths (right padding) and generations padded after their EOS."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    ids[2, 3:], mask[2, 3:] = 0, 0
    generated = torch.randint(6, V, (3, 6), generator=g)
    generated[:, 0] = 4
    generated[2, 3], generated[2, 4:] = 5, 0  # finished early: EOS then padding
    return {"input_ids": ids, "attention_mask": mask}, generated


def _normalise(r):
    """Eq. 8-9 written out: Rbar = (R - I) / rowsum(R - I) + I, rows summing to 0 stay I."""
    eye = torch.eye(r.shape[-1])
    hat = r - eye
    s = hat.sum(-1, keepdim=True)
    return hat / torch.where(s == 0, torch.ones_like(s), s) + eye


def reference_rows(model, inputs, generated):
    """One example and one generated token at a time: output_attentions, retain_grad(), .backward(),
    then Eq. 5-11 in loops. Returns source rows (B, T, S) and prefix rows (B, T, T)."""
    n_steps = generated.shape[1] - 1
    src_all, tgt_all = [], []
    for b in range(generated.shape[0]):
        src_rows, tgt_rows = [], []
        for t in range(n_steps):
            out = model(
                input_ids=inputs["input_ids"][b : b + 1],
                attention_mask=inputs["attention_mask"][b : b + 1],
                decoder_input_ids=generated[b : b + 1, :-1],
                output_attentions=True,
                use_cache=False,
            )
            maps = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
            for a in maps:
                a.retain_grad()
            model.zero_grad()
            out.logits[0, t, generated[b, t + 1]].backward()

            def cam(a):
                return (a.grad * a).clamp(min=0).mean(dim=1)[0]  # Eq. 5

            s, n = maps[0].shape[-1], n_steps
            r_ss = torch.eye(s)
            for a in out.encoder_attentions:
                r_ss = r_ss + cam(a) @ r_ss  # Eq. 6
            r_tt, r_ts = torch.eye(n), torch.zeros(n, s)
            for self_a, cross_a in zip(out.decoder_attentions, out.cross_attentions):
                c = cam(self_a)
                r_tt, r_ts = r_tt + c @ r_tt, r_ts + c @ r_ts  # Eq. 6, 7
                c = cam(cross_a)
                r_ts = r_ts + _normalise(r_tt).T @ c @ _normalise(r_ss)  # Eq. 10; Eq. 11 adds c @ R[s, t] = 0
            src_rows.append(r_ts[t].detach())
            tgt_rows.append(r_tt[t].detach())
        src_all.append(torch.stack(src_rows))
        tgt_all.append(torch.stack(tgt_rows))
    model.zero_grad(set_to_none=True)
    return torch.stack(src_all), torch.stack(tgt_all)


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_every_token_matches_per_token_backward_reference(family):
    model = HF_FAMILIES[family]()
    inputs, generated = batch()
    exp = explain_generation(model, inputs, generated)
    src, tgt = reference_rows(model, inputs, generated)
    assert exp.relevance["source"].shape == (3, 5, 7) and exp.relevance["target"].shape == (3, 5, 5)
    torch.testing.assert_close(exp.relevance["source"], src, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(exp.relevance["target"], tgt, rtol=1e-4, atol=1e-6)
    assert exp.relevance["source"].abs().sum() > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rows_are_per_token_causal_and_ignore_padding(family):
    model = FAMILIES[family]()
    inputs, generated = batch()
    exp = explain_generation(model, inputs, generated)
    src, tgt = exp.relevance["source"], exp.relevance["target"]
    for t in range(5):
        assert torch.all(tgt[:, t, t + 1 :] == 0)  # no relevance on tokens generated later
    assert torch.all(src[1, :, 5:] == 0) and torch.all(src[2, :, 3:] == 0)  # padded source tokens
    assert not torch.allclose(src[:, 0], src[:, -1])  # each token has its own row
    assert exp.target.tolist() == generated[:, 1:].tolist()
    assert exp.extra["real_steps"] == [5, 5, 3]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_vectorised_backward_equals_one_backward_per_token(family):
    model = FAMILIES[family]()
    inputs, generated = batch()
    rec = record_generation(model, inputs, generated)
    for t in (0, 2, 4):
        one = record_generation(model, inputs, generated, steps=[t])  # one target: an ordinary backward
        for all_layer, one_layer in zip(rec.layers, one.layers):
            torch.testing.assert_close(all_layer.attn_bar[:, t], one_layer.attn_bar[:, 0], rtol=1e-5, atol=1e-7)
        exp = one.explanation("gae")
        torch.testing.assert_close(exp.relevance["source"][:, 0], rec.explanation("gae").relevance["source"][:, t])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooked_logits_equal_the_stock_model(family):
    model = FAMILIES[family]()
    inputs, generated = batch()
    rec = record_generation(model, inputs, generated)
    adapter = find_adapter(model)
    with torch.no_grad():
        stock = adapter.logits(adapter.call(model, {**inputs, "decoder_input_ids": generated[:, :-1]}))
    torch.testing.assert_close(rec.logits, stock, rtol=1e-5, atol=1e-5)
    assert len(rec.layers) == 2 + 2 * 2  # encoder self, then decoder self + cross per layer
    assert [(r.query, r.key) for r in rec.layers[2:4]] == [("target", "target"), ("target", "source")]


@pytest.mark.parametrize("method", ["gae_last_layer", "raw_attention", "attn_gradcam"])
def test_baselines_read_per_token_rows(method):
    model = tiny_marian()
    inputs, generated = batch()
    rec = record_generation(model, inputs, generated)
    exp = rec.explanation(method)
    assert exp.relevance["source"].shape == (3, 5, 7)
    if method == "raw_attention":  # last cross-attention averaged over heads, row t
        cross = [r for r in rec.layers if r.kind == "cross"][-1]
        torch.testing.assert_close(exp.relevance["source"], cross.attn_mean)


def test_rollout_goes_through_cross_attention_on_mean_attention():
    model = tiny_marian()
    inputs, generated = batch()
    rec = record_generation(model, inputs, generated)
    k = rec.scores.shape[1]
    bars = [layer.attn_mean[:, None].expand(-1, k, -1, -1) for layer in rec.layers]  # (B, K, Nq, Nk): no gradients
    maps = gu.propagate(rec.layers, bars)
    exp = rec.explanation("rollout")
    assert exp.relevance["source"].shape == (3, 5, 7)
    torch.testing.assert_close(exp.relevance["source"], rec.layout.read(maps)["source"])


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        getattr(getattr(model, "config", None), "_attn_implementation", None),
        torch.backends.mha.get_fastpath_enabled(),
    )


def _assert_same(before, after):
    params, training, grads, hooks, attn, fastpath = before
    assert all(torch.equal(params[k], v) for k, v in after[0].items())
    assert (training, grads, hooks, attn, fastpath) == after[1:]


@pytest.mark.parametrize("family", ["marian-sdpa", "torch", "t5"])
def test_model_unchanged_after_explain_and_after_an_exception(family):
    model = tiny_marian(attn="sdpa") if family == "marian-sdpa" else FAMILIES[family]()
    model.train()  # explained in eval mode, training restored
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    inputs, generated = batch()
    before = _state(model)
    explain_generation(model, inputs, generated)
    _assert_same(before, _state(model))
    assert all(p.grad is None for p in model.parameters())
    for position in (2, -1):  # a decoder input (the forward raises) or only a label (raises after it)
        bad = generated.clone()
        bad[0, position] = 10_000  # not a token of the model
        with pytest.raises((ValueError, IndexError)):
            explain_generation(model, inputs, bad)
        _assert_same(before, _state(model))


def test_frozen_model_is_explained_identically():
    model = tiny_torch()
    inputs, generated = batch()
    free = explain_generation(model, inputs, generated).relevance["source"]
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = explain_generation(model, inputs, generated).relevance["source"]
    torch.testing.assert_close(free, frozen)


def test_bad_inputs_name_the_fix():
    model = tiny_marian()
    inputs, generated = batch()
    empty = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"].clone()}
    empty["attention_mask"][0] = 0
    with pytest.raises(ValueError, match="empty text"):
        explain_generation(model, empty, generated)
    with pytest.raises(ValueError, match="out of range"):
        explain_generation(model, inputs, generated, steps=[5])
    with pytest.raises(ValueError, match="nothing was generated"):
        explain_generation(model, inputs, generated[:, :1])
    with pytest.raises(ValueError, match="batch dimension"):
        explain_generation(model, inputs, generated[0])
    with pytest.raises(TypeError, match="token ids"):
        explain_generation(model, inputs, generated.float())
    with pytest.raises(ValueError, match="explain_generation"):
        gu.explain(model, {**inputs, "decoder_input_ids": generated[:, :-1]})
    with pytest.raises(ValueError, match="neither an encoder-decoder nor a causal LM"):
        from conftest import tiny_timm_vit

        explain_generation(tiny_timm_vit(), inputs, generated)


def test_torch_model_outside_the_call_convention_is_refused():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_torch()

        def forward(self, src, tgt):
            return self.inner(src, tgt)

    inputs, generated = batch()
    with pytest.raises(gu.UnsupportedModelError, match="call convention"):
        explain_generation(Wrapped(), inputs, generated)


def test_generation_steps_and_greedy_decode():
    generated = torch.tensor([[4, 7, 5, 0], [4, 7, 8, 9]])
    assert generation_steps(generated, eos_id=5).tolist() == [[True, True, False], [True, True, True]]
    assert generation_steps(generated, pad_id=0).tolist() == [[True, True, False], [True, True, True]]
    model = tiny_marian()
    inputs, _ = batch()
    out = greedy_decode(model, inputs, start_id=4, eos_id=5, pad_id=0, max_new_tokens=4)
    assert out.shape[0] == 3 and out.shape[1] <= 5 and torch.all(out[:, 0] == 4)
    hf = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=1, min_length=0)
    width = min(out.shape[1], hf.shape[1]) - 1  # Marian's generate forces config.forced_eos_token_id last
    assert torch.equal(out[:, :width], hf[:, :width])


def test_alignment_hits_by_hand():
    from shapesworld.language import Caption, translate

    words = "a red circle left of a blue square".split()
    tr = translate(Caption(" ".join(words), tuple(words), (0, 1), (0, 0, 0, None, None, 1, 1, 1)))
    assert tr.target[2] == "oskev" and tr.alignment[2] == (3, 4)
    rel = torch.zeros(1, 6, 10)  # 5 words + EOS step, columns: 8 words, EOS, pad
    for t, aligned in enumerate(tr.alignment):
        rel[0, t, aligned[-1]] = 1.0
    rel[0, 0, 8] = 5.0  # the EOS column is not a word: ignored
    assert alignment_hits(rel, [tr]).tolist() == [True] * 5
    rel[0, 1, 0] = 9.0  # "dwex" (red) pointed at "a"
    assert alignment_hits(rel, [tr]).tolist() == [True, False, True, True, True]


def test_explanation_with_target_rows_saves_and_loads(tmp_path):
    model = tiny_marian()
    inputs, generated = batch()
    exp = explain_generation(model, inputs, generated)
    exp.save(tmp_path / "gen")
    back = gu.Explanation.load(tmp_path / "gen")
    torch.testing.assert_close(back.relevance["source"], exp.relevance["source"])
    torch.testing.assert_close(back.layout.read(back.maps)["source"], exp.relevance["source"])
    assert back.extra == exp.extra


# ----------------------------------------------------------------------------- shapes-translate


def test_shapes_translate_card_number_is_recomputed_from_the_checkpoint():
    from gae_workbook.models.train import HELDOUT_SEED, translation_accuracy
    from shapesworld.scenes import ShapesWorld

    model = zoo.load("shapes-translate")
    heldout = model.card.training["heldout"]
    assert heldout["exact_match"] >= 0.95
    again = translation_accuracy(model, ShapesWorld(seed=HELDOUT_SEED), n=heldout["n"])
    assert again["exact_match"] == pytest.approx(heldout["exact_match"], abs=1e-9)
    assert find_adapter(model).name == "hf-marian"  # the shipped model exercises a real adapter


def test_translation_trainer_smoke(tmp_path):
    from gae_workbook.models.train import train_shapes_translate

    model, card = train_shapes_translate(steps=3, batch_size=8, train_scenes=5, eval_n=4, out=tmp_path, progress=False)
    assert (tmp_path / "shapes-translate.safetensors").exists()
    back = zoo.load("shapes-translate", directory=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert set(card.training["heldout"]) >= {"exact_match", "n", "unseen_exact_match"}


def test_evaluate_translate_reports_every_method():
    from gae_workbook.evaluate import evaluate_translate, format_table, main

    model = zoo.load("shapes-translate")
    results = evaluate_translate(model, n=12, batch_size=6, progress=False)
    assert set(results) == {"gae", "gae_last_layer", "raw_attention", "rollout", "attn_gradcam", "random"}
    assert all(0 <= r["alignment_accuracy"] <= 1 and r["pairs"] > 0 for r in results.values())
    assert results["raw_attention"]["alignment_accuracy"] > results["random"]["alignment_accuracy"]
    assert "alignment_accuracy" in format_table(results)
    out = main(["--model", "shapes-translate", "--n", "6", "--batch-size", "6", "--no-progress"])
    assert set(out) == set(results)


def test_translation_widgets_render_pure_figures():
    import matplotlib.pyplot as plt

    from gae_workbook.exploration import widgets

    model = tiny_marian()
    inputs, generated = batch()
    rec = record_generation(model, {k: v[:1] for k, v in inputs.items()}, generated[:1], keep_heads=True)
    src, tgt = [f"s{i}" for i in range(7)], [f"t{i}" for i in range(5)]
    for method in ("gae", "raw_attention", "attn_gradcam"):
        plt.close(widgets.render_translation(rec, src, tgt, method=method, step=3))
    fig = widgets.render_translation_layer(rec, src, tgt, step=1, layer=0, head=1)
    assert len(fig.axes) >= 2
    plt.close(fig)
    torch.testing.assert_close(views.cross_attention_matrix(rec, 0, -1, None), rec.layers[-1].attn_mean[0])
    with pytest.raises(ValueError, match="out of range"):
        widgets.render_translation(rec, src, tgt, step=5)
    with pytest.raises(ValueError, match="out of range"):
        views.cross_attention_matrix(rec, 0, 0, head=9)
    box = widgets.translation_explorer(model, {k: v[:1] for k, v in inputs.items()}, generated[:1], src, tgt)
    controls = [w for child in box.children for w in getattr(child, "children", (child,))]
    head = next(w for w in controls if getattr(w, "description", "") == "head")
    assert head.value == widgets.MEAN_HEAD and head.label == "mean"  # selected, not blank
    head.value = 0
    head.value = widgets.MEAN_HEAD
    assert head.label == "mean"
    plt.close("all")


def test_seq2seq_benchmark_runs_on_a_tiny_marian():
    from gae_workbook.tools import bench

    result = bench.run_seq2seq_benchmark(length=6, repeats=1, small=True)
    assert set(result["ratios"]) >= {"explain_all / forward", "per_token_backward / explain_all"}
    assert all(v > 0 for v in result["seconds"].values())


def test_pretrained_marian_fails_fast_offline_or_loads():
    import time

    from gae_workbook.models.zoo import load_marian

    started = time.perf_counter()
    try:
        model, tokenizer = load_marian()
    except zoo.PretrainedUnavailableError as err:
        assert "shapes-translate" in str(err)
        assert time.perf_counter() - started < 30
    else:
        assert find_adapter(model).name == "hf-marian"


def test_log_prob_score_explains_the_log_softmax():
    model = tiny_marian()
    inputs, generated = batch()
    rec = record_generation(model, inputs, generated, score="log_prob")
    expected = rec.logits.log_softmax(-1).gather(-1, generated[:, 1:, None])[..., 0]  # logits stay raw
    torch.testing.assert_close(rec.scores, expected)
    logit = explain_generation(model, inputs, generated).relevance["source"]
    assert not torch.allclose(rec.explanation("gae").relevance["source"], logit)
    with pytest.raises(ValueError, match="unknown score"):
        explain_generation(model, inputs, generated, score="prob")


def _manual_mha(mha, query, memory, mask):
    """torch.nn.MultiheadAttention written out (batch_first, no dropout); returns output and (H, Nq, Nk) A."""
    d, h = mha.embed_dim, mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.split(d)
    b_q, b_k, b_v = mha.in_proj_bias.split(d)

    def heads(x):
        return x.reshape(x.shape[0], h, d // h).transpose(0, 1)  # (H, N, d/h)

    q, k, v = heads(query @ w_q.T + b_q), heads(memory @ w_k.T + b_k), heads(memory @ w_v.T + b_v)
    scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5 + mask  # (H, Nq, Nk)
    attn = scores.softmax(dim=-1)
    attn.retain_grad()
    out = (attn @ v).transpose(0, 1).reshape(query.shape[0], d)
    return mha.out_proj(out), attn


def _manual_translator(model, ids, dec):
    """TransformerTranslator's forward for one example (post-norm layers), keeping every A."""
    tf = model.transformer
    s, t = ids.shape[0], dec.shape[0]
    x = model.src_embed(ids) + model.position.weight[:s]
    no_mask = torch.zeros(s, s)
    enc_maps, self_maps, cross_maps = [], [], []
    for layer in tf.encoder.layers:
        a, attn = _manual_mha(layer.self_attn, x, x, no_mask)
        enc_maps.append(attn)
        x = layer.norm1(x + a)
        x = layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))
    memory = tf.encoder.norm(x)
    y = model.tgt_embed(dec) + model.position.weight[:t]
    causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
    for layer in tf.decoder.layers:
        a, attn = _manual_mha(layer.self_attn, y, y, causal)
        self_maps.append(attn)
        y = layer.norm1(y + a)
        a, attn = _manual_mha(layer.multihead_attn, y, memory, torch.zeros(t, s))
        cross_maps.append(attn)
        y = layer.norm2(y + a)
        y = layer.norm3(y + layer.linear2(layer.activation(layer.linear1(y))))
    return model.generator(tf.decoder.norm(y)), enc_maps, self_maps, cross_maps


def test_torch_transformer_matches_a_written_out_reference():
    model = tiny_torch()
    inputs, generated = batch()
    exp = explain_generation(model, inputs, generated)
    n_steps = generated.shape[1] - 1
    for b in range(3):
        length = int(inputs["attention_mask"][b].sum())  # the reference runs the unpadded source
        ids, dec = inputs["input_ids"][b, :length], generated[b, :-1]
        for t in range(n_steps):
            logits, enc, dec_self, cross = _manual_translator(model, ids, dec)
            model.zero_grad()
            logits[t, generated[b, t + 1]].backward()

            def cam(a):
                return (a.grad * a).clamp(min=0).mean(dim=0)  # Eq. 5

            r_ss = torch.eye(length)
            for a in enc:
                r_ss = r_ss + cam(a) @ r_ss  # Eq. 6
            r_tt, r_ts = torch.eye(n_steps), torch.zeros(n_steps, length)
            for self_a, cross_a in zip(dec_self, cross):
                c = cam(self_a)
                r_tt, r_ts = r_tt + c @ r_tt, r_ts + c @ r_ts  # Eq. 6, 7
                r_ts = r_ts + _normalise(r_tt).T @ cam(cross_a) @ _normalise(r_ss)  # Eq. 10
            torch.testing.assert_close(exp.relevance["source"][b, t, :length], r_ts[t].detach(), rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(exp.relevance["target"][b, t], r_tt[t].detach(), rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
