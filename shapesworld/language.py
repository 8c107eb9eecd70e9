"""Text derived from ShapesWorld scenes, with word-level ground truth, and a word tokenizer.

ShapesWorld scenes (see :mod:`shapesworld.scenes`) hold a few coloured shapes, at most one per
colour-shape class, with exact positions. This module turns a scene into the three kinds of text
used to train and explain small bi-modal and encoder-decoder transformers, and records for every
word which scene object it is about, so explanations can be scored against ground truth:

* **Captions** for a CLIP-style dual encoder: ``"a red circle left of a blue square"``
  (:func:`caption`, :func:`all_captions`), and false captions that differ from a true one in a
  single phrase (:func:`negative_caption`). A :class:`Caption` lists the objects it names and,
  word by word, the object each word describes; a negative caption also lists the words that make
  it false.
* **Questions** for a VQA model: ``"what colour is the triangle"`` -> ``"green"``
  (:func:`questions`, :func:`sample_question`). A :class:`Question` lists the objects it refers to
  and the words that determine its answer.
* **Translations** of captions into a made-up target language with a known word alignment
  (:func:`translate`): articles are dropped, adjectives follow their noun and two-word relation
  phrases become one word.

:class:`Vocabulary` maps words to ids (special tokens first) and batches sentences into padded
tensors with attention masks.

Everything random takes a ``numpy.random.Generator``, so results are deterministic given a seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .scenes import COLOURS, SHAPES, Scene, SceneObject

__all__ = [
    "ANSWERS",
    "MAX_COUNT",
    "PLURALS",
    "QUESTION_KINDS",
    "RELATIONS",
    "SPECIAL_TOKENS",
    "TOY_LEXICON",
    "Caption",
    "Question",
    "Translation",
    "Vocabulary",
    "all_captions",
    "caption",
    "describe",
    "negative_caption",
    "questions",
    "relation",
    "sample_question",
    "translate",
]

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relation phrases, as they appear in captions."""

_OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    """A caption of a scene with word-level ground truth.

    Attributes:
        text: Lowercase words separated by single spaces, no punctuation, e.g.
            ``"a red circle left of a blue square"``.
        words: ``tuple(text.split())``.
        objects: Indices into ``scene.objects`` of the objects the caption names, in order of
            mention. A noun phrase that names no object of the scene (in a negative caption)
            contributes nothing.
        word_objects: For each word, the index of the scene object it describes (colour and
            shape words and their article), or None (relation words, and the words of a negative
            caption that describe no object, see :func:`negative_caption`).
        false_words: Indices into ``words`` of the words that make a negative caption false (the
            replaced colour or shape word, or all words of the flipped relation phrase); empty for
            a true caption.

    Raises:
        ValueError: If the fields are inconsistent.
    """

    text: str
    words: tuple[str, ...]
    objects: tuple[int, ...]
    word_objects: tuple[int | None, ...]
    false_words: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.words != tuple(self.text.split()) or " ".join(self.words) != self.text:
            raise ValueError(f"words must equal text.split() of single-spaced text, got {self.words} for {self.text!r}")
        if len(self.word_objects) != len(self.words):
            raise ValueError(
                f"need one word_objects entry per word, got {len(self.word_objects)} for {len(self.words)} words"
            )
        if any(not 0 <= i < len(self.words) for i in self.false_words):
            raise ValueError(f"false_words must index words (0..{len(self.words) - 1}), got {self.false_words}")


