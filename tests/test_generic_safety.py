"""The generic Hugging Face adapters never return a silently wrong map.

GAE propagates relevance only through the captured softmax attention (Eq. 6: ``R = prod_l (I + Abar_l)``).
Hybrid models whose other layers mix tokens by state-space scans, linear attention, recurrences or
convolutions are refused before running, naming the layers and their mixers; a forward pass in which a
layer's attention produced no capture raises instead of propagating through fewer layers.
"""

import copy
import types

import pytest
import torch

import gae_utils as gu
from gae_utils.adapters.hf_interface import TokenMixingError

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MAMBA = dict(mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_n_heads=4, mamba_d_head=16, mamba_chunk_size=8)
MOE = dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32)
MIXED = ["linear_attention", "full_attention", "linear_attention"]
DELTA = dict(layer_types=MIXED, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2)
MLA = dict(layer_types=MIXED, num_key_value_heads=4, linear_head_dim=8, linear_num_heads=4, qk_rope_head_dim=8)
MLA = dict(MLA, qk_nope_head_dim=8, v_head_dim=8, kv_lora_rank=8, q_lora_rank=None, mlp_layer_types=["dense"] * 3)
CONV = dict(layer_types=["conv", "full_attention", "conv"])

CONFIGS: dict[str, dict] = {  # tiny configs with attention and another token mixer; three (zamba: four) layers
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, mamba_dt_rank=4, **MAMBA),
    "bamba": dict(attn_layer_indices=[1], **MAMBA),
    "zamba": dict(layers_block_type=["mamba", "hybrid"] * 2, num_hidden_layers=4, attention_head_dim=8, **MAMBA),
    "zamba2": dict(
        layers_block_type=["mamba", "hybrid", "mamba"],
        hybrid_layer_ids=[1],
        attention_head_dim=8,
        n_mamba_heads=4,
        mamba_headdim=16,
        chunk_size=8,
        **MAMBA,
    ),
    "falcon_h1": dict(mamba_d_ssm=64, **MAMBA),
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba"], num_local_experts=2, **MAMBA),
    "nemotron_h": dict(
        layers_block_type=["mamba", "attention", "mamba"],
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=8,
        n_groups=1,
        chunk_size=8,
    ),
    "qwen3_next": dict(DELTA, linear_num_value_heads=4, **MOE),
    "qwen3_5_text": dict(DELTA, linear_num_value_heads=4),
    "qwen3_5_moe_text": dict(DELTA, linear_num_value_heads=4, **MOE),
    "qwen4_exp_text": dict(
        DELTA,
        linear_num_value_heads=4,
        indexer_n_heads=2,
        indexer_kv_heads=1,
        indexer_head_dim=8,
        indexer_budget=8,
        indexer_compress_ratio=2,
        **MOE,
    ),
    "olmo_hybrid": dict(DELTA, linear_num_value_heads=2),
    "kimi_linear": dict(MLA, **MOE),
    "bailing_hybrid": dict(MLA, num_nextn_predict_layers=0, **MOE),
    "lfm2": CONV,
    "lfm2_moe": dict(CONV, num_dense_layers=3),
    "lfm3": CONV,
    "recurrent_gemma": dict(
        block_types=["recurrent", "attention", "recurrent"], lru_width=32, attention_window_size=16
    ),
    "minimax": dict(
        layer_types=["full_attention", "linear_attention", "full_attention"],
        num_local_experts=2,
        num_experts_per_tok=1,
        block_size=4,
    ),
    "zaya": dict(layer_types=["hybrid"] * 3, moe_intermediate_size=32),
    "inkling_text": dict(
        layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"],
        swa_num_attention_heads=4,
        swa_num_key_value_heads=2,
        swa_head_dim=8,
        sliding_window_size=4,
        mlp_layer_types=["dense"] * 3,
        **MOE,
    ),
}
MIXERS = {  # what the refusal names
    "jamba": "JambaMambaMixer in model.layers 0, 2",
    "bamba": "BambaMixer in model.layers 0, 2",
    "zamba": "ZambaMambaMixer in model.layers 0, 1, 2, 3",  # a hybrid layer runs a Mamba layer after its attention
    "zamba2": "Zamba2MambaMixer in model.layers 0, 1, 2",
    "falcon_h1": "FalconH1Mixer in model.layers 0, 1, 2",  # attention and Mamba side by side in every layer
    "granitemoehybrid": "GraniteMoeHybridMambaLayer in model.layers 0, 2",
    "nemotron_h": "NemotronHMamba2Mixer in model.layers 0, 2",
    "qwen3_next": "Qwen3NextGatedDeltaNet in model.layers 0, 2",
    "qwen3_5_text": "Qwen3_5GatedDeltaNet in model.layers 0, 2",
    "qwen3_5_moe_text": "Qwen3_5MoeGatedDeltaNet in model.layers 0, 2",
    "qwen4_exp_text": "Qwen4ExpTextGatedDeltaNet in model.layers 0, 2",
    "olmo_hybrid": "OlmoHybridGatedDeltaNet in model.layers 0, 2",
    "kimi_linear": "KimiLinearDeltaAttention in model.layers 0, 2",
    "bailing_hybrid": "BailingHybridDeltaAttention in model.layers 0, 2",
    "lfm2": "Lfm2ShortConv in model.layers 0, 2",
    "lfm2_moe": "Lfm2MoeShortConv in model.layers 0, 2",
    "lfm3": "Lfm3ShortConv in model.layers 0, 2",
    "recurrent_gemma": "RecurrentGemmaRecurrentBlock in model.layers 0, 2",
    "minimax": "MiniMaxDecoderLayer (no softmax attention) in model.layers 1",  # lightning (linear) attention
    "zaya": "ZayaCCAProjection in model.layers 0, 1, 2",  # convolved queries/keys, values shifted by one token
    "inkling_text": "InklingShortConvolution in model.layers 0, 1, 2",
}


