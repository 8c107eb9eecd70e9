"""Capture owns its state: nothing it registers outlives an explanation, a raising ``accepts`` does
not crash the adapter lookup, and a new family is served by one registered adapter alone."""

import pytest
import torch
from torch import nn

import gae_utils as gu
from gae_utils.adapters import ADAPTERS
from gae_utils.adapters.base import Adapter, AttentionSite, no_switch
from gae_utils.capture import OutputItem
from gae_utils.layout import Readout, Segment, TokenLayout

transformers = pytest.importorskip("transformers")


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    config._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(config).eval()


def registries():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    return dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)


IDS = {"input_ids": torch.tensor([[3, 5, 7, 9], [2, 4, 6, 8]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}


def test_the_interface_registries_are_as_before_after_an_explanation_and_after_an_exception():
    model = tiny_llama()
    before = registries()
    gu.explain(model, IDS)
    assert registries() == before
    assert model.config._attn_implementation == "sdpa"

    def boom(output):
        raise RuntimeError("inside the recording")

    with pytest.raises(RuntimeError, match="inside the recording"):
        gu.explain(model, IDS, target=boom)
    assert registries() == before
    assert model.config._attn_implementation == "sdpa"


def test_nothing_is_kept_when_a_model_is_switched_to_a_capture_key_outside_an_explanation():
    from transformers import AttentionInterface

    model = tiny_llama()
    keys = set(AttentionInterface._global_mapping)
    rec = gu.AttentionRecorder(model, gu.find_adapter(model))
    with rec:
        inside = set(AttentionInterface._global_mapping) - keys
        assert len(inside) == 1  # the recorder's own capturing function, for this recording only
        model(**IDS)
    key = inside.pop()
    assert key not in AttentionInterface._global_mapping
    with pytest.raises(ValueError):  # the key is gone: a model cannot be routed through it any more
        model.set_attn_implementation(key)
    with torch.no_grad():
        for _ in range(3):
            model(**IDS)
    assert rec._interface == {} and rec._live == []  # nothing held by the recorder after exit


def test_two_recorders_keep_their_captures_apart():
    a, b = tiny_llama(), tiny_llama()
    with gu.AttentionRecorder(a, gu.find_adapter(a)) as ra, gu.AttentionRecorder(b, gu.find_adapter(b)) as rb:
        a(**IDS)
        assert len(ra.records) == 2 and rb.records == []
        b(**IDS)
        assert len(rb.records) == 2 and len(ra.records) == 2


class _Broken(nn.Module):
    pass


def test_an_accepts_predicate_that_raises_is_not_accepting_and_is_named_in_the_error():
    def broken(model):
        raise AttributeError("no config here")

    adapter = Adapter(
        name="broken-predicate", model_classes=(), accepts=broken, sites=(), eager=no_switch,
        call=lambda m, x: m(x), logits=None, check=lambda m, x: None,
        layout=lambda m, x: TokenLayout((), ()),
    )
    gu.register_adapter(adapter)
    try:
        vit = pytest.importorskip("timm").create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=1
        )
        assert gu.find_adapter(vit).name == "timm-vit"  # served by the next adapter
        with pytest.raises(gu.UnsupportedModelError, match="broken-predicate.*AttributeError: no config here"):
            gu.find_adapter(_Broken())
    finally:
        ADAPTERS.remove(adapter)


# A new family, defined here in one place and registered: no engine file knows it.
class ToyAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each
        probs = (q[:, None] @ k[:, None].transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)  # (B, 1, N, N)
        return (probs @ v[:, None])[:, 0], probs  # (B, N, D), (B, 1, N, N): one head


class ToyScorer(nn.Module):
    """Two attention layers and a head scoring the last token: a family of its own."""

    def __init__(self, dim: int = 8, classes: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([ToyAttention(dim), ToyAttention(dim)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)[0]
        return self.head(x[:, -1])  # (B, C)


TOY = Adapter(
    name="toy-scorer",
    model_classes=("ToyScorer",),
    sites=(AttentionSite("ToyAttention", OutputItem(1), query="tokens", key="tokens"),),
    eager=no_switch,
    call=lambda model, x: model(x),
    logits=lambda out: out,
    check=lambda model, x: None,
    layout=lambda model, x: TokenLayout(
        (Segment("tokens", x.shape[1]),), (Readout("tokens", "tokens", "tokens", rows=(x.shape[1] - 1,)),)
    ),
    family="toy scorers (a test family)",
)


def test_a_new_family_is_explained_from_its_registered_adapter_alone():
    torch.manual_seed(0)
    model, x = ToyScorer(), torch.randn(2, 5, 8)
    gu.register_adapter(TOY)
    try:
        exp = gu.explain(model, x, target=1, verify=True)
    finally:
        ADAPTERS.remove(TOY)
    # reference, Eq. 5-6 by hand: R = I; R += Abar_l @ R; the last token's row
    x = x.clone()
    probs = []
    h = x
    for layer in model.layers:
        out, p = layer(h)
        probs.append(p)
        h = h + out
    score = model.head(h[:, -1])[:, 1].sum()
    grads = torch.autograd.grad(score, probs)
    relevancy = torch.eye(5).expand(2, 5, 5)
    for p, g in zip(probs, grads):
        relevancy = relevancy + (g * p).clamp(min=0).mean(1) @ relevancy
    torch.testing.assert_close(exp.relevance["tokens"], relevancy[:, -1].detach())


@pytest.mark.parametrize("probs", [1, "attn_drop", lambda module, output: output[1]])
def test_a_site_refuses_probs_that_are_not_a_reader_and_names_the_readers(probs):
    with pytest.raises(TypeError, match=r"got probs=.*pass a reader: ChildOutput\('attn_drop'\), OutputItem\(1\)"):
        AttentionSite("ToyAttention", probs)


def test_group_per_cycle_needs_calls_and_no_group():
    with pytest.raises(ValueError, match="group_per_cycle=True.*give it calls=.*and no group"):
        AttentionSite("ToyAttention", OutputItem(1), group_per_cycle=True)
    with pytest.raises(ValueError, match="no group"):
        AttentionSite("ToyAttention", OutputItem(1), calls=(("a", "b"),), group="g", group_per_cycle=True)