def relation(a: SceneObject, b: SceneObject) -> str:
    """Returns the dominant spatial relation of one object relative to another.

    With ``(dx, dy) = a.center - b.center`` (x grows to the right, y grows downwards), the
    relation is horizontal if ``|dx| >= |dy|`` (ties go to the horizontal relation), else
    vertical: ``"left of"`` if ``dx < 0``, ``"right of"`` if ``dx > 0``, ``"above"`` if
    ``dy < 0`` (a is higher in the image), ``"below"`` if ``dy > 0``.

    Args:
        a: The object being located.
        b: The reference object.

    Returns:
        One of ``RELATIONS``.

    Raises:
        ValueError: If the two centres coincide, so that no relation holds.
    """
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if dx == 0 and dy == 0:
        raise ValueError(
            f"objects {a.name!r} and {b.name!r} share the centre {a.center}; give them distinct centres to relate them"
        )
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def describe(obj: SceneObject) -> str:
    """Returns the noun phrase of an object without article.

    Args:
        obj: A scene object.

    Returns:
        ``"<colour> <shape>"``, e.g. ``"red circle"``.
    """
    return f"{obj.colour} {obj.shape}"


def _noun_phrase(colour: str, shape: str, index: int | None) -> tuple[list[str], list[int | None]]:
    """Returns the words ``a <colour> <shape>`` and, for each, the object they describe."""
    return ["a", colour, shape], [index, index, index]


def _caption_for(scene: Scene, i: int, j: int | None = None) -> Caption:
    """Builds the true caption naming object ``i``, or ``i`` related to object ``j``.

    Args:
        scene: The scene.
        i: Index of the first (or only) object named.
        j: Index of the reference object, or None for a single-object caption.

    Returns:
        ``"a <colour_i> <shape_i>"`` or ``"a <colour_i> <shape_i> <relation> a <colour_j> <shape_j>"``.
    """
    a = scene.objects[i]
    words, word_objects = _noun_phrase(a.colour, a.shape, i)
    objects = (i,)
    if j is not None:
        b = scene.objects[j]
        rel = relation(a, b).split()
        words += rel
        word_objects += [None] * len(rel)
        np_words, np_objects = _noun_phrase(b.colour, b.shape, j)
        words += np_words
        word_objects += np_objects
        objects = (i, j)
    return Caption(text=" ".join(words), words=tuple(words), objects=objects, word_objects=tuple(word_objects))


def _check_not_empty(scene: Scene) -> None:
    """Raises ValueError if the scene has no objects to caption."""
    if not scene.objects:
        raise ValueError("the scene has no objects; captions need a scene with at least one object")


def caption(scene: Scene, rng: np.random.Generator | None = None) -> Caption:
    """Returns a true caption of a scene.

    A scene with one object gets ``"a <colour> <shape>"``. A scene with two or more objects gets
    ``"a <colour> <shape> <relation> a <colour> <shape>"`` about two distinct objects, drawn with
    ``rng.choice(n, size=2, replace=False)`` (the first is the one located, the second the
    reference), or objects 0 and 1 if ``rng`` is None. The relation is :func:`relation`.

    Args:
        scene: A scene with at least one object.
        rng: Random generator choosing the two objects, or None for the first two.

    Returns:
        The caption.

    Raises:
        ValueError: If the scene has no objects.
    """
    _check_not_empty(scene)
    n = len(scene.objects)
    if n == 1:
        return _caption_for(scene, 0)
    if rng is None:
        return _caption_for(scene, 0, 1)
    i, j = rng.choice(n, size=2, replace=False)
    return _caption_for(scene, int(i), int(j))


def all_captions(scene: Scene) -> list[Caption]:
    """Returns every true caption of a scene.

    Args:
        scene: A scene with ``n`` objects.

    Returns:
        ``n + n * (n - 1)`` captions: first the single-object caption of each object in object
        order, then the pair caption of every ordered pair ``(i, j)``, ``i != j``, in
        lexicographic order of ``(i, j)``.
    """
    n = len(scene.objects)
    captions = [_caption_for(scene, i) for i in range(n)]
    captions += [_caption_for(scene, i, j) for i, j in itertools.permutations(range(n), 2)]
    return captions


