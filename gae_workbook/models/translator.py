"""shapes-translate's model class and its decoding (a model built on ``torch.nn.Transformer`` has no
``generate``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from gae_utils.adapters import Adapter, find_adapter
from gae_utils.capture import evaluating

__all__ = ["TransformerTranslator", "greedy_decode"]


class TransformerTranslator(nn.Module):
    """A translation model around ``torch.nn.Transformer``, following the documented call convention.

    ``forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask (B, S) | None) -> (B, T, V)``;
    the causal mask is applied inside, learned position embeddings, separate source/target
    embeddings. Any model with this forward that contains a ``torch.nn.Transformer`` is explained
    by the ``torch-transformer`` adapter.
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        d_model: int = 64,
        nhead: int = 4,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        max_len: int = 64,
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
    ):
        super().__init__()
        self.pad_token_id, self.eos_token_id, self.vocab_size = pad_token_id, eos_token_id, max(src_vocab, tgt_vocab)
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.transformer = nn.Transformer(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, batch_first=True
        )
        self.generator = nn.Linear(d_model, tgt_vocab)

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        s, t = input_ids.shape[1], decoder_input_ids.shape[1]
        src = self.src_embed(input_ids) + self.position.weight[:s]  # (B, S, D)
        tgt = self.tgt_embed(decoder_input_ids) + self.position.weight[:t]  # (B, T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=tgt.device, dtype=tgt.dtype)  # (T, T)
        padding = None if attention_mask is None else ~attention_mask.bool()  # (B, S), True = ignore
        hidden = self.transformer(
            src,
            tgt,
            tgt_mask=causal,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
            tgt_is_causal=True,
        )  # (B, T, D)
        return self.generator(hidden)  # (B, T, V)


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    inputs: Mapping,
    start_id: int,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 16,
    adapter: Adapter | None = None,
) -> Tensor:
    """Greedy decoding through the adapter's call (no cache): ``(B, 1 + T)`` ids, padded after EOS.

    Works for every encoder-decoder adapter (a model built on ``torch.nn.Transformer`` has no
    ``generate``); for Hugging Face models ``model.generate(..., do_sample=False, num_beams=1)``
    gives the same ids.
    """
    adapter = adapter or find_adapter(model)
    if adapter.task != "generate":
        raise ValueError(f"{type(model).__name__} (adapter {adapter.name!r}) is not an encoder-decoder")
    read_logits = adapter.logits
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    out = torch.full((ids.shape[0], 1), start_id, dtype=torch.long, device=ids.device)  # (B, 1)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    with evaluating(model):
        for _ in range(max_new_tokens):
            output = adapter.call(model, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": out})
            logits = read_logits(output) if read_logits is not None else None
            if logits is None:
                raise ValueError(f"adapter {adapter.name!r} reads no next-token logits (B, T, V) from the output")
            nxt = logits[:, -1].argmax(dim=-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if done.all():
                break
    return out