def tiny_hybrid(model_type: str) -> torch.nn.Module:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"{model_type} is not in transformers {transformers.__version__}")
    config = transformers.CONFIG_MAPPING[model_type](**{**TINY, **CONFIGS[model_type]})
    torch.manual_seed(0)
    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])(config).eval()


def prompts() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_hybrid_models_are_refused_naming_their_mixing_layers(model_type):
    model = tiny_hybrid(model_type)
    with torch.no_grad():
        model(**prompts())  # the stock model runs on CPU: the refusal is about GAE, not about the build
    with pytest.raises(TokenMixingError) as refused:  # an UnsupportedModelError
        gu.explain(model, prompts())
    assert f"{type(model).__name__} mixes tokens outside softmax attention ({MIXERS[model_type]}" in str(refused.value)


def test_a_vlm_is_judged_by_its_language_model_layers():
    """LFM2-VL with short-convolution layers is refused; the same class with attention in every layer is served."""
    if "lfm2_vl" not in transformers.CONFIG_MAPPING:
        pytest.skip("lfm2_vl is not in this transformers")
    for layer_types, refused in ((["conv", "full_attention", "conv"], True), (["full_attention"] * 3, False)):
        text = dict(TINY, layer_types=layer_types)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
        model = transformers.Lfm2VlForConditionalGeneration(
            transformers.Lfm2VlConfig(text_config=text, vision_config=vision)
        )
        if refused:
            with pytest.raises(TokenMixingError, match=r"Lfm2VlForConditionalGeneration .*Lfm2ShortConv"):
                gu.find_adapter(model)
        else:
            assert gu.find_adapter(model).name == "hf-vlm"


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval()


def test_a_layer_whose_attention_skips_the_capture_raises_naming_it():
    """A sub-config the switch does not reach keeps one layer on SDPA: no map for that layer, so no explanation."""
    model = tiny_llama()
    attention = model.model.layers[1].self_attn
    attention.config = copy.deepcopy(attention.config)
    attention.config._attn_implementation = "sdpa"
    with pytest.raises(gu.AttentionCaptureError, match=r"'model\.layers\.1\.self_attn' returned no attention"):
        gu.explain(model, prompts())
    assert attention.config._attn_implementation == "sdpa" and model.config._attn_implementation == "sdpa"


def test_a_layer_that_bypasses_its_attention_module_raises():
    model = tiny_llama()
    layer = model.model.layers[1]

    def without_attention(self, hidden_states, *args, **kwargs):
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))

    layer.forward = types.MethodType(without_attention, layer)
    silent = (
        r"captured 2 attention maps but the model has 3 attention modules; "
        r"model\.layers\.1\.self_attn captured nothing"
    )
    with pytest.raises(gu.AttentionCaptureError, match=silent):
        gu.explain(model, prompts())


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen3", "gemma3_text", "mistral", "phi", "olmo2", "lfm2"])
def test_attention_only_families_are_still_explained(model_type):
    """Sliding windows (Gemma 3) are captured layers, not other mixing; LFM2's default config attends in every layer."""
    from gae_workbook.probe import probe_family

    assert probe_family(model_type)[0] == "ok"


@pytest.mark.parametrize("model_type", ["vit", "dinov2", "siglip"])
def test_image_families_are_still_explained(model_type):
    from gae_workbook.probe_vision import probe_family

    assert probe_family(model_type, "image")[0] == "ok"
