"""The set policy on its own: which photos form a set, and why not, decided
from names, sizes and measured shares alone (no model, no photo)."""

import subprocess
import sys

import pytest

from carmask.inputs.spec import STUDIO_DIFFERING, STUDIO_SAME
from carmask.outcomes import NoteKind, Treatment
from carmask.predictor.setpolicy import Group, group, studio

SIZE, OTHER = (192, 128), (128, 192)


def names(count, car="car"):
    return [f"{car}_{i:02d}.jpg" for i in range(1, count + 1)]


def views(*, needs=True):
    return lambda count: needs


def never_asked(count):
    raise AssertionError("the model was asked for where it does not matter")


def test_a_car_of_one_studio_is_one_set_checked_only_in_auto():
    assert group(names(16), [SIZE] * 16, "car", "auto", views(), True) == [Group(tuple(range(16)), check=True)]
    assert group(names(16), [SIZE] * 16, "car", "always", views(), True) == [Group(tuple(range(16)))]


@pytest.mark.parametrize("count, car, sets", [(16, "car", "never"), (1, None, "auto"), (0, "car", "auto")])
def test_photos_alone_without_a_note_and_without_asking_the_model(count, car, sets):
    assert group(names(count), [SIZE] * count, car, sets, never_asked, True) == [Group((i,)) for i in range(count)]


def test_a_photo_only_model_takes_every_photo_alone():
    assert group(names(4), [SIZE] * 4, "car", "auto", views(needs=False), True) == [Group((i,)) for i in range(4)]


def test_views_of_another_size_leave_the_set_with_a_note():
    sizes = [SIZE] * 5 + [OTHER]
    out = group(names(6), sizes, "car", "auto", views(), True)
    assert out[0] == Group((0, 1, 2, 3, 4), check=True)
    (odd,) = out[1:]
    assert odd.photos == (5,) and odd.note.kind is NoteKind.OTHER_SIZE and odd.note.treatment is Treatment.ALONE
    assert odd.note.photos == ("car_06.jpg",) and odd.note.size == SIZE and odd.note.car == "car"
    assert str(odd.note) == "car_06.jpg: not the size of the other views of car car (192x128): predicted alone"
    # "always" trusts the names, sizes too
    assert group(names(6), sizes, "car", "always", views(), True) == [Group(tuple(range(6)))]


def test_too_few_views_for_a_background_are_predicted_photo_by_photo():
    out = group(names(2), [SIZE] * 2, "car", "auto", views(), True)
    assert [g.photos for g in out] == [(0,), (1,)]
    note = out[0].note
    assert note is out[1].note and note.kind is NoteKind.TOO_FEW_VIEWS and note.views == 2
    assert note.treatment is Treatment.SINGLE_PHOTO_MODEL
    assert str(note) == (
        "car_01.jpg, car_02.jpg: car car has 2 readable views, and a background needs 3: "
        "predicted photo by photo with the single-photo model"
    )
    uploads = group(["a.jpg", "b.jpg"], [SIZE] * 2, None, "auto", views(), True)
    assert str(uploads[0].note).startswith("a.jpg, b.jpg: only 2 readable views")
    # a named model says itself what it needs: no note here
    assert group(names(2), [SIZE] * 2, "car", "auto", views(), False) == [Group((0,)), Group((1,))]


def test_a_named_cars_one_view_is_said_to_be_alone():
    (one,) = group(names(1), [SIZE], "car", "auto", views(), True)
    assert str(one.note) == (
        "car_01.jpg: car car has 1 readable view, and a background needs 3: "
        "predicted photo by photo with the single-photo model"
    )


def test_a_set_left_too_small_by_odd_sizes_gets_both_notes():
    out = group(names(3), [SIZE, SIZE, OTHER], "car", "auto", views(), True)
    assert [(g.photos, g.note.kind) for g in out] == [
        ((0,), NoteKind.TOO_FEW_VIEWS),
        ((1,), NoteKind.TOO_FEW_VIEWS),
        ((2,), NoteKind.OTHER_SIZE),
    ]


def test_a_set_shares_one_studio_within_the_thresholds():
    assert studio(names(3), [STUDIO_SAME, 0.2, STUDIO_DIFFERING], "car", alone=True) is None


@pytest.mark.parametrize("alone, treatment", [(True, Treatment.PHOTO_BY_PHOTO), (False, Treatment.AS_A_SET)])
def test_photos_of_other_studios_are_not_a_set(alone, treatment):
    note = studio(names(3), [0.2, 0.61, 0.3], "car", alone)
    assert note.kind is NoteKind.NOT_ONE_STUDIO and note.treatment is treatment and note.share == 0.61
    assert note.photos == tuple(names(3))
    assert str(note).startswith(
        "car_01.jpg, car_02.jpg, car_03.jpg: do not share one studio (a photo differs "
        "from their median background over 61% of the frame)"
    )


def test_copies_of_one_photo_are_not_a_set():
    note = studio(names(3), [0.0, 0.2, 0.3], None, alone=True)
    assert note.kind is NoteKind.ONE_PHOTO and note.share == 0.0 and note.car is None
    assert str(note).endswith(
        "over only 0.0% of the frame: the median shows the car, not the studio): predicted photo by photo"
    )


def test_the_policy_needs_no_model_nor_torch():
    code = "import sys, carmask.predictor.setpolicy; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
