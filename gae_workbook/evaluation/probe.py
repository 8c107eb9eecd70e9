"""Run every Hugging Face causal-LM family through the generic adapter, on tiny random configs.

    python -m gae_workbook.probe                                  # every family of the installed transformers
    python -m gae_workbook.probe --families gpt2 llama --json outputs/probe.json

Each family's default config is shrunk by the same generic settings (:data:`TINY`), built with
random weights, and explained on a left-padded batch of two prompts with ``verify=True`` (the
explained next-token logits under capture must equal the stock model's). Outcomes:

- ``ok``: explained, parity holds, relevance finite;
- ``not routed``: the family does not route attention through the interface; ``explain`` refuses
  it (``UnsupportedModelError``) before running;
- ``mixes tokens``: some of its layers mix tokens outside softmax attention (Mamba, gated delta-net,
  short convolution, ...), which GAE cannot propagate through; ``explain`` refuses it before running;
- ``refused``: the capture found something it cannot explain and raised ``AttentionCaptureError``
  (an attention module called twice per forward, fewer captures than modules, no graph);
- ``needs images``: a vision-language model in the causal-LM table; the VLM adapter refuses text-only
  inputs (probed with images by :mod:`gae_workbook.probe_vision`);
- ``config``: the stock model itself fails on the generic tiny settings (no verdict on capture);
- ``too big`` / ``build``: the generic settings do not shrink the family / do not build it.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import gae_utils as gu
from gae_utils.adapters.hf_interface import TokenMixingError

__all__ = ["TINY", "tiny_causal_lm", "probe_family", "probe", "main"]

TINY: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    ffn_dim=64,
    n_inner=64,
    num_local_experts=4,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    first_k_dense_replace=1,
    n_routed_experts=4,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    sliding_window=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MAX_PARAMETERS = 3_000_000


def _shrink(config: Any) -> None:
    for target in (config, getattr(config, "text_config", None)):
        for key, value in TINY.items():
            if target is not None and hasattr(target, key):
                try:
                    setattr(target, key, value)
                except (AttributeError, TypeError, ValueError):
                    pass


def tiny_causal_lm(model_type: str, seed: int = 0) -> torch.nn.Module:
    """The causal LM of ``model_type`` with its default config shrunk by :data:`TINY`, random weights.

    Raises:
        ValueError: the shrunk model still has more than :data:`MAX_PARAMETERS` parameters.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = transformers.CONFIG_MAPPING[model_type]()
    _shrink(config)
    model_class = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    with torch.device("meta"):
        n = sum(p.numel() for p in model_class(config).parameters())
    if n > MAX_PARAMETERS:
        raise ValueError(f"{n / 1e6:.1f}M parameters with the generic tiny settings")
    torch.manual_seed(seed)
    return model_class(config).eval()


def probe_family(model_type: str) -> tuple[str, str]:
    """``(outcome, detail)`` of one family (see the module docstring)."""
    try:
        model = tiny_causal_lm(model_type)
    except ValueError as err:
        return ("too big", str(err)) if "parameters" in str(err) else ("build", str(err)[:120])
    except Exception as err:  # any failure of the family's own constructor
        return "build", f"{type(err).__name__}: {str(err)[:120]}"
    ids = torch.randint(3, 60, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    try:
        exp = gu.explain(model, inputs, verify=True)
    except gu.UnsupportedModelError as err:
        outcome = "mixes tokens" if isinstance(err, TokenMixingError) else "not routed"
        return outcome, str(err).split("\n")[0][:160]
    except gu.AttentionCaptureError as err:
        return "refused", str(err)[:160]
    except Exception as err:
        if isinstance(err, TypeError) and "pixel_values" in str(err):  # the VLM adapter's input check
            return "needs images", str(err)[:160]
        try:
            with torch.no_grad():
                model(**inputs)
        except Exception as stock:
            return "config", f"the stock model fails too: {type(stock).__name__}: {str(stock)[:100]}"
        return "failed", f"{type(err).__name__}: {str(err)[:160]}"
    if not torch.isfinite(exp.relevance["text"]).all():
        return "failed", "relevance is not finite"
    return "ok", f"{len(exp.layout.segments)} segment, {exp.relevance['text'].shape[-1]} tokens"


def probe(families: list[str] | None = None, progress: bool = True) -> dict[str, tuple[str, str]]:
    """Probe ``families`` (default: every causal-LM model type of the installed transformers)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    transformers.logging.set_verbosity_error()
    families = families or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in tqdm(families, desc="families", disable=not progress):
            results[model_type] = probe_family(model_type)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=None, help="model types (default: every causal LM)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    import transformers

    results = probe(args.families)
    counts: dict[str, int] = {}
    for outcome, _ in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    for model_type, (outcome, detail) in results.items():
        print(f"{model_type:28s} {outcome:10s} {detail}")
    print(f"transformers {transformers.__version__}, {len(results)} families: {counts}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"transformers": transformers.__version__, "counts": counts, "families": results}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