def negative_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """Returns a caption of the same form as :func:`caption` that is false for the scene.

    A true caption is drawn with ``caption(scene, rng)`` and one phrase of it is changed. The
    kind of change is drawn uniformly among the kinds possible for that caption, then the change
    uniformly among the changes of that kind:

    * ``"colour"``: the colour word of a noun phrase is replaced so that the phrase names a
      colour-shape class absent from the scene;
    * ``"shape"``: likewise for the shape word;
    * ``"relation"`` (pair captions only): the relation is replaced by its opposite (``left of``
      <-> ``right of``, ``above`` <-> ``below``). Since the relation is the dominant one, the
      opposite never holds; and as a scene has at most one object per class, no other pair of
      objects can make the caption true.

    Ground truth of the result:

    * ``objects`` lists the objects whose noun phrase is unchanged (so it drops the object of a
      changed noun phrase; it is unchanged by a relation flip);
    * ``word_objects``: words of unchanged noun phrases keep their object; in a changed noun
      phrase the replaced word and the article are None (the phrase names no object) while the
      other word, which still matches the original object, keeps that object's index; relation
      words are None;
    * ``false_words`` holds the index of the replaced word, or the indices of the new relation
      phrase's words.

    Args:
        scene: A scene with at least one object.
        rng: Random generator.

    Returns:
        The false caption.

    Raises:
        ValueError: If the scene has no objects.
    """
    positive = caption(scene, rng)
    words = list(positive.words)
    word_objects = list(positive.word_objects)
    present = {(obj.colour, obj.shape) for obj in scene.objects}

    # Candidate changes by kind: (position of the replaced word, position of the other word, new word).
    changes: dict[str, list[tuple[int, int, str]]] = {"colour": [], "shape": []}
    np_starts = [0] if len(positive.objects) == 1 else [0, len(words) - 3]
    for start in np_starts:
        colour, shape = words[start + 1], words[start + 2]
        changes["colour"] += [(start + 1, start + 2, c) for c in COLOURS if (c, shape) not in present]
        changes["shape"] += [(start + 2, start + 1, s) for s in SHAPES if (colour, s) not in present]
    kinds = [kind for kind in ("colour", "shape") if changes[kind]]
    if len(positive.objects) == 2:
        kinds.append("relation")
    kind = kinds[int(rng.integers(len(kinds)))]

    objects = list(positive.objects)
    if kind == "relation":
        rel_start, rel_stop = 3, len(words) - 3
        new_rel = _OPPOSITE[" ".join(words[rel_start:rel_stop])].split()
        words[rel_start:rel_stop] = new_rel
        word_objects[rel_start:rel_stop] = [None] * len(new_rel)
        false_words = tuple(range(rel_start, rel_start + len(new_rel)))
    else:
        position, _, new_word = changes[kind][int(rng.integers(len(changes[kind])))]
        start = np_starts[0] if position < 3 else np_starts[-1]
        objects.remove(word_objects[position])
        words[position] = new_word
        word_objects[position] = None
        word_objects[start] = None  # the article: the phrase as a whole names no object
        false_words = (position,)
    return Caption(
        text=" ".join(words),
        words=tuple(words),
        objects=tuple(objects),
        word_objects=tuple(word_objects),
        false_words=false_words,
    )


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------

QUESTION_KINDS: tuple[str, ...] = ("colour", "shape", "exists", "count")
"""Kinds of question, in the order :func:`questions` lists them."""

MAX_COUNT: int = 3
"""Largest answer of a count question; count questions whose answer would be larger are not asked."""

ANSWERS: tuple[str, ...] = (*COLOURS, *SHAPES, "yes", "no", *(str(k) for k in range(MAX_COUNT + 1)))
"""Answer classes, in this fixed order: the colours in ``COLOURS`` order (red, green, blue,
yellow), the shapes in ``SHAPES`` order (circle, square, triangle, cross), ``"yes"``, ``"no"``,
then the counts ``"0"``, ``"1"``, ``"2"``, ``"3"``."""

PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
"""Plural of each shape word, as used in count questions."""


