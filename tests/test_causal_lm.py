"""Decoder-only language models through the attention interface, against a per-example reference."""

import pytest
import torch

import gae_utils as gu
from gae_utils.adapters.hf_causal_lm import CAUSAL_LM, last_real_position

transformers = pytest.importorskip("transformers")

V = 48


def tiny_lm(family: str, attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, max_position_embeddings=64)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        model_class = transformers.GPT2LMHeadModel
    elif family == "llama":  # grouped-query attention: 4 query heads share 2 key/value heads
        config = transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common)
        model_class = transformers.LlamaForCausalLM
    elif family == "qwen2":
        config = transformers.Qwen2Config(num_attention_heads=4, num_key_value_heads=1, **common)
        model_class = transformers.Qwen2ForCausalLM
    elif family == "gemma":
        config = transformers.GemmaConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=8, **common)
        model_class = transformers.GemmaForCausalLM
    else:
        raise ValueError(family)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
    config._attn_implementation = attn
    return model_class(config).eval()


FAMILIES = ["gpt2", "llama", "qwen2", "gemma"]
PROMPTS = [[5, 9, 3, 17, 22, 8], [7, 7, 30, 2], [11, 4, 19]]


def batch(prompts, side="right"):
    length = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        cols = slice(0, len(p)) if side == "right" else slice(length - len(p), length)
        ids[i, cols] = torch.tensor(p)
        mask[i, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def reference_row(model, prompt, token=None):
    """One unpadded prompt, eager attention, autograd.grad of the next-token logit; Eq. 5-6 by hand:
    R = I, R += Abar_l @ R for every layer; the last token's row of R - I."""
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, output_attentions=True, use_cache=False)
    logits = out.logits[0, -1]  # (V,)
    token = int(logits.argmax()) if token is None else token
    grads = torch.autograd.grad(logits[token], out.attentions)
    n = len(prompt)
    relevancy = torch.eye(n)
    for attn, grad in zip(out.attentions, grads):
        attn_bar = (grad[0] * attn[0]).clamp(min=0).mean(dim=0)  # (n, n)
        relevancy = relevancy + attn_bar @ relevancy
    return (relevancy - torch.eye(n))[-1].detach(), token


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_next_token_matches_a_per_example_reference(family, side):
    model = tiny_lm(family)
    x = batch(PROMPTS, side)
    exp = gu.explain(model, x, verify=True)
    assert gu.find_adapter(model).name == "hf-causal-lm"
    assert exp.relevance["text"].shape == x["input_ids"].shape
    for b, prompt in enumerate(PROMPTS):
        expected, token = reference_row(model, prompt)
        real = x["attention_mask"][b].bool()
        assert int(exp.target[b]) == token
        torch.testing.assert_close(exp.relevance["text"][b, real], expected, rtol=1e-4, atol=1e-6)
        assert (exp.relevance["text"][b, ~real] == 0).all()  # padding columns carry nothing


def test_target_forms_agree_and_k_targets_equal_separate_calls():
    model = tiny_lm("llama")
    x = batch(PROMPTS)
    both = gu.explain(model, x, target=torch.tensor([[3, 9]] * 3))  # (B, K)
    assert both.relevance["text"].shape == (3, 2, 6)
    for k, token in enumerate((3, 9)):
        one = gu.explain(model, x, target=token)
        torch.testing.assert_close(both.relevance["text"][:, k], one.relevance["text"])
        expected, _ = reference_row(model, PROMPTS[1], token)
        torch.testing.assert_close(one.relevance["text"][1, :4], expected, rtol=1e-4, atol=1e-6)
    contrast = gu.explain(model, x, target=lambda next_logits: next_logits[:, 3] - next_logits[:, 9])
    assert contrast.target is None and torch.isfinite(contrast.relevance["text"]).all()
    logits = model(**x).logits[torch.arange(3), last_real_position(x)]  # (B, V), right padding
    torch.testing.assert_close(contrast.scores, logits[:, 3] - logits[:, 9], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        gu.explain(model, x, target=V)


def test_every_method_and_start_layer_run_on_a_causal_lm():
    model = tiny_lm("gpt2")
    rec = gu.record(model, batch(PROMPTS, "left"))
    for method in gu.method_names(ablations=True):
        rel = rec.explanation(method, start_layer=1).relevance["text"]
        assert rel.shape == (3, 6) and torch.isfinite(rel).all()


def test_the_model_is_left_as_it_was_also_after_an_exception():
    model = tiny_lm("qwen2", attn="sdpa")
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    before = [(c._attn_implementation_internal, c._attn_implementation) for c in configs]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    gu.explain(model, batch(PROMPTS), verify=True)
    with pytest.raises(ValueError):
        gu.explain(model, batch(PROMPTS), target=torch.tensor([[1.5]] * 3))  # float ids: refused after the forward
    assert [(c._attn_implementation_internal, c._attn_implementation) for c in configs] == before
    assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_a_model_that_does_not_route_its_attention_raises():
    config = transformers.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4)
    bloom = transformers.BloomForCausalLM(config).eval()
    with pytest.raises(gu.UnsupportedModelError, match="BloomForCausalLM"):
        gu.explain(bloom, batch(PROMPTS))
    # forced onto the interface adapter, the switch is ignored: nothing is captured, and it says so
    with pytest.raises(gu.AttentionCaptureError):
        gu.explain(bloom, batch(PROMPTS), adapter=CAUSAL_LM)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bloom.modules())


