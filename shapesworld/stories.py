"""Scene descriptions followed by a question, for a small decoder-only language model, with ground truth.

A ShapesWorld scene (:mod:`shapesworld.scenes`) becomes a short story: one sentence per object, in
the scene's object order, then a question whose answer is one word of the description::

    the square is red . the circle is blue . Q: what colour is the square ? A: red

The questions are the well-posed ``"colour"`` and ``"shape"`` questions of
:func:`shapesworld.language.questions` ("what colour is the <shape>", asked only when one object
has that shape; "what shape is the <colour> object", asked only when one object has that colour).
To answer, a model must find the sentence of the object the question names and copy one word of
it, so the ground truth of every story is known word by word:

* ``key``: the description word that determines the answer (the colour word of ``"the square is
  red"`` for a colour question, its shape word for a shape question); the answer *is* that word;
* ``subject``: the other content word of the same sentence, the one that matches the question's
  slot word (``"square"`` above); it locates the sentence.

Scenes come from :func:`story_world` (2 to 5 objects, so the number of sentences and the position
of the answer's sentence vary). :func:`encode_stories` writes ``[BOS]`` followed by the words, so
word ``i`` of a story is token ``i + TOKEN_OFFSET`` of its ids.

Everything random takes a ``numpy.random.Generator``, so stories are deterministic given a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .language import Vocabulary, questions
from .scenes import COLOURS, SHAPES, Scene, ShapesWorld

__all__ = [
    "STORY_KINDS",
    "STORY_OBJECTS",
    "TOKEN_OFFSET",
    "Story",
    "describe_scene",
    "draw_stories",
    "encode_stories",
    "quiz",
    "sample_story",
    "stories",
    "story_vocabulary",
    "story_world",
    "word_positions",
]

STORY_KINDS: tuple[str, ...] = ("colour", "shape")
"""Kinds of question a story ends with (those of :func:`shapesworld.language.questions` answered by one word)."""

STORY_OBJECTS: tuple[int, int] = (2, 5)
"""Fewest and most objects placed per scene by :func:`story_world` (placement may drop one: a
crowded scene can hold fewer)."""

TOKEN_OFFSET: int = 1
"""Position of word 0 of a story in its encoding (after ``[BOS]``)."""

_SENTENCE = ("the", "{shape}", "is", "{colour}", ".")  # one object's sentence; shape at 1, colour at 3
_SHAPE_AT, _COLOUR_AT = 1, 3


@dataclass(frozen=True)
class Story:
    """A scene description and a question about it, with the answer and word-level ground truth.

    Attributes:
        text: The prompt's words separated by single spaces (description and question, ending with
            ``"A:"``; the answer is not part of it).
        words: ``tuple(text.split())``.
        answer: The answer word (a colour or a shape).
        kind: ``"colour"`` or ``"shape"``.
        key: Index into ``words`` of the description word that determines the answer (equal to it).
        subject: Index into ``words`` of the word of the same sentence that the question names.
        description_length: Number of description words; words ``0..description_length-1`` are the
            description, the rest the question.
        referent: Index into ``scene.objects`` of the object asked about.

    Raises:
        ValueError: If the fields are inconsistent.
    """

    text: str
    words: tuple[str, ...]
    answer: str
    kind: str
    key: int
    subject: int
    description_length: int
    referent: int

    def __post_init__(self) -> None:
        if self.words != tuple(self.text.split()) or " ".join(self.words) != self.text:
            raise ValueError(f"words must equal text.split() of single-spaced text, got {self.words} for {self.text!r}")
        if self.kind not in STORY_KINDS:
            raise ValueError(f"unknown story kind {self.kind!r}, expected one of {STORY_KINDS}")
        for name, index in (("key", self.key), ("subject", self.subject)):
            if not 0 <= index < self.description_length:
                raise ValueError(
                    f"{name} must index a description word (0..{self.description_length - 1}), got {index}"
                )
        if self.words[self.key] != self.answer:
            raise ValueError(f"the key word {self.words[self.key]!r} must be the answer {self.answer!r}")


def describe_scene(scene: Scene) -> tuple[str, ...]:
    """Returns the description of a scene: ``"the <shape> is <colour> ."`` per object, in object order.

    Args:
        scene: The scene.

    Returns:
        The words; object ``i``'s sentence is words ``5 * i .. 5 * i + 4``.
    """
    words: list[str] = []
    for obj in scene.objects:
        words += [w.format(shape=obj.shape, colour=obj.colour) for w in _SENTENCE]
    return tuple(words)


def stories(scene: Scene) -> list[Story]:
    """Returns every well-posed story of a scene: one per colour and shape question.

    Args:
        scene: The scene.

    Returns:
        The stories, in the order of :func:`shapesworld.language.questions`.
    """
    description = describe_scene(scene)
    result = []
    for question in questions(scene):
        if question.kind not in STORY_KINDS:
            continue
        (referent,) = question.referents
        start = len(_SENTENCE) * referent
        key, subject = (_COLOUR_AT, _SHAPE_AT) if question.kind == "colour" else (_SHAPE_AT, _COLOUR_AT)
        words = (*description, "Q:", *question.words, "?", "A:")
        result.append(
            Story(
                text=" ".join(words),
                words=words,
                answer=question.answer,
                kind=question.kind,
                key=start + key,
                subject=start + subject,
                description_length=len(description),
                referent=referent,
            )
        )
    return result


def sample_story(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Story:
    """Draws one story of a scene: the kind uniformly among those the scene allows, then a story of it.

    Args:
        scene: A scene with at least one object.
        rng: Random generator.
        kind: ``"colour"``, ``"shape"`` or None for either.

    Returns:
        The story.

    Raises:
        ValueError: If the kind is unknown or the scene has no story of that kind.
    """
    if kind is not None and kind not in STORY_KINDS:
        raise ValueError(f"unknown story kind {kind!r}, expected one of {STORY_KINDS} or None")
    by_kind = {k: [s for s in stories(scene) if s.kind == k] for k in STORY_KINDS}
    kinds = [k for k in STORY_KINDS if by_kind[k]] if kind is None else [kind]
    if not kinds or not by_kind[kinds[0]]:
        raise ValueError(
            f"the scene has no well-posed {kind or 'colour or shape'} question; pass another kind or another scene"
        )
    pool = by_kind[kinds[int(rng.integers(len(kinds)))]]
    return pool[int(rng.integers(len(pool)))]


def draw_stories(seed: int, n: int, rng: np.random.Generator, kind: str | None = None) -> list[Story]:
    """Draws ``n`` stories, one per scene of ``story_world(seed)`` in index order (:func:`sample_story`),
    skipping the rare scenes with no well-posed question of the kind (every shape and colour shared).

    Args:
        seed: World seed.
        n: Number of stories.
        rng: Random generator of the questions.
        kind: ``"colour"``, ``"shape"`` or None for either.

    Returns:
        The stories.
    """
    world = story_world(seed)
    result: list[Story] = []
    index = 0
    while len(result) < n:
        scene = world.scene(index)
        index += 1
        if any(kind in (None, s.kind) for s in stories(scene)):
            result.append(sample_story(scene, rng, kind))
    return result


def quiz(scene: Scene, rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Returns a training sequence: the scene's description, then questions and their answers.

    ``"<description> Q: <question 1> ? A: <answer 1> Q: <question 2> ? A: <answer 2> ..."``: between one
    and all of the questions of :func:`stories` (the number drawn uniformly), in an order drawn with
    ``rng``. One sequence teaches several answers (a language model trained on single stories stays for
    thousands of steps at guessing among the colours or shapes present), and the first question always
    follows the description directly, as in a story's prompt.

    Args:
        scene: A scene with at least one story.
        rng: Random generator of the question order.

    Returns:
        ``(words, answers)``: the words and the indices into them of the answers.

    Raises:
        ValueError: If the scene has no story.
    """
    every = stories(scene)
    if not every:
        raise ValueError("the scene has no well-posed colour or shape question; skip it (see draw_stories)")
    words = list(every[0].words[: every[0].description_length])
    answers = []
    count = int(rng.integers(1, len(every) + 1))
    for i in rng.permutation(len(every))[:count].tolist():
        story = every[i]
        words += [*story.words[story.description_length :], story.answer]
        answers.append(len(words) - 1)
    return tuple(words), tuple(answers)