@dataclass(frozen=True)
class Question:
    """A question about a scene with its answer and word-level ground truth.

    Attributes:
        text: Lowercase words separated by single spaces, no punctuation.
        words: ``tuple(text.split())``.
        answer: One of ``ANSWERS``.
        kind: One of ``QUESTION_KINDS``.
        referents: Indices into ``scene.objects`` of the objects the question is about, in object
            order (empty for an "exists" question answered "no" and a count of 0).
        key_words: Indices into ``words`` of the words that determine the answer.

    Raises:
        ValueError: If the fields are inconsistent.
    """

    text: str
    words: tuple[str, ...]
    answer: str
    kind: str
    referents: tuple[int, ...]
    key_words: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.words != tuple(self.text.split()) or " ".join(self.words) != self.text:
            raise ValueError(f"words must equal text.split() of single-spaced text, got {self.words} for {self.text!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"unknown answer {self.answer!r}, expected one of {ANSWERS}")
        if self.kind not in QUESTION_KINDS:
            raise ValueError(f"unknown question kind {self.kind!r}, expected one of {QUESTION_KINDS}")
        if any(not 0 <= i < len(self.words) for i in self.key_words):
            raise ValueError(f"key_words must index words (0..{len(self.words) - 1}), got {self.key_words}")


# Question templates: the words, with "{}" for the slot words, and the positions of the slot
# words, which are the key words. Shared by questions() and Vocabulary.questions().
_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "colour": (("what", "colour", "is", "the", "{}"), (4,)),
    "shape": (("what", "shape", "is", "the", "{}", "object"), (4,)),
    "exists": (("is", "there", "a", "{}", "{}"), (3, 4)),
    "count": (("how", "many", "{}", "are", "there"), (2,)),
}


def _question(kind: str, slots: Sequence[str], answer: str, referents: Sequence[int]) -> Question:
    """Fills the template of a question kind.

    Args:
        kind: One of ``QUESTION_KINDS``.
        slots: The words filling the template's slots, in order.
        answer: The answer.
        referents: The objects the question is about.

    Returns:
        The question, with the slot words as key words.
    """
    template, key_words = _TEMPLATES[kind]
    words = list(template)
    for position, word in zip(key_words, slots, strict=True):
        words[position] = word
    return Question(
        text=" ".join(words),
        words=tuple(words),
        answer=answer,
        kind=kind,
        referents=tuple(referents),
        key_words=key_words,
    )


def questions(scene: Scene) -> list[Question]:
    """Returns every well-posed question about a scene.

    Questions come in ``QUESTION_KINDS`` order, and within a kind in ``SHAPES`` / ``COLOURS``
    order (``COLOURS`` x ``SHAPES`` for "exists"):

    * colour: ``"what colour is the <shape>"`` for each shape held by exactly one object; key
      word: the shape;
    * shape: ``"what shape is the <colour> object"`` for each colour held by exactly one object;
      key word: the colour;
    * exists: ``"is there a <colour> <shape>"`` for each of the 16 classes, answered yes/no; key
      words: the colour and the shape;
    * count: ``"how many <shape>s are there"`` (plural from ``PLURALS``) for each shape, answered
      ``"0"`` to ``"3"``; key word: the plural. A shape held by more than ``MAX_COUNT`` objects
      (possible only in worlds with more than 3 objects per scene) gets no count question, as its
      answer is not in ``ANSWERS``.

    Args:
        scene: The scene; it may have no objects.

    Returns:
        The questions.
    """
    objects = scene.objects
    by_shape = {shape: [i for i, obj in enumerate(objects) if obj.shape == shape] for shape in SHAPES}
    by_colour = {colour: [i for i, obj in enumerate(objects) if obj.colour == colour] for colour in COLOURS}
    result = []
    for shape in SHAPES:
        if len(by_shape[shape]) == 1:
            i = by_shape[shape][0]
            result.append(_question("colour", [shape], objects[i].colour, [i]))
    for colour in COLOURS:
        if len(by_colour[colour]) == 1:
            i = by_colour[colour][0]
            result.append(_question("shape", [colour], objects[i].shape, [i]))
    for colour, shape in itertools.product(COLOURS, SHAPES):
        found = [i for i in by_shape[shape] if objects[i].colour == colour]
        result.append(_question("exists", [colour, shape], "yes" if found else "no", found))
    for shape in SHAPES:
        if len(by_shape[shape]) <= MAX_COUNT:
            result.append(_question("count", [PLURALS[shape]], str(len(by_shape[shape])), by_shape[shape]))
    return result


