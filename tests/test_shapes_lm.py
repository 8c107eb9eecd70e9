"""shapes-lm: ShapesWorld stories with ground truth, the shipped decoder-only model, GAE on it, its evaluator."""

import numpy as np
import pytest
import torch

import gae_utils as gu
from shapesworld.stories import (
    TOKEN_OFFSET,
    Story,
    draw_stories,
    encode_stories,
    quiz,
    sample_story,
    stories,
    story_vocabulary,
    story_world,
    word_positions,
)

pytest.importorskip("transformers")


def test_ground_truth_positions_point_at_the_answer_and_its_sentence():
    """In every story, the key word is the answer, sits in the sentence of the object the question names,
    and the subject is that object's other attribute, named in the question."""
    world = story_world(11)
    checked = 0
    for scene in world.scenes(40):
        for story in stories(scene):
            obj = scene.objects[story.referent]
            words = story.words
            sentence = words[5 * story.referent : 5 * story.referent + 5]
            assert sentence == ("the", obj.shape, "is", obj.colour, ".")
            assert words[story.key] == story.answer
            assert story.key // 5 == story.subject // 5 == story.referent
            question = words[story.description_length :]
            assert question[0] == "Q:" and question[-2:] == ("?", "A:")
            if story.kind == "colour":
                assert story.answer == obj.colour and words[story.subject] == obj.shape
                assert sum(o.shape == obj.shape for o in scene.objects) == 1  # the question is well posed
            else:
                assert story.answer == obj.shape and words[story.subject] == obj.colour
                assert sum(o.colour == obj.colour for o in scene.objects) == 1
            assert words[story.subject] in question  # the question names the subject
            checked += 1
    assert checked > 60


def test_encoding_puts_words_after_bos_and_marks_the_description():
    vocab = story_vocabulary()
    batch = draw_stories(3, 6, np.random.default_rng(0))
    inputs = encode_stories(batch, vocab)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = word_positions(batch, ids.shape[1])
    for b, story in enumerate(batch):
        assert int(ids[b, 0]) == vocab.bos_id
        assert vocab.decode(ids[b, : int(mask[b].sum())]) == list(story.words)
        assert vocab.tokens[int(ids[b, positions["key"][b]])] == story.answer
        assert positions["key"][b] == story.key + TOKEN_OFFSET
        described = positions["description"][b].nonzero().flatten()
        assert described.tolist() == list(range(TOKEN_OFFSET, TOKEN_OFFSET + story.description_length))
    full = encode_stories(batch, vocab, answers=True)
    assert (full["attention_mask"].sum(1) == mask.sum(1) + 2).all()  # the answer and [EOS]


def test_a_quiz_holds_every_story_as_a_prefix_followed_by_its_answer():
    rng = np.random.default_rng(4)
    for scene in story_world(9).scenes(20):
        every = stories(scene)
        if not every:
            continue
        words, answers = quiz(scene, rng)
        assert 1 <= len(answers) <= len(every) and words[every[0].description_length] == "Q:"
        prompts = {s.words: s.answer for s in every}
        for a in answers:
            # the words before each answer: the description, then this question (earlier Q/A pairs removed)
            question_start = max(i for i in range(a) if words[i] == "Q:")
            prompt = words[: every[0].description_length] + words[question_start:a]
            assert prompts[prompt] == words[a]


def test_stories_vary_in_length_and_in_where_the_answer_is():
    batch = draw_stories(5, 200, np.random.default_rng(1))
    assert len({s.description_length for s in batch}) >= 3
    assert len({s.key // 5 for s in batch}) >= 4  # the answer's sentence is not always the same
    assert {s.kind for s in batch} == {"colour", "shape"}


def test_bad_requests_say_what_to_do():
    scene = story_world(0).scene(0)
    with pytest.raises(ValueError, match="unknown story kind"):
        sample_story(scene, np.random.default_rng(0), kind="count")
    with pytest.raises(ValueError, match="at least one Story"):
        encode_stories([], story_vocabulary())
    story = stories(scene)[0]
    with pytest.raises(ValueError, match="must be the answer"):
        Story(**{**story.__dict__, "answer": "purple"})


@pytest.fixture(scope="module")
def lm():
    from gae_workbook.models import zoo

    return zoo.load("shapes-lm")


def test_shipped_model_answers_held_out_questions_and_its_card_says_so(lm):
    card = lm.card.training
    assert card["heldout"]["accuracy"] >= 0.95 and card["heldout_seed"] != 0
    vocab = story_vocabulary()
    batch = draw_stories(424_242, 16, np.random.default_rng(0))  # a seed used neither in training nor in the card
    inputs = encode_stories(batch, vocab)
    with torch.no_grad():
        logits = lm(**inputs).logits  # (B, L, V)
    last = inputs["attention_mask"].sum(1) - 1
    predicted = [vocab.tokens[i] for i in logits[torch.arange(len(batch)), last].argmax(-1).tolist()]
    right = sum(p == s.answer for p, s in zip(predicted, batch))
    assert right >= 15, list(zip(predicted, [s.answer for s in batch]))


def test_gae_on_the_shipped_model_gives_text_relevance_zero_at_padding(lm):
    vocab = story_vocabulary()
    batch = draw_stories(8, 5, np.random.default_rng(2))
    inputs = encode_stories(batch, vocab)
    exp = gu.explain(lm, inputs)
    text = exp.relevance["text"]
    assert text.shape == inputs["input_ids"].shape
    assert (text[inputs["attention_mask"] == 0] == 0).all()
    assert torch.isfinite(text).all() and (text[inputs["attention_mask"] == 1] != 0).any()
    # the explained token is the answer, and the same story alone gives the same numbers
    assert [vocab.tokens[int(t)] for t in exp.target] == [s.answer for s in batch]
    alone = gu.explain(lm, encode_stories(batch[:1], vocab)).relevance["text"][0]
    assert torch.allclose(text[0, : alone.shape[0]], alone, atol=1e-5)


def test_the_evaluator_scores_every_method_and_a_random_floor(lm):
    from gae_utils.methods import method_names
    from gae_workbook.evaluate import evaluate_lm

    results, curves = evaluate_lm(lm, n=8, batch_size=4, progress=False)
    assert set(results) == {*method_names(), "random"}
    for method, row in results.items():
        assert 0 <= row["pointing"] <= row["pointing_pair"] <= 1
        assert 1 <= row["key_rank"] <= 25
        assert row["pairs"] == 8
        assert curves[method].shape == (4, 10)
        assert row["accuracy"] >= 7 / 8  # the unperturbed prompts (step 0) are answered
    # removing every description token but a tenth leaves too little to answer: the curves fall
    assert curves["gae"][0, -1] < curves["gae"][0, 0]
