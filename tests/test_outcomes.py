"""Outcomes as values: kinds, the sentences made from them, and their dicts."""

from __future__ import annotations

import pickle

from carmask.cli.outcomes import skipped_summary
from carmask.inputs.spec import NotEnoughViews
from carmask.outcomes import ImageError, Note, NoteKind, Problem, Treatment, count, skip


def test_an_image_error_travels_whole():
    error = ImageError("a/b.jpg", "empty file (0 bytes)", Problem.EMPTY)
    assert str(error) == "a/b.jpg: empty file (0 bytes)"
    assert ImageError.from_dict(error.as_dict()) == error == pickle.loads(pickle.dumps(error))
    assert pickle.loads(pickle.dumps(error)).kind is Problem.EMPTY


def test_a_skip_keeps_its_kind_and_words():
    error = ImageError("a.jpg", "no such file", Problem.MISSING)
    assert skip("other.jpg", error) is error
    views = skip("a.jpg", NotEnoughViews("reworded at will"))
    assert views.kind is Problem.TOO_FEW_VIEWS and str(views) == "a.jpg: reworded at will"
    assert isinstance(views.__cause__, NotEnoughViews)
    assert skip("a.jpg", RuntimeError("boom")).kind is Problem.NOT_PREDICTED


def test_summaries_count_kinds_not_words():
    errors = [
        ImageError("a", "whatever words", Problem.UNREADABLE),
        ImageError("b", "other words", Problem.EMPTY),
        ImageError("c", "more words", Problem.UNREADABLE),
    ]
    assert count(errors) == {Problem.UNREADABLE: 2, Problem.EMPTY: 1}
    assert skipped_summary(errors) == "3 photo(s) skipped: 2 not a readable image, 1 empty file"


def test_notes_say_their_sentence_and_travel_as_dicts():
    notes = [
        Note(NoteKind.OTHER_SIZE, ("c_03.jpg",), Treatment.ALONE, "c", (1918, 1280)),
        Note(NoteKind.TOO_FEW_VIEWS, ("a.jpg", "b.jpg"), Treatment.SINGLE_PHOTO_MODEL, views=2),
        Note(NoteKind.NOT_ONE_STUDIO, ("x.jpg", "y.jpg", "z.jpg"), Treatment.PHOTO_BY_PHOTO, share=0.6),
        Note(NoteKind.ONE_PHOTO, ("x.jpg", "y.jpg", "z.jpg"), Treatment.AS_A_SET, share=0.004),
    ]
    assert [str(n) for n in notes] == [
        "c_03.jpg: not the size of the other views of car c (1918x1280): predicted alone",
        "a.jpg, b.jpg: only 2 readable views, and a background needs 3: predicted photo by photo with the "
        "single-photo model",
        "x.jpg, y.jpg, z.jpg: do not share one studio (a photo differs from their median background over 60% of "
        "the frame): predicted photo by photo",
        "x.jpg, y.jpg, z.jpg: are (nearly) one photo (one differs from their median background over only 0.4% of "
        "the frame: the median shows the car, not the studio): predicted as a set all the same (the model needs "
        "one)",
    ]
    assert [Note.from_dict(n.as_dict()) for n in notes] == notes