def sample_question(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Question:
    """Draws one question about a scene.

    The kind is drawn uniformly among the kinds that have at least one question for the scene
    (or is the given kind), then a question of that kind uniformly. For "exists", the answer is
    first drawn yes/no with probability 1/2 each when questions with both answers exist, then a
    question with that answer uniformly.

    Args:
        scene: The scene.
        rng: Random generator.
        kind: One of ``QUESTION_KINDS``, or None for any kind.

    Returns:
        The question.

    Raises:
        ValueError: If the kind is unknown, or the scene has no question of that kind.
    """
    if kind is not None and kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}, expected one of {QUESTION_KINDS} or None")
    by_kind: dict[str, list[Question]] = {k: [] for k in QUESTION_KINDS}
    for question in questions(scene):
        by_kind[question.kind].append(question)
    if kind is None:
        kinds = [k for k in QUESTION_KINDS if by_kind[k]]
        kind = kinds[int(rng.integers(len(kinds)))]
    elif not by_kind[kind]:
        raise ValueError(
            f"the scene has no well-posed {kind!r} question; pass kind=None or another kind "
            f"(available: {[k for k in QUESTION_KINDS if by_kind[k]]})"
        )
    pool = by_kind[kind]
    if kind == "exists":
        yes = [q for q in pool if q.answer == "yes"]
        no = [q for q in pool if q.answer == "no"]
        if yes and no:
            pool = yes if rng.random() < 0.5 else no
    return pool[int(rng.integers(len(pool)))]


# ---------------------------------------------------------------------------------------------
# Toy translation
# ---------------------------------------------------------------------------------------------

TOY_LEXICON: dict[str, str] = {
    "red": "dwex",
    "green": "zulp",
    "blue": "mibz",
    "yellow": "quoj",
    "circle": "bruzat",
    "square": "kelvip",
    "triangle": "drenok",
    "cross": "fimbaz",
    "left of": "oskev",
    "right of": "uvrin",
    "above": "zeptu",
    "below": "gworn",
}
"""Toy-language word of each colour word, shape word and relation phrase (made-up words)."""


