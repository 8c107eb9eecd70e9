"""Routing is read from what a model does: causal LMs that call the attention interface without
declaring the attention-backend class flag (StableLM; Falcon with rotary and ALiBi positions; BioGPT)
are explained, and match a per-example reference written out by hand."""

import pytest
import torch

import gae_utils as gu

transformers = pytest.importorskip("transformers")

V = 48
PROMPTS = [[5, 9, 3, 17, 22, 8], [7, 7, 30, 2], [11, 4, 19]]


def tiny(family: str):
    torch.manual_seed(0)
    if family == "stablelm":
        config = transformers.StableLmConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        )
        model_class = transformers.StableLmForCausalLM
    elif family.startswith("falcon"):
        config = transformers.FalconConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            alibi=family == "falcon-alibi",
        )
        model_class = transformers.FalconForCausalLM
    elif family == "biogpt":
        config = transformers.BioGptConfig(
            vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=64,
        )
        model_class = transformers.BioGptForCausalLM
    else:
        raise ValueError(family)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
    config._attn_implementation = "eager"
    return model_class(config).eval()


def right_padded(prompts):
    length = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
    return {"input_ids": ids, "attention_mask": mask}


def reference_row(model, prompt):
    """One unpadded prompt through the stock eager model with ``output_attentions``; Eq. 5-6 by
    hand: ``R = I``, ``R += Abar_l @ R`` per layer, ``Abar = mean_h (dA * A)^+``; the last row of
    ``R - I``."""
    out = model(input_ids=torch.tensor([prompt]), output_attentions=True, use_cache=False)
    logits = out.logits[0, -1]  # (V,)
    token = int(logits.argmax())
    grads = torch.autograd.grad(logits[token], out.attentions)
    n = len(prompt)
    relevancy = torch.eye(n)
    for attn, grad in zip(out.attentions, grads):
        relevancy = relevancy + (grad[0] * attn[0]).clamp(min=0).mean(dim=0) @ relevancy  # (n, n)
    return (relevancy - torch.eye(n))[-1].detach(), token


FALCON_ROUTES = pytest.mark.skipif(  # before 5.25 its attention does not call the interface, and is refused
    tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 25),
    reason="falcon calls the attention interface from transformers 5.25 on",
)


@pytest.mark.parametrize(
    "family",
    [
        "stablelm",
        pytest.param("falcon", marks=FALCON_ROUTES),
        pytest.param("falcon-alibi", marks=FALCON_ROUTES),
        "biogpt",
    ],
)
def test_a_routed_lm_without_the_class_flag_matches_a_per_example_reference(family):
    model = tiny(family)
    assert not type(model)._supports_attention_backend  # refused before: routing was read from the flag
    x = right_padded(PROMPTS)
    exp = gu.explain(model, x, verify=True)
    assert gu.find_adapter(model).name == "hf-causal-lm"
    for b, prompt in enumerate(PROMPTS):
        expected, token = reference_row(model, prompt)
        real = x["attention_mask"][b].bool()
        assert int(exp.target[b]) == token
        torch.testing.assert_close(exp.relevance["text"][b, real], expected, rtol=1e-4, atol=1e-6)
