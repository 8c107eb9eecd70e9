"""Result objects compare, print, save and plot without surprises (issue 23, item 8): Explanation
equality and repr, DualExplanation save/load/plot, the method names the errors list, and the
identity term in CLIP's text relevance."""

import matplotlib
import pytest
import torch
from test_dual import CAPTIONS, tiny_clip, tokenized

import gae_utils as gu
from gae_utils.dual import DualExplanation

matplotlib.use("Agg")


def test_explanations_compare_by_value_and_never_raise(vit, images):
    exp = gu.explain(vit, images)
    again = gu.explain(vit, images)
    assert exp == again and not (exp != again)
    assert exp != gu.explain(vit, images, target=(exp.target + 1) % 7)  # other classes
    assert exp != gu.explain(vit, images[:2])  # other shapes: False, no error
    assert exp != gu.explain(vit, images, method="rollout")
    assert exp != "gae" and exp is not None
    changed = gu.explain(vit, images)
    changed.relevance["image"][0, 0] += 1
    assert exp != changed


def test_an_explanation_equals_itself_after_save_and_load(vit, images, tmp_path):
    exp = gu.explain(vit, images, target=torch.tensor([[1, 2]] * 4))
    exp.save(tmp_path / "exp")
    assert gu.Explanation.load(tmp_path / "exp") == exp


def test_repr_shows_shapes_not_tensors(vit, images):
    text = repr(gu.explain(vit, images))
    assert text.startswith("Explanation(method='gae', model='VisionTransformer', relevance={'image': (4, 16)}")
    assert "tensor(" not in text and len(text) < 300


def test_unknown_method_error_lists_method_names_and_ablations_apart(vit, images):
    with pytest.raises(ValueError) as info:
        gu.explain(vit, images, method="lrp")
    message = str(info.value)
    assert f"method_names() = {gu.method_names()}" in message
    ablations = [m for m in gu.method_names(ablations=True) if m not in gu.method_names()]
    assert ablations == ["gae_no_norm"] and f"method_names(ablations=True): {ablations}" in message
    rec = gu.record(vit, images)
    with pytest.raises(ValueError, match=r"unknown method 'lrp'; choose one of method_names\(\) ="):
        rec.maps("lrp")


@pytest.fixture(scope="module")
def clip_and_inputs():
    model = tiny_clip()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, images, tokenized(CAPTIONS)


@pytest.mark.parametrize("pairs", ["all", "diagonal"])
def test_dual_explanations_save_and_load(clip_and_inputs, pairs, tmp_path):
    model, images, texts = clip_and_inputs
    texts = texts if pairs == "all" else {k: v[:2] for k, v in texts.items()}
    dual = gu.explain_dual(model, images, texts, pairs=pairs)
    dual.save(tmp_path / "run" / "dual")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "dual-image.json", "dual-image.safetensors", "dual-text.json", "dual-text.safetensors",
        "dual.json", "dual.safetensors",
    ]  # fmt: skip
    loaded = DualExplanation.load(tmp_path / "run" / "dual")
    assert loaded == dual and loaded != gu.explain_dual(model, images, texts, pairs=pairs, method="rollout")
    assert repr(loaded).startswith(f"DualExplanation(logits={tuple(dual.logits.shape)}, image=Explanation(")


def test_dual_plot_draws_each_pair_with_its_tokens_up_to_eot(clip_and_inputs):
    model, images, texts = clip_and_inputs
    dual = gu.explain_dual(model, images, texts)  # 2 images x 3 texts: every pair by default
    words = [[f"w{j}_{t}" for t in range(6)] for j in range(3)]
    fig = dual.plot(images, tokens=words)
    heat_axes = [ax for ax in fig.axes if ax.get_title().startswith("image ")]
    strip_axes = [ax for ax in fig.axes if ax.get_title().startswith("text ")]
    assert len(heat_axes) == len(strip_axes) == 6
    assert heat_axes[1].get_title() == f"image 0, text 1\nlogit {float(dual.logits[0, 1]):.2f}"
    lengths = [len(c) for c in CAPTIONS]  # EOT is each caption's last token
    for ax, (i, j) in zip(strip_axes, [(i, j) for i in range(2) for j in range(3)]):
        assert [t.get_text() for t in ax.get_xticklabels()] == words[j][: lengths[j]]
        shown = ax.get_images()[0].get_array()
        torch.testing.assert_close(torch.as_tensor(shown[0]), dual.text.relevance["text"][j, i, : lengths[j]])
    labels = {ax.get_ylabel() for ax in fig.axes if ax not in heat_axes + strip_axes}
    assert labels == {"min-max per map", "relevance (raw)"}  # a colour bar per panel
    diagonal = gu.explain_dual(model, images, {k: v[:2] for k, v in texts.items()}, pairs="diagonal")
    assert len([ax for ax in diagonal.plot().axes if ax.get_title().startswith("text ")]) == 2
    matplotlib.pyplot.close("all")


def test_clip_text_relevance_keeps_the_identity_on_the_eot_entry(clip_and_inputs):
    """As documented: the EOT row of R, identity included; R - I differs by 1 at EOT only."""
    model, images, texts = clip_and_inputs
    dual = gu.explain_dual(model, images, texts)
    relevance = dual.text.relevance["text"]  # (B_t, B_i, L)
    full = dual.text.maps[("text", "text")]  # (B_t, B_i, L, L)
    eot = dual.text.layout.weights["text"].argmax(-1)  # (B_t,)
    for j in range(len(CAPTIONS)):
        row = full[j, :, eot[j]]  # (B_i, L) the EOT row of R
        torch.testing.assert_close(relevance[j], row)
        without = row - torch.nn.functional.one_hot(eot[j], row.shape[-1])  # the row of R - I
        assert (relevance[j] - without)[:, eot[j]].eq(1).all()
        assert (relevance[j, :, eot[j]] > 1).all()