@dataclass(frozen=True)
class Translation:
    """A caption and its toy-language translation with the word alignment.

    Attributes:
        source: The caption words.
        target: The toy-language words.
        alignment: For each target word, the indices of the source words it translates, in
            increasing order (at least one each). Source articles align to no target word.

    Raises:
        ValueError: If the alignment does not fit the source and target.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    alignment: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.alignment) != len(self.target):
            raise ValueError(f"need one alignment per target word, got {len(self.alignment)} for {len(self.target)}")
        for t, aligned in enumerate(self.alignment):
            if not aligned or any(not 0 <= s < len(self.source) for s in aligned):
                raise ValueError(
                    f"target word {t} must align to source indices in 0..{len(self.source) - 1}, got {aligned}"
                )


def translate(cap: Caption) -> Translation:
    """Translates a caption into the toy language.

    Rules, applied left to right: the article ``"a"`` is dropped; a noun phrase
    ``<colour> <shape>`` becomes ``<shape'> <colour'>`` (adjective after noun), each word aligned
    to its source word; a relation phrase (``RELATIONS``) becomes its single toy word, aligned to
    all of its source words. Phrase order is kept, so ``NP1 REL NP2`` becomes
    ``NP1' REL' NP2'``. Words are looked up in ``TOY_LEXICON``.

    Args:
        cap: A caption, true or negative.

    Returns:
        The translation; ``source`` is ``cap.words``.

    Raises:
        ValueError: If the caption contains a word or word sequence these rules do not cover.
    """
    words = cap.words
    relations = sorted((r.split() for r in RELATIONS), key=len, reverse=True)  # longest match first
    target: list[str] = []
    alignment: list[tuple[int, ...]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "a":
            i += 1
            continue
        if word in COLOURS and i + 1 < len(words) and words[i + 1] in SHAPES:
            target += [TOY_LEXICON[words[i + 1]], TOY_LEXICON[word]]
            alignment += [(i + 1,), (i,)]
            i += 2
            continue
        rel = next((r for r in relations if list(words[i : i + len(r)]) == r), None)
        if rel is None:
            raise ValueError(
                f"cannot translate word {word!r} at position {i} of {cap.text!r}: expected 'a', "
                f"'<colour> <shape>' or a relation in {RELATIONS}; translate only captions of this module"
            )
        target.append(TOY_LEXICON[" ".join(rel)])
        alignment.append(tuple(range(i, i + len(rel))))
        i += len(rel)
    return Translation(source=tuple(words), target=tuple(target), alignment=tuple(alignment))


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[BOS]", "[EOS]")
"""Special tokens; they take ids 0 to 5 in this order in every :class:`Vocabulary`."""


class Vocabulary:
    """Word-level vocabulary: the special tokens (ids 0..5), then the sorted unique words.

    Args:
        words: The words; duplicates and special tokens among them are ignored.

    Raises:
        ValueError: If a word is empty or contains whitespace.
    """

    def __init__(self, words: Iterable[str]) -> None:
        if isinstance(words, str):
            raise ValueError("words must be an iterable of words, not a string; pass e.g. text.split()")
        unique = set()
        for word in words:
            if not isinstance(word, str) or not word or word != word.strip() or len(word.split()) != 1:
                raise ValueError(f"words must be non-empty strings without whitespace, got {word!r}; split phrases")
            unique.add(word)
        self._tokens: tuple[str, ...] = SPECIAL_TOKENS + tuple(sorted(unique - set(SPECIAL_TOKENS)))
        self._ids: dict[str, int] = {token: i for i, token in enumerate(self._tokens)}

    @classmethod
    def captions(cls) -> Vocabulary:
        """Returns the vocabulary of every word a caption or a negative caption can contain.

        Returns:
            The vocabulary: ``"a"``, the colours, the shapes and the words of ``RELATIONS``.
        """
        relation_words = (word for phrase in RELATIONS for word in phrase.split())
        return cls(["a", *COLOURS, *SHAPES, *relation_words])

    @classmethod
    def questions(cls) -> Vocabulary:
        """Returns the vocabulary of every word a question can contain.

        Returns:
            The vocabulary: the template words of all question kinds, the colours, the shapes
            and the shape plurals.
        """
        template_words = (word for template, _ in _TEMPLATES.values() for word in template if word != "{}")
        return cls([*template_words, *COLOURS, *SHAPES, *PLURALS.values()])

    @classmethod
    def toy(cls) -> Vocabulary:
        """Returns the vocabulary of the toy language.

        Returns:
            The vocabulary of the values of ``TOY_LEXICON``.
        """
        return cls(TOY_LEXICON.values())

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens: {len(SPECIAL_TOKENS)} special, {len(self) - len(SPECIAL_TOKENS)} words)"

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens, the token of id ``i`` at index ``i``."""
        return self._tokens

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]`` (0)."""
        return self._ids["[PAD]"]

    @property
    def cls_id(self) -> int:
        """Id of ``[CLS]`` (1)."""
        return self._ids["[CLS]"]

    @property
    def sep_id(self) -> int:
        """Id of ``[SEP]`` (2)."""
        return self._ids["[SEP]"]

    @property
    def unk_id(self) -> int:
        """Id of ``[UNK]`` (3)."""
        return self._ids["[UNK]"]

    @property
    def bos_id(self) -> int:
        """Id of ``[BOS]`` (4)."""
        return self._ids["[BOS]"]

    @property
    def eos_id(self) -> int:
        """Id of ``[EOS]`` (5)."""
        return self._ids["[EOS]"]

    def encode(
        self,
        words: Sequence[str],
        cls_token: bool = True,
        sep_token: bool = True,
        length: int | None = None,
        *,
        bos_token: bool = False,
        eos_token: bool = False,
    ) -> list[int]:
        """Encodes a sentence.

        The ids are, in order: ``[CLS]`` (if ``cls_token``), ``[BOS]`` (if ``bos_token``), one id
        per word (``[UNK]`` for unknown words), ``[EOS]`` (if ``eos_token``), ``[SEP]`` (if
        ``sep_token``), then ``[PAD]`` up to ``length``. With default flags: ``[CLS] w1 .. wn [SEP]``;
        a decoder target would use ``cls_token=False, sep_token=False, bos_token=True, eos_token=True``.

        Args:
            words: The words of the sentence (e.g. ``caption.words``), not a string.
            cls_token: Whether to prepend ``[CLS]``.
            sep_token: Whether to append ``[SEP]``.
            length: Total length to pad to, or None for no padding.
            bos_token: Whether to put ``[BOS]`` before the words.
            eos_token: Whether to put ``[EOS]`` after the words.

        Returns:
            The ids.

        Raises:
            ValueError: If ``words`` is a string, or the encoding is longer than ``length``.
        """
        if isinstance(words, str):
            raise ValueError(f"words must be a sequence of words, not the string {words!r}; pass text.split()")
        ids = [self._ids.get(word, self.unk_id) for word in words]
        ids = (
            [self.cls_id] * cls_token
            + [self.bos_id] * bos_token
            + ids
            + [self.eos_id] * eos_token
            + [self.sep_id] * sep_token
        )
        if length is not None:
            if len(ids) > length:
                raise ValueError(
                    f"the encoding of {len(words)} words needs length {len(ids)} (special tokens included), "
                    f"but length={length}; pass length >= {len(ids)} or length=None"
                )
            ids += [self.pad_id] * (length - len(ids))
        return ids

    def encode_batch(
        self,
        sentences: Sequence[Sequence[str]],
        cls_token: bool = True,
        sep_token: bool = True,
        length: int | None = None,
        *,
        bos_token: bool = False,
        eos_token: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes and pads a batch of sentences.

        Args:
            sentences: The sentences, each a sequence of words.
            cls_token: As in :meth:`encode`.
            sep_token: As in :meth:`encode`.
            length: Length ``L`` to pad to, or None for the longest encoding in the batch.
            bos_token: As in :meth:`encode`.
            eos_token: As in :meth:`encode`.

        Returns:
            ``(ids, attention_mask)``: ``(B, L)`` int64 ids and ``(B, L)`` bool mask, True at
            every position that is not padding.

        Raises:
            ValueError: If an encoding is longer than ``length``, or ``sentences`` is a string.
        """
        if isinstance(sentences, str):
            raise ValueError("sentences must be a sequence of word sequences, not a string")
        flags = dict(cls_token=cls_token, sep_token=sep_token, bos_token=bos_token, eos_token=eos_token)
        lengths = [len(self.encode(words, **flags)) for words in sentences]
        if length is None:
            length = max(lengths, default=0)
        encoded = [self.encode(words, length=length, **flags) for words in sentences]  # raises if too long
        ids = torch.tensor(encoded, dtype=torch.long).reshape(len(sentences), length)  # (B, L)
        mask = torch.arange(length)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]  # (B, L)
        return ids, mask

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> list[str]:
        """Decodes ids into words.

        Args:
            ids: Token ids (a list, or a 1-D tensor).
            skip_special: Whether to leave out special tokens (``[UNK]`` included).

        Returns:
            The tokens.

        Raises:
            ValueError: If an id is out of range.
        """
        words = []
        for value in ids:
            i = int(value)
            if not 0 <= i < len(self._tokens):
                raise ValueError(f"id {i} is out of range for a vocabulary of {len(self)} tokens; decode its own ids")
            if skip_special and i < len(SPECIAL_TOKENS):
                continue
            words.append(self._tokens[i])
        return words
