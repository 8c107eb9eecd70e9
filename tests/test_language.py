"""Tests for the captions, questions, toy translations and vocabulary derived from ShapesWorld scenes."""

import collections
import itertools

import numpy as np
import pytest
import torch

from shapesworld.language import (
    ANSWERS,
    MAX_COUNT,
    PLURALS,
    QUESTION_KINDS,
    RELATIONS,
    SPECIAL_TOKENS,
    TOY_LEXICON,
    Caption,
    Question,
    Translation,
    Vocabulary,
    all_captions,
    caption,
    describe,
    negative_caption,
    questions,
    relation,
    sample_question,
    translate,
)
from shapesworld.scenes import COLOUR_RGB, COLOURS, SHAPES, Scene, SceneObject, ShapesWorld

N_SCENES = 300


def make_object(colour, shape, center, size=4):
    """A scene object with a known centre; the mask is a small empty array."""
    x, y = center
    return SceneObject(
        shape=shape,
        colour=colour,
        rgb=COLOUR_RGB[colour],
        size=size,
        center=(float(x), float(y)),
        box=(int(x - size / 2), int(y - size / 2), int(x + size / 2), int(y + size / 2)),
        mask=np.zeros((8, 8), dtype=bool),
    )


def make_scene(*specs):
    """A scene of ``(colour, shape, (x, y))`` objects."""
    objects = tuple(make_object(colour, shape, center) for colour, shape, center in specs)
    return Scene(image=np.zeros((8, 8, 3), dtype=np.float32), objects=objects, index=0, seed=0)


@pytest.fixture(scope="module")
def hand_scene():
    # red circle left of blue square; green triangle above the red circle.
    return make_scene(("red", "circle", (10, 30)), ("blue", "square", (40, 32)), ("green", "triangle", (12, 5)))


@pytest.fixture(scope="module")
def question_scene():
    # Two circles, two blue objects: only "square" and "red" are unique.
    return make_scene(("red", "circle", (10, 10)), ("blue", "square", (40, 10)), ("blue", "circle", (10, 40)))