def story_world(seed: int) -> ShapesWorld:
    """The ShapesWorld the stories are drawn from: ``STORY_OBJECTS`` objects per scene."""
    return ShapesWorld(min_objects=STORY_OBJECTS[0], max_objects=STORY_OBJECTS[1], seed=seed)


def story_vocabulary() -> Vocabulary:
    """Returns the vocabulary of every word a story and its answer can contain.

    Returns:
        The vocabulary (special tokens first): the sentence and question words, colours and shapes.
    """
    question_words = ("Q:", "what", "colour", "shape", "is", "the", "object", "?", "A:")
    return Vocabulary(["the", "is", ".", *question_words, *COLOURS, *SHAPES])


def encode_stories(
    batch: Sequence[Story], vocab: Vocabulary, *, answers: bool = False, length: int | None = None
) -> dict[str, Tensor]:
    """Encodes stories as a right-padded causal-LM batch.

    Args:
        batch: The stories.
        vocab: :func:`story_vocabulary`.
        answers: Append each answer and ``[EOS]`` (training sequences); by default the prompt ends at
            ``"A:"`` and the model's next token is its answer.
        length: Length ``L`` to pad to, or None for the longest.

    Returns:
        ``{"input_ids": (B, L) int64, "attention_mask": (B, L) int64}``: ``[BOS]``, the words (then
        the answer and ``[EOS]``), ``[PAD]`` to ``L``. Word ``i`` is token ``i + TOKEN_OFFSET``.

    Raises:
        ValueError: If ``batch`` is empty or an encoding is longer than ``length``.
    """
    if not batch:
        raise ValueError("no stories to encode; pass at least one Story")
    sentences = [(*s.words, s.answer) if answers else s.words for s in batch]
    ids, mask = vocab.encode_batch(
        sentences, cls_token=False, sep_token=False, length=length, bos_token=True, eos_token=answers
    )  # (B, L), (B, L)
    return {"input_ids": ids, "attention_mask": mask.long()}


def word_positions(batch: Sequence[Story], length: int) -> dict[str, Tensor]:
    """Token positions of each story's ground truth in its encoding.

    Args:
        batch: The stories, as encoded by :func:`encode_stories`.
        length: ``L`` of the encoding.

    Returns:
        ``{"key": (B,), "subject": (B,)}`` token indices, and ``"description"``: ``(B, L)`` bool, True
        at the description's tokens (``[BOS]``, the question and padding excluded).
    """
    key = torch.tensor([s.key + TOKEN_OFFSET for s in batch])  # (B,)
    subject = torch.tensor([s.subject + TOKEN_OFFSET for s in batch])  # (B,)
    n = torch.tensor([s.description_length for s in batch])  # (B,)
    columns = torch.arange(length)[None, :]  # (1, L)
    description = (columns >= TOKEN_OFFSET) & (columns < TOKEN_OFFSET + n[:, None])  # (B, L)
    return {"key": key, "subject": subject, "description": description}
