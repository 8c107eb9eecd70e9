"""Model input processors of ShapesWorld: what each embedded model takes for a batch of scenes.

The counterpart of a Hugging Face processor: pixels normalised as the models were trained, captions
and questions encoded with the toy vocabularies, shapes-vqa's region features (the stand-in for
LXMERT's detector features), shapes-detr's coordinate channels and shapes-translate's source and
target ids. Training, evaluation, notebooks and explorers all build model inputs here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .language import TOY_LEXICON, Vocabulary

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "normalize_pixels",
    "CAPTION_LENGTH",
    "encode_captions",
    "QUESTION_LENGTH",
    "REGION_GRID",
    "REGION_WINDOW",
    "region_features",
    "encode_questions",
    "vqa_inputs",
    "detr_pixels",
    "SOURCE_LENGTH",
    "TARGET_LENGTH",
    "translate_vocabulary",
    "encode_sources",
    "encode_targets",
]

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


CAPTION_LENGTH = 12  # [BOS] + at most 8 words + [EOS], padded


def encode_captions(captions, vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption word lists -> ``(input_ids (N, 12), attention_mask (N, 12))`` for shapes-clip's text tower."""
    return vocab.encode_batch(
        [c.words for c in captions],
        cls_token=False,
        sep_token=False,
        length=CAPTION_LENGTH,
        bos_token=True,
        eos_token=True,
    )


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> shapes-clip's pixel values (its processor step; CLIP's patch projection has no bias)."""
    return (images - PIXEL_MEAN) / PIXEL_STD


QUESTION_LENGTH = 10  # [CLS] + at most 7 words + [SEP], padded


REGION_GRID = 4  # shapes-vqa's regions: a 4 x 4 grid of 16 x 16-pixel cells


REGION_WINDOW = 16  # pixels each region's features see (its cell)


def _grid_boxes(gh: int, gw: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Boxes ``(B, gh*gw, 4)`` of the cells of a ``gh x gw`` grid, (x0, y0, x1, y1) in [0, 1], raster order."""
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    boxes = torch.stack([xs / gw, ys / gh, (xs + 1) / gw, (ys + 1) / gh], dim=-1).reshape(1, gh * gw, 4)
    return boxes.expand(batch, -1, -1).to(dtype)


def region_features(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] -> shapes-vqa's "regions", the counterpart of LXMERT's detector features.

    Each region is one cell of a ``REGION_GRID x REGION_GRID`` grid; its features are the
    normalised pixels of a ``REGION_WINDOW``-pixel window centred on the cell, flattened.

    Returns:
        ``visual_feats (B, G*G, 3*W*W)`` and ``visual_pos (B, G*G, 4)`` (the cells' boxes).
    """
    b, _, h, w = images.shape
    stride = h // REGION_GRID
    pad = (REGION_WINDOW - stride) // 2
    feats = F.unfold(normalize_pixels(images), REGION_WINDOW, stride=stride, padding=pad)  # (B, 3*W*W, G*G)
    return feats.transpose(1, 2), _grid_boxes(h // stride, w // stride, b, images.dtype)


def encode_questions(questions, vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Question word lists -> ``(input_ids (N, 10), attention_mask (N, 10))``, ``[CLS] words [SEP]``."""
    return vocab.encode_batch([q.words for q in questions], length=QUESTION_LENGTH)


def vqa_inputs(images: torch.Tensor, questions, vocab) -> dict:
    """Everything shapes-vqa takes for a batch of images and their questions."""
    feats, boxes = region_features(images)
    ids, mask = encode_questions(questions, vocab)
    return {"input_ids": ids, "attention_mask": mask, "visual_feats": feats, "visual_pos": boxes}


def detr_pixels(images: Tensor) -> Tensor:
    """Images in [0, 1] ``(B, 3, H, W)`` -> shapes-detr's input ``(B, 5, H, W)``: normalised RGB plus two
    coordinate channels (x and y in [-1, 1]).

    DETR adds position embeddings to the attention's queries and keys only, never to the values, so a
    box can only be regressed from position cues the backbone's features carry; a deep ResNet gets them
    from its image-wide receptive field and zero padding, a 2-stage toy backbone does not (trained on RGB
    alone, it predicts every box at the image's vertical centre). The coordinate channels give them.
    """
    b, _, h, w = images.shape
    ys = torch.linspace(-1, 1, h, dtype=images.dtype, device=images.device)
    xs = torch.linspace(-1, 1, w, dtype=images.dtype, device=images.device)
    coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)  # (2, H, W): x, y
    return torch.cat([normalize_pixels(images), coords.expand(b, -1, -1, -1)], dim=1)  # (B, 5, H, W)


SOURCE_LENGTH = 9  # at most 8 caption words + [EOS]


TARGET_LENGTH = 7  # [BOS] + at most 5 toy words + [EOS]


def translate_vocabulary():
    """One vocabulary for captions and toy words (Marian shares its embeddings between both sides)."""
    return Vocabulary([*Vocabulary.captions().tokens[6:], *TOY_LEXICON.values()])


def encode_sources(captions, vocab, length: int | None = SOURCE_LENGTH) -> dict[str, Tensor]:
    """Captions -> ``{"input_ids": (N, S), "attention_mask": (N, S)}``, ``words [EOS]`` (Marian style)."""
    ids, mask = vocab.encode_batch(
        [c.words for c in captions], cls_token=False, sep_token=False, eos_token=True, length=length
    )
    return {"input_ids": ids, "attention_mask": mask.long()}


def encode_targets(translations, vocab, length: int | None = TARGET_LENGTH) -> Tensor:
    """Translations -> ``(N, T + 1)`` ids ``[BOS] words [EOS] [PAD]..``.

    Decoder inputs are ``[:, :-1]``, labels ``[:, 1:]``."""
    ids, _ = vocab.encode_batch(
        [t.target for t in translations],
        cls_token=False,
        sep_token=False,
        bos_token=True,
        eos_token=True,
        length=length,
    )
    return ids