@pytest.fixture(scope="module")
def full_scene():
    """All 16 classes on a 4 x 4 grid."""
    specs = [
        (colour, shape, (10 + 20 * (k % 4), 10 + 20 * (k // 4)))
        for k, (colour, shape) in enumerate(itertools.product(COLOURS, SHAPES))
    ]
    return make_scene(*specs)


@pytest.fixture(scope="module")
def scenes():
    return ShapesWorld(seed=11).scenes(N_SCENES)


def find(scene, colour, shape):
    """Index of the object of a class, or None."""
    return next((i for i, obj in enumerate(scene.objects) if (obj.colour, obj.shape) == (colour, shape)), None)


def caption_holds(words, scene):
    """Independent truth check of a caption of the form 'a C S [REL a C S]'."""
    first = find(scene, words[1], words[2])
    if len(words) == 3:
        return first is not None
    second = find(scene, words[-2], words[-1])
    if first is None or second is None:
        return False
    return relation(scene.objects[first], scene.objects[second]) == " ".join(words[3:-3])


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------


def test_relation_hand_cases(hand_scene):
    red, blue, green = hand_scene.objects
    assert relation(red, blue) == "left of"  # dx = -30, dy = -2
    assert relation(blue, red) == "right of"
    assert relation(green, red) == "above"  # dx = 2, dy = -25: smaller y is higher
    assert relation(red, green) == "below"
    # Ties |dx| == |dy| go to the horizontal relation.
    assert relation(make_object("red", "circle", (0, 0)), make_object("blue", "cross", (5, 5))) == "left of"
    with pytest.raises(ValueError, match="centre"):
        relation(red, make_object("blue", "cross", (10, 30)))


def test_describe_and_caption_of_hand_scene(hand_scene):
    assert describe(hand_scene.objects[0]) == "red circle"
    cap = caption(hand_scene)
    assert cap.text == "a red circle left of a blue square"
    assert cap.words == ("a", "red", "circle", "left", "of", "a", "blue", "square")
    assert cap.objects == (0, 1)
    assert cap.word_objects == (0, 0, 0, None, None, 1, 1, 1)
    assert cap.false_words == ()

    single = caption(make_scene(("green", "triangle", (5, 5))), np.random.default_rng(0))
    assert (single.text, single.objects, single.word_objects) == ("a green triangle", (0,), (0, 0, 0))
    with pytest.raises(ValueError, match="no objects"):
        caption(make_scene())


def test_caption_with_rng_is_deterministic_and_covers_all_pairs(hand_scene):
    first = [caption(hand_scene, np.random.default_rng(seed)) for seed in range(60)]
    again = [caption(hand_scene, np.random.default_rng(seed)) for seed in range(60)]
    assert first == again
    assert {cap.objects for cap in first} == set(itertools.permutations(range(3), 2))
    texts = {cap.text for cap in all_captions(hand_scene)}
    assert all(cap.text in texts for cap in first)
    above = next(cap for cap in first if cap.objects == (2, 0))
    assert above.text == "a green triangle above a red circle"
    assert above.word_objects == (2, 2, 2, None, 0, 0, 0)


def test_all_captions(hand_scene, scenes):
    caps = all_captions(hand_scene)
    assert len(caps) == 3 + 3 * 2
    assert [cap.text for cap in caps[:4]] == [
        "a red circle",
        "a blue square",
        "a green triangle",
        "a red circle left of a blue square",
    ]
    assert [cap.objects for cap in caps[3:]] == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert caps[4].text == "a red circle below a green triangle"
    for scene in scenes[:200]:
        n = len(scene.objects)
        caps = all_captions(scene)
        assert len(caps) == n + n * (n - 1)
        assert len({cap.text for cap in caps}) == len(caps)
        for cap in caps:
            assert caption_holds(cap.words, scene)
            for word, k in zip(cap.words, cap.word_objects):
                if word in COLOURS:
                    assert scene.objects[k].colour == word
                if word in SHAPES:
                    assert scene.objects[k].shape == word


def test_negative_captions_are_false(scenes):
    rng = np.random.default_rng(0)
    changed = collections.Counter()
    for scene in scenes[:200]:
        neg = negative_caption(scene, rng)
        assert not caption_holds(neg.words, scene), neg.text
        assert len(neg.words) in ((3,) if len(scene.objects) == 1 else (7, 8))
        assert neg.false_words
        # Noun phrases naming a present class keep their object; changed ones name none.
        starts = [0] if len(neg.words) == 3 else [0, len(neg.words) - 3]
        named = [find(scene, neg.words[s + 1], neg.words[s + 2]) for s in starts]
        assert neg.objects == tuple(k for k in named if k is not None)
        for s, k in zip(starts, named):
            if k is not None:
                assert neg.word_objects[s : s + 3] == (k, k, k)
            else:
                assert neg.word_objects[s] is None
                (position,) = neg.false_words
                assert neg.word_objects[position] is None
                kept = neg.word_objects[s + 1 if position == s + 2 else s + 2]
                obj = scene.objects[kept]
                assert neg.words[s + 1] == obj.colour or neg.words[s + 2] == obj.shape
        word = neg.words[neg.false_words[0]]
        changed["colour" if word in COLOURS else "shape" if word in SHAPES else "relation"] += 1
        if word not in COLOURS and word not in SHAPES:
            assert " ".join(neg.words[i] for i in neg.false_words) in RELATIONS
            assert neg.objects == tuple(named) and neg.false_words[0] == 3
    assert set(changed) == {"colour", "shape", "relation"}
    assert min(changed.values()) > 20


def test_negative_caption_hand_scenes(hand_scene, full_scene):
    # The only object's caption can only change a colour or shape.
    single = make_scene(("red", "circle", (5, 5)))
    for seed in range(20):
        neg = negative_caption(single, np.random.default_rng(seed))
        assert len(neg.words) == 3 and neg.objects == ()
        assert neg.words != ("a", "red", "circle")
        assert neg.words[1] == "red" or neg.words[2] == "circle"
    # With every class present, only the relation can be flipped.
    for seed in range(20):
        neg = negative_caption(full_scene, np.random.default_rng(seed))
        assert len(neg.objects) == 2
        rel = " ".join(neg.words[i] for i in neg.false_words)
        assert rel in RELATIONS
        a, b = (full_scene.objects[k] for k in neg.objects)
        assert relation(a, b) != rel and {relation(a, b), rel} in ({"left of", "right of"}, {"above", "below"})
    # Deterministic given the generator.
    assert negative_caption(hand_scene, np.random.default_rng(5)) == negative_caption(
        hand_scene, np.random.default_rng(5)
    )


def test_caption_validation():
    with pytest.raises(ValueError, match="word_objects"):
        Caption(text="a red circle", words=("a", "red", "circle"), objects=(0,), word_objects=(0, 0))
    with pytest.raises(ValueError, match="text.split"):
        Caption(text="a red  circle", words=("a", "red", "circle"), objects=(0,), word_objects=(0, 0, 0))


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


def test_answers_and_kinds():
    assert ANSWERS == (
        "red",
        "green",
        "blue",
        "yellow",
        "circle",
        "square",
        "triangle",
        "cross",
        "yes",
        "no",
        "0",
        "1",
        "2",
        "3",
    )
    assert QUESTION_KINDS == ("colour", "shape", "exists", "count")
    assert MAX_COUNT == 3


def test_questions_of_hand_scene(question_scene):
    qs = questions(question_scene)
    assert len(qs) == 1 + 1 + 16 + 4
    assert [q.kind for q in qs] == ["colour", "shape"] + ["exists"] * 16 + ["count"] * 4
    colour_q, shape_q = qs[0], qs[1]
    assert (colour_q.text, colour_q.answer, colour_q.referents, colour_q.key_words) == (
        "what colour is the square",
        "blue",
        (1,),
        (4,),
    )
    assert (shape_q.text, shape_q.answer, shape_q.referents, shape_q.key_words) == (
        "what shape is the red object",
        "circle",
        (0,),
        (4,),
    )
    exists = {q.text: q for q in qs if q.kind == "exists"}
    assert list(exists)[:2] == ["is there a red circle", "is there a red square"]
    yes = exists["is there a blue circle"]
    assert (yes.answer, yes.referents, yes.key_words) == ("yes", (2,), (3, 4))
    no = exists["is there a red square"]
    assert (no.answer, no.referents, no.key_words) == ("no", (), (3, 4))
    assert sorted(q.text for q in exists.values() if q.answer == "yes") == [
        "is there a blue circle",
        "is there a blue square",
        "is there a red circle",
    ]
    counts = [(q.text, q.answer, q.referents, q.key_words) for q in qs if q.kind == "count"]
    assert counts == [
        ("how many circles are there", "2", (0, 2), (2,)),
        ("how many squares are there", "1", (1,), (2,)),
        ("how many triangles are there", "0", (), (2,)),
        ("how many crosses are there", "0", (), (2,)),
    ]
    assert questions(question_scene) == qs  # deterministic


def test_questions_well_posed_and_correct(scenes):
    for scene in scenes[:200]:
        objects = scene.objects
        shape_count = collections.Counter(obj.shape for obj in objects)
        colour_count = collections.Counter(obj.colour for obj in objects)
        qs = questions(scene)
        by_kind = collections.defaultdict(list)
        for q in qs:
            by_kind[q.kind].append(q)
            assert q.answer in ANSWERS
            assert q.words == tuple(q.text.split())
            assert all(0 <= k < len(q.words) for k in q.key_words)
            assert [q.kind for q in qs] == sorted((q.kind for q in qs), key=QUESTION_KINDS.index)
        assert [q.words[4] for q in by_kind["colour"]] == [s for s in SHAPES if shape_count[s] == 1]
        assert [q.words[4] for q in by_kind["shape"]] == [c for c in COLOURS if colour_count[c] == 1]
        assert len(by_kind["exists"]) == 16 and len(by_kind["count"]) == 4
        for q in by_kind["colour"]:
            (i,) = q.referents
            assert objects[i].shape == q.words[4] and q.answer == objects[i].colour and q.key_words == (4,)
        for q in by_kind["shape"]:
            (i,) = q.referents
            assert objects[i].colour == q.words[4] and q.answer == objects[i].shape and q.key_words == (4,)
        for q in by_kind["exists"]:
            colour, shape = q.words[3], q.words[4]
            k = find(scene, colour, shape)
            assert q.answer == ("no" if k is None else "yes")
            assert q.referents == (() if k is None else (k,))
        for q, shape in zip(by_kind["count"], SHAPES):
            assert q.words[2] == PLURALS[shape]
            assert q.answer == str(shape_count[shape])
            assert q.referents == tuple(i for i, obj in enumerate(objects) if obj.shape == shape)


def test_count_beyond_max_count_is_not_asked():
    scene = make_scene(*[(colour, "circle", (10 + 15 * k, 10)) for k, colour in enumerate(COLOURS)])
    counts = [q.text for q in questions(scene) if q.kind == "count"]
    assert counts == ["how many squares are there", "how many triangles are there", "how many crosses are there"]
    assert [q.kind for q in questions(scene)].count("colour") == 0


def test_sample_question(question_scene, hand_scene):
    rng = np.random.default_rng(0)
    exists = [sample_question(hand_scene, rng, kind="exists") for _ in range(2000)]
    yes_share = np.mean([q.answer == "yes" for q in exists])
    assert 0.45 < yes_share < 0.55  # 3 of the 16 classes are present
    assert len({q.text for q in exists}) == 16

    kinds = collections.Counter(sample_question(hand_scene, rng).kind for _ in range(2000))
    assert set(kinds) == set(QUESTION_KINDS)
    assert all(400 < n < 600 for n in kinds.values())

    first = [sample_question(question_scene, np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert all(sample_question(question_scene, rng).answer in ANSWERS for _ in range(200))
    only_colour = sample_question(question_scene, rng, kind="colour")
    assert only_colour.text == "what colour is the square"

    crowded = make_scene(("red", "circle", (5, 5)), ("red", "square", (30, 5)))  # no unique colour
    with pytest.raises(ValueError, match="no well-posed 'shape' question"):
        sample_question(crowded, rng, kind="shape")
    with pytest.raises(ValueError, match="unknown question kind"):
        sample_question(crowded, rng, kind="size")
    assert {sample_question(crowded, rng).kind for _ in range(100)} == {"colour", "exists", "count"}


def test_question_validation():
    with pytest.raises(ValueError, match="unknown answer"):
        Question(text="is there", words=("is", "there"), answer="maybe", kind="exists", referents=(), key_words=())
    with pytest.raises(ValueError, match="key_words"):
        Question(text="is there", words=("is", "there"), answer="no", kind="exists", referents=(), key_words=(2,))


# ---------------------------------------------------------------------------------------------
# Toy translation
# ---------------------------------------------------------------------------------------------


def test_toy_lexicon():
    assert set(TOY_LEXICON) == set(COLOURS) | set(SHAPES) | set(RELATIONS)
    values = list(TOY_LEXICON.values())
    assert len(set(values)) == len(values)
    english = set(Vocabulary.captions().tokens) | set(Vocabulary.questions().tokens)
    assert not english & set(values)
    assert all(value.isalpha() and value.islower() and " " not in value for value in values)


def test_translate_hand_captions(hand_scene):
    tr = translate(caption(hand_scene))
    assert tr.source == ("a", "red", "circle", "left", "of", "a", "blue", "square")
    assert tr.target == tuple(TOY_LEXICON[w] for w in ("circle", "red", "left of", "square", "blue"))
    assert tr.alignment == ((2,), (1,), (3, 4), (7,), (6,))

    single = translate(all_captions(hand_scene)[2])  # "a green triangle"
    assert single.target == (TOY_LEXICON["triangle"], TOY_LEXICON["green"])
    assert single.alignment == ((2,), (1,))

    above = translate(all_captions(hand_scene)[7])  # "a green triangle above a red circle"
    assert above.target == tuple(TOY_LEXICON[w] for w in ("triangle", "green", "above", "circle", "red"))
    assert above.alignment == ((2,), (1,), (3,), (6,), (5,))

    bad = Caption(text="a purple circle", words=("a", "purple", "circle"), objects=(), word_objects=(None,) * 3)
    with pytest.raises(ValueError, match="cannot translate word 'purple'"):
        translate(bad)
    with pytest.raises(ValueError, match="must align to source indices"):
        Translation(source=("a",), target=("x",), alignment=((),))


def test_translate_generated_captions(scenes):
    toy_words = set(TOY_LEXICON.values())
    rng = np.random.default_rng(1)
    for scene in scenes[:200]:
        for cap in [*all_captions(scene), negative_caption(scene, rng)]:
            tr = translate(cap)
            assert tr.source == cap.words
            assert len(tr.target) == len(tr.alignment) == (2 if len(cap.words) == 3 else 5)
            assert set(tr.target) <= toy_words
            aligned = [s for group in tr.alignment for s in group]
            assert all(0 <= s < len(tr.source) for s in aligned)
            # Every non-article source word is translated exactly once; articles never.
            assert sorted(aligned) == [s for s, w in enumerate(tr.source) if w != "a"]
            for word, group in zip(tr.target, tr.alignment):
                assert TOY_LEXICON[" ".join(tr.source[s] for s in group)] == word


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


def test_vocabulary_layout():
    vocab = Vocabulary(["b", "a", "a", "[PAD]", "c"])
    assert vocab.tokens == (*SPECIAL_TOKENS, "a", "b", "c")
    assert len(vocab) == 9
    assert (vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3, 4, 5)
    assert "a" in vocab and "d" not in vocab
    assert Vocabulary.captions().tokens == (
        *SPECIAL_TOKENS,
        "a",
        "above",
        "below",
        "blue",
        "circle",
        "cross",
        "green",
        "left",
        "of",
        "red",
        "right",
        "square",
        "triangle",
        "yellow",
    )
    assert len(Vocabulary.questions()) == 6 + 23
    assert len(Vocabulary.toy()) == 6 + 12
    with pytest.raises(ValueError, match="whitespace"):
        Vocabulary(["left of"])
    with pytest.raises(ValueError, match="not a string"):
        Vocabulary("abc")


def test_encode_decode():
    vocab = Vocabulary.captions()
    words = ("a", "red", "circle", "left", "of", "a", "blue", "square")
    ids = vocab.encode(words)
    assert ids == [1, 6, 15, 10, 13, 14, 6, 9, 17, 2]
    assert vocab.decode(ids) == list(words)
    assert vocab.decode(ids, skip_special=False) == ["[CLS]", *words, "[SEP]"]
    assert vocab.decode(torch.tensor(ids)) == list(words)
    assert vocab.encode(words, cls_token=False, sep_token=False) == ids[1:-1]
    assert vocab.encode(["red"], cls_token=False, sep_token=False, bos_token=True, eos_token=True) == [4, 15, 5]
    assert vocab.encode(["red"], length=5) == [1, 15, 2, 0, 0]

    assert vocab.encode(["a", "purple", "circle"]) == [1, 6, vocab.unk_id, 10, 2]
    assert vocab.decode(vocab.encode(["a", "purple", "circle"])) == ["a", "circle"]

    with pytest.raises(ValueError, match="needs length 10"):
        vocab.encode(words, length=9)
    with pytest.raises(ValueError, match="text.split"):
        vocab.encode("a red circle")
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode([len(vocab)])


def test_encode_batch():
    vocab = Vocabulary.captions()
    sentences = [("a", "red", "circle"), ("a", "blue", "square", "above", "a", "red", "cross")]
    ids, mask = vocab.encode_batch(sentences)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (2, 9)
    assert ids[0].tolist() == [1, 6, 15, 10, 2, 0, 0, 0, 0]
    assert mask.sum(dim=1).tolist() == [5, 9]
    assert torch.equal(mask, ids != vocab.pad_id)
    assert vocab.decode(ids[1]) == list(sentences[1])

    ids, mask = vocab.encode_batch(sentences, length=12, cls_token=False)
    assert ids.shape == (2, 12)
    assert mask.sum(dim=1).tolist() == [4, 8]
    assert ids[1, :8].tolist() == vocab.encode(sentences[1], cls_token=False)
    with pytest.raises(ValueError, match="needs length 9"):
        vocab.encode_batch(sentences, length=8)
    # A literal [PAD] word is still counted as content by the mask.
    _, mask = vocab.encode_batch([["[PAD]"]], cls_token=False, sep_token=False)
    assert mask.tolist() == [[True]]


def test_vocabularies_cover_generated_text(scenes):
    cap_vocab, q_vocab, toy_vocab = Vocabulary.captions(), Vocabulary.questions(), Vocabulary.toy()
    rng = np.random.default_rng(2)
    seen_caption_words, seen_question_words = set(), set()
    for scene in scenes:
        caps = [*all_captions(scene), negative_caption(scene, rng), caption(scene, rng)]
        for cap in caps:
            assert cap_vocab.unk_id not in cap_vocab.encode(cap.words)
            assert toy_vocab.unk_id not in toy_vocab.encode(translate(cap).target)
            seen_caption_words.update(cap.words)
        for q in questions(scene):
            assert q_vocab.unk_id not in q_vocab.encode(q.words)
            seen_question_words.update(q.words)
    # ... and hold no words the generators never produce.
    assert seen_caption_words == set(cap_vocab.tokens[len(SPECIAL_TOKENS) :])
    assert seen_question_words == set(q_vocab.tokens[len(SPECIAL_TOKENS) :])