EXPLAINED = [  # a spread of the families `python -m gae_workbook.probe` finds explained (99 in transformers 5.25)
    "gpt2", "gpt_neox", "gpt_bigcode", "opt", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
    "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "olmo", "olmo2", "starcoder2", "cohere",
    "granite", "glm", "smollm3", "gpt_oss", "jetmoe", "nemotron", "helium", "persimmon", "falcon", "stablelm",
    "biogpt",
]  # fmt: skip


FALCON_ROUTES = pytest.mark.skipif(  # before 5.25 its attention does not call the interface, and is refused
    tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 25),
    reason="falcon calls the attention interface from transformers 5.25 on",
)


@pytest.mark.parametrize(
    "model_type", [pytest.param(m, marks=FALCON_ROUTES) if m == "falcon" else m for m in EXPLAINED]
)
def test_families_routed_through_the_interface_are_explained_with_parity(model_type):
    from gae_workbook.probe import probe_family

    outcome, detail = probe_family(model_type)
    assert outcome == "ok", detail


REFUSED = {
    "bloom": "not routed", "mpt": "not routed", "gpt_neo": "not routed",
    "jamba": "not routed", "minimax": "mixes tokens", "falcon_h1": "mixes tokens", "diffllama": "refused",
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_families_the_capture_cannot_explain_are_refused(model_type):
    from gae_workbook.probe import probe_family

    outcome, detail = probe_family(model_type)
    assert outcome == REFUSED[model_type], (outcome, detail)


def test_every_generated_token_from_one_forward_equals_explaining_each_prefix():
    model = tiny_lm("llama")
    x = batch(PROMPTS, "left")  # generate wants left padding
    generated = model.generate(**x, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    prompt = x["input_ids"].shape[1]
    assert generated.shape == (3, prompt + 3)
    exp = gu.explain_generation(model, x, generated)
    assert exp.relevance["text"].shape == (3, 3, prompt + 2) and exp.extra["steps"] == [0, 1, 2]
    assert torch.equal(exp.target, generated[:, prompt:])
    for t in range(3):
        prefix = {
            "input_ids": generated[:, : prompt + t],
            "attention_mask": torch.cat([x["attention_mask"], torch.ones(3, t, dtype=torch.long)], dim=1),
        }
        one = gu.explain(model, prefix, target=generated[:, prompt + t])
        row = exp.relevance["text"][:, t, : prompt + t]
        torch.testing.assert_close(row, one.relevance["text"], rtol=1e-4, atol=1e-6)
        assert (exp.relevance["text"][:, t, prompt + t :] == 0).all()  # nothing after the step's own position
    with pytest.raises(ValueError, match="the prompt followed by the continuation"):
        gu.explain_generation(model, x, generated[:, 1:])


@pytest.mark.parametrize("side", ["right", "left"])
def test_rows_without_maps_equal_the_full_maps(side):
    model = tiny_lm("llama")
    x = batch(PROMPTS, side)
    rec = gu.record(model, x, target=torch.tensor([[3, 9]] * 3))
    for start in (0, 2):
        full = rec.explanation("gae", start)
        rows = rec.explanation("gae", start, maps=False)
        assert rows.maps == {}
        torch.testing.assert_close(rows.relevance["text"], full.relevance["text"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="GAE's rows only"):
        rec.explanation("rollout", maps=False)


def test_token_html_shades_each_token_and_escapes_it():
    from gae_utils.plotting import token_html

    model = tiny_lm("gpt2")
    x = batch(PROMPTS[:1])
    exp = gu.explain(model, x)
    tokens = ["<s>", "a&b", "c", "d", "e", "f"]
    page = token_html(tokens, exp.relevance["text"][0])
    assert page._repr_html_() == page and page.count("<span") == 6
    assert "&lt;s&gt;" in page and "a&amp;b" in page  # token text is escaped
    top = int(exp.relevance["text"][0].argmax())
    assert f'title="{float(exp.relevance["text"][0, top]):.4g}" style="background:#fcffa4' in page  # inferno's top
    with pytest.raises(ValueError, match="one value per token"):
        token_html(tokens[:3], exp.relevance["text"][0])
