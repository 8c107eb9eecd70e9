"""One contract for a callable target in every family: it receives the logits of what is explained.

The README's ``target=lambda z: z[:, 3] - z[:, 7]`` is checked on each family that takes a class-like
target against the same scalar explained another way: its scores are the two logits' difference read
from the model itself, and, the gradient being linear, every layer's ``dA`` is the difference of the
two class targets' ``dA`` from one ``(B, K)`` recording.
"""

import pytest
import torch
from conftest import tiny_hf_vit, tiny_timm_vit
from test_causal_lm import PROMPTS, batch, tiny_lm
from test_coattention import inputs as lxmert_inputs
from test_coattention import tiny_lxmert
from test_generic_vision import tiny
from test_single_stream import tiny_vilt, tiny_visualbert, vilt_inputs, visualbert_inputs

import gae_utils as gu
from gae_utils.adapters.hf_causal_lm import last_real_position

transformers = pytest.importorskip("transformers")

IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _lm(family):
    return tiny_lm(family), batch(PROMPTS)


def _lm_logits(model, x):
    return model(**x).logits[torch.arange(3), last_real_position(x)]  # (B, V) next-token logits


FAMILIES = {  # name -> (build () -> (model, inputs), logits of the stock model (model, inputs) -> (B, C))
    "timm-vit": (lambda: (tiny_timm_vit(), IMAGES), lambda m, x: m(x)),
    "hf-vit": (lambda: (tiny_hf_vit(), IMAGES), lambda m, x: m(x).logits),
    "hf-deit-teacher": (lambda: (tiny("deit-teacher"), IMAGES), lambda m, x: m(x).logits),
    "hf-dinov2": (lambda: (tiny("dinov2"), IMAGES), lambda m, x: m(x).logits),
    "hf-beit": (lambda: (tiny("beit"), IMAGES), lambda m, x: m(x).logits),
    "hf-siglip": (lambda: (tiny("siglip"), IMAGES), lambda m, x: m(x).logits),
    "llama": (lambda: _lm("llama"), _lm_logits),
    "gpt2": (lambda: _lm("gpt2"), _lm_logits),
    "vilt": (lambda: (tiny_vilt(), vilt_inputs()), lambda m, x: m(**x).logits),
    "visualbert": (lambda: (tiny_visualbert(), visualbert_inputs()), lambda m, x: m(**x).logits),
    "lxmert": (lambda: (tiny_lxmert(), lxmert_inputs()), lambda m, x: m(**x).question_answering_score),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_readme_callable_receives_the_logits_in_every_family(family):
    build, stock_logits = FAMILIES[family]
    model, x = build()
    first, second = 3, 4  # classes (answers, vocabulary ids) every tiny model has
    diff = gu.record(model, x, target=lambda z: z[:, first] - z[:, second], keep_heads=True)
    size = diff.scores.shape[0]
    both = gu.record(model, x, target=torch.tensor([[first, second]] * size), keep_heads=True)
    assert diff.target is None and diff.scores.shape == (size, 1)
    with torch.no_grad():
        logits = stock_logits(model, x)  # (B, C)
    torch.testing.assert_close(diff.scores[:, 0], logits[:, first] - logits[:, second], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(diff.scores[:, 0], both.scores[:, 0] - both.scores[:, 1])
    graded = [(d, b) for d, b in zip(diff.layers, both.layers) if d.grad is not None]
    assert graded and len(diff.layers) == len(both.layers)
    for d, b in graded:  # dA of the difference = difference of the two targets' dA, layer by layer
        torch.testing.assert_close(d.grad[:, 0], b.grad[:, 0] - b.grad[:, 1], rtol=1e-4, atol=1e-6)
    relevance = gu.explain(model, x, target=lambda z: z[:, first] - z[:, second]).relevance
    by_hand = diff.explanation().relevance
    for name in relevance:
        torch.testing.assert_close(relevance[name], by_hand[name])


def test_k_scores_from_one_callable_equal_the_class_targets():
    model = tiny_hf_vit()
    pair = gu.explain(model, IMAGES, target=lambda z: z[:, [3, 5]])  # (B, K) scores
    classes = gu.explain(model, IMAGES, target=torch.tensor([[3, 5]] * 3))
    assert pair.relevance["image"].shape == (3, 2, 16)
    torch.testing.assert_close(pair.relevance["image"], classes.relevance["image"])
    torch.testing.assert_close(pair.scores, classes.scores)


def test_a_callable_written_for_the_output_object_gets_an_error_naming_the_contract():
    with pytest.raises(TypeError, match=r"receives the \(3, 7\) logits.*not the model's output object"):
        gu.explain(tiny_hf_vit(), IMAGES, target=lambda out: out.logits[:, 3])
    with pytest.raises(TypeError, match=r"BaseModelOutputWithPooling: the model has no logits"):
        gu.explain(tiny_hf_vit("ViTModel"), IMAGES, target=lambda out: out.missing)
