"""Text explanations carry their tokens: ids and strings per example (padding removed), saved with
the explanation, drawn as token strips or a generation's steps x tokens matrix, and as HTML."""

from dataclasses import replace

import matplotlib
import numpy as np
import pytest
import torch
from conftest import tiny_timm_vit
from test_causal_lm import PROMPTS, V, batch, tiny_lm

import gae_utils as gu
from gae_utils.plotting import TokenHTML, token_html

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tok():
    """A word-level tokenizer built offline: id 0 is [PAD] (also BOS/EOS of the tiny LMs), id i is
    the word ``w{i}``."""
    vocab = {"[PAD]": 0, **{f"w{i}": i for i in range(1, V)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")


def words(prompt):
    return [f"w{i}" for i in prompt]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


# prompts of PROMPTS then three generated tokens each; the second finishes early (EOS = 0, then pad)
CONTINUATIONS = [[3, 4, 5], [6, 0, 0], [8, 9, 10]]


def generation(side):
    x = batch(PROMPTS, side)
    return x, torch.cat([x["input_ids"], torch.tensor(CONTINUATIONS)], dim=1)  # (B, P + T)


def tick_labels(ax, axis="x"):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


@pytest.mark.parametrize("side", ["right", "left"])
def test_explain_keeps_the_tokens_of_every_example_without_padding(lm, tok, side):
    x = batch(PROMPTS, side)
    exp = gu.explain(lm, x, tokenizer=tok)
    assert exp.tokens["text"] == [words(p) for p in PROMPTS]
    assert torch.equal(exp.token_ids["text"], x["input_ids"])
    assert torch.equal(exp.token_mask["text"], x["attention_mask"].bool())
    assert exp.target_tokens == [[f"w{int(t)}"] for t in exp.target]  # the explained next tokens
    bare = gu.explain(lm, x)  # ids only; strings attached later, the same
    assert bare.tokens == {} and torch.equal(bare.token_ids["text"], x["input_ids"])
    later = bare.with_tokens(tok)
    assert later.tokens == exp.tokens and later.target_tokens == exp.target_tokens
    assert bare.tokens == {}  # with_tokens returns a copy


def test_a_list_or_a_callable_names_the_tokens_and_a_bad_tokenizer_says_what_to_pass(lm, tok):
    exp = gu.explain(lm, batch(PROMPTS, "left"))
    names = [f"w{i}" for i in range(V)]
    assert exp.with_tokens(names).tokens == exp.with_tokens(lambda ids: [names[i] for i in ids]).tokens
    assert exp.with_tokens(names).tokens["text"][1] == words(PROMPTS[1])
    with pytest.raises(TypeError, match="pass a Hugging Face tokenizer, a list of token strings"):
        exp.with_tokens(3)
    with pytest.raises(ValueError, match=r"convert_ids_to_tokens, not decode"):
        exp.with_tokens(lambda ids: ["one string"])
    with pytest.raises(ValueError, match="holds no token ids"):
        replace(exp, token_ids={}, token_mask={}).with_tokens(tok)


def test_tokenizer_on_an_image_model_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="leave tokenizer out"):
        gu.explain(tiny_timm_vit(), torch.rand(2, 3, 32, 32), tokenizer=["a"])


def test_tokens_survive_save_and_load(lm, tok, tmp_path):
    x, generated = generation("left")
    for i, exp in enumerate((gu.explain(lm, x, tokenizer=tok), gu.explain_generation(lm, x, generated, tokenizer=tok))):
        exp.save(tmp_path / f"exp{i}")
        back = gu.Explanation.load(tmp_path / f"exp{i}")
        assert back.tokens == exp.tokens and back.target_tokens == exp.target_tokens
        assert back.extra == exp.extra
        for name in exp.token_ids:
            assert torch.equal(back.token_ids[name], exp.token_ids[name])
            assert torch.equal(back.token_mask[name], exp.token_mask[name])
    plain = gu.explain(tiny_timm_vit(), torch.rand(2, 3, 32, 32))  # no tokens: still round-trips
    plain.save(tmp_path / "vit")
    assert gu.Explanation.load(tmp_path / "vit").token_ids == {}


@pytest.mark.parametrize("side", ["right", "left"])
def test_plot_draws_one_strip_per_example_with_its_tokens_in_order(lm, tok, side):
    exp = gu.explain(lm, batch(PROMPTS, side), tokenizer=tok)
    for fig in (exp.plot(), exp.plot(name="text"), gu.explain(lm, batch(PROMPTS, side)).plot(tokenizer=tok)):
        strips = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
        assert len(strips) == len(PROMPTS) and len(fig.axes) == 2 * len(PROMPTS)  # + a colour bar each
        for b, (ax, prompt) in enumerate(zip(strips, PROMPTS)):
            assert tick_labels(ax) == words(prompt)
            shown = ax.get_images()[0].get_array()  # (1, n) raw relevance, padding removed
            real = batch(PROMPTS, side)["attention_mask"][b].bool()
            np.testing.assert_allclose(shown[0], exp.relevance["text"][b, real].numpy())
            assert ax.get_title(loc="left") == f"#{b}, explained: 'w{int(exp.target[b])}'"
        plt.close(fig)
    one = exp.plot(index=1)
    assert tick_labels(one.axes[0]) == words(PROMPTS[1]) and len(one.axes) == 2
    plt.close(one)
    ids_only = gu.explain(lm, batch(PROMPTS, side)).plot(index=2)  # no tokenizer: ids label the tokens
    assert tick_labels(ids_only.axes[0]) == [str(i) for i in PROMPTS[2]]
    plt.close(ids_only)


def test_k_targets_give_one_strip_per_example_and_target(lm, tok):
    exp = gu.explain(lm, batch(PROMPTS), target=torch.tensor([[3, 9]] * 3), tokenizer=tok)
    fig = exp.plot()
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert titles == [f"#{b}, explained: 'w{t}'" for b in range(3) for t in (3, 9)]
    plt.close(fig)


def test_text_without_token_ids_points_to_the_token_plots(lm):
    exp = replace(gu.explain(lm, batch(PROMPTS)), token_ids={}, token_mask={})
    for draw in (lambda: exp.plot(name="text"), exp.plot):  # not KeyError 'image'
        with pytest.raises(ValueError, match=r"no spatial grid.*token strip.*token_html"):
            draw()
    with pytest.raises(ValueError, match=r"exp.plot\(name='text'\)"):
        exp.heatmap(name="text")


def test_generation_matrix_rows_equal_explaining_each_prefix(lm, tok):
    x, generated = generation("left")  # left padding, as generate wants the prompts
    exp = gu.explain_generation(lm, x, generated, tokenizer=tok)
    assert exp.extra["prompt_length"] == x["input_ids"].shape[1] and exp.extra["real_steps"] == [3, 2, 3]
    fig = exp.plot()
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    assert len(panels) == len(PROMPTS)
    for b, (ax, prompt, continuation) in enumerate(zip(panels, PROMPTS, CONTINUATIONS)):
        steps = exp.extra["real_steps"][b]  # the second example stops at its EOS (id 0)
        sequence = prompt + continuation  # unpadded prompt, then the generated tokens
        columns = sequence[:-1] if steps == 3 else sequence[: len(prompt) + steps]
        assert tick_labels(ax) == [tok.convert_ids_to_tokens(i) for i in columns]
        assert tick_labels(ax, "y") == [repr(tok.convert_ids_to_tokens(t)) for t in continuation[:steps]]
        matrix = np.ma.filled(ax.get_images()[0].get_array(), np.nan)  # (steps, n)
        assert matrix.shape == (steps, len(columns))
        for t in range(steps):  # step t produces token t from the prompt and the tokens before it
            seen = len(prompt) + t
            alone = gu.explain(lm, {"input_ids": torch.tensor([sequence[:seen]])}, target=sequence[seen])
            np.testing.assert_allclose(matrix[t, :seen], alone.relevance["text"][0].numpy(), atol=1e-6, rtol=1e-4)
            assert np.isnan(matrix[t, seen:]).all()  # not generated yet: blank
    plt.close(fig)


def test_a_right_padded_prompt_is_refused_with_the_fix(lm):
    x, generated = generation("right")  # the continuation would follow the pads
    with pytest.raises(ValueError, match=r"ends in padding \(right-padded\).*padding_side = 'left'"):
        gu.explain_generation(lm, x, generated)


def test_encoder_decoder_generation_keeps_source_and_target_tokens(tok):
    from test_seq2seq import batch as seq2seq_batch
    from test_seq2seq import tiny_marian

    src, generated = seq2seq_batch()
    exp = gu.explain_generation(tiny_marian(), src, generated, tokenizer=tok)
    real = src["attention_mask"].bool()
    assert exp.tokens["source"] == [tok.convert_ids_to_tokens(i[m].tolist()) for i, m in zip(src["input_ids"], real)]
    assert exp.tokens["target"][2] == tok.convert_ids_to_tokens(generated[2, :4].tolist())  # start, 2 tokens, EOS
    assert exp.tokens["target"][0] == tok.convert_ids_to_tokens(generated[0, :-1].tolist())
    fig = exp.plot(name="source")  # every step sees the whole source
    panel = fig.axes[0]
    assert tick_labels(panel) == exp.tokens["source"][0] and not np.ma.is_masked(panel.get_images()[0].get_array())
    plt.close(fig)


def test_token_html_from_an_explanation_and_saved_as_a_page(lm, tok, tmp_path):
    x, generated = generation("left")
    exp = gu.explain(lm, x, tokenizer=tok)
    html = exp.token_html(1)
    assert isinstance(html, TokenHTML) and html == token_html(words(PROMPTS[1]), exp.relevance["text"][1, -4:])
    path = html.save(tmp_path / "pages" / "prompt1")
    page = path.read_text(encoding="utf-8")
    assert path.name == "prompt1.html" and page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert [page.index(f">{w}</span>") for w in words(PROMPTS[1])] == sorted(
        page.index(f">{w}</span>") for w in words(PROMPTS[1])
    )
    gen = gu.explain_generation(lm, x, generated, tokenizer=tok)
    step = gen.token_html(0, k=1)  # step 1 sees the prompt and the first generated token
    assert step == token_html(words(PROMPTS[0]) + ["w3"], gen.relevance["text"][0, 1, :7])
