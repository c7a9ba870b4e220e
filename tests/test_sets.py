"""Grouping that checks itself: views named <car>_<NN> are predicted as a set
only when they share a studio; otherwise photo by photo, with a warning that
names them. `sets` forces either."""

import numpy as np
import pytest
import torch
from helpers import unrelated_photos
from PIL import Image

from carmask.io import find_photos
from carmask.kaggle import group_by_car
from carmask.outcomes import NoteKind, Treatment
from carmask.predict import Predictor
from carmask.synth import make_dataset


@pytest.fixture(scope="module")
def turntable(tmp_path_factory):
    """One synthetic car, 16 views in one studio."""
    data = make_dataset(tmp_path_factory.mktemp("set"), cars=1, size=(192, 128), seed=12)
    return sorted((data / "train").glob("*.jpg"))


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory):
    """Three photos of three cars in three places, named as if one car's views."""
    return unrelated_photos(tmp_path_factory.mktemp("unrelated"))


def predictions(predictor, paths):
    return list(predictor.predict_sets(group_by_car(find_photos(paths))))


# The shipped models without the edge refiner: these tests compare a photo's probabilities
# across groupings, and a stream runs torch on one thread where a single photo runs it on
# all (a 1e-7 difference), which the refiner's 8-bit input can turn into 1e-4 on a few pixels.
PLAIN = {"device": "cpu", "refiner": None}


@pytest.mark.slow
def test_unrelated_photos_named_as_one_car_are_predicted_one_by_one(unrelated):
    predictor = Predictor(**PLAIN)  # the shipped multiview model for sets, rgb alone
    out = predictions(predictor, unrelated)
    assert [p.path.name for p in out] == ["IMG_01.jpg", "IMG_02.jpg", "IMG_03.jpg"]
    assert not any(p.error for p in out)
    for p in out:
        assert "do not share one studio" in p.warning
        assert (p.note.kind, p.note.treatment) == (NoteKind.NOT_ONE_STUDIO, Treatment.PHOTO_BY_PHOTO)
        assert p.note.photos == ("IMG_01.jpg", "IMG_02.jpg", "IMG_03.jpg") and p.note.share > 0.45
        assert all(name in p.warning for name in ("IMG_01.jpg", "IMG_02.jpg", "IMG_03.jpg"))
        np.testing.assert_allclose(p.probs, predictor.predict_photo(p.path), atol=1e-5)  # as alone
    forced = predictions(Predictor(sets="always", **PLAIN), unrelated)
    assert not any(p.warning for p in forced)
    assert not np.allclose(forced[0].probs, out[0].probs, atol=1e-3)  # as a set, the multiview model


def test_a_model_that_needs_a_set_keeps_it_and_says_so(unrelated, seed_model):
    out = predictions(Predictor(seed_model, device="cpu"), unrelated)
    assert not any(p.error for p in out)
    assert all("predicted as a set all the same" in p.warning for p in out)
    assert all(p.note.treatment is Treatment.AS_A_SET for p in out)


def test_a_real_set_is_a_set_unless_told_otherwise(turntable):
    as_set = predictions(Predictor(**PLAIN), turntable)
    assert len(as_set) == 16 and not any(p.warning or p.error for p in as_set)
    alone = predictions(Predictor(sets="never", **PLAIN), turntable)
    assert not any(p.warning or p.error for p in alone)
    single = Predictor(**PLAIN)
    np.testing.assert_allclose(alone[3].probs, single.predict_photo(turntable[3]), atol=1e-5)
    assert not np.allclose(alone[3].probs, as_set[3].probs, atol=1e-3)


def test_two_views_are_predicted_alone_with_a_warning(turntable):
    out = predictions(Predictor(device="cpu"), turntable[:2])
    for p in out:
        assert not p.error and "2 readable views" in p.warning and turntable[1].name in p.warning


def test_a_view_of_another_size_leaves_the_set(turntable, tmp_path):
    for path in turntable[:6]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    odd = tmp_path / turntable[2].name
    Image.open(odd).resize((384, 256)).save(odd)
    out = predictions(Predictor(device="cpu"), sorted(tmp_path.iterdir()))
    assert [p.path.name for p in out] == [p.name for p in turntable[:6]]  # the car's order
    assert "not the size of the other views" in out[2].warning and odd.name in out[2].warning
    assert out[2].probs.shape == (256, 384)
    assert not any(p.warning for i, p in enumerate(out) if i != 2)
    forced = predictions(Predictor(device="cpu", sets="always"), sorted(tmp_path.iterdir()))
    assert not any(p.warning or p.error for p in forced) and forced[2].probs.shape == (256, 384)


def test_a_refine_hook_sees_full_resolution_photos_and_their_set(turntable, tmp_path):
    seen = {}

    def refine(batch):
        seen["shapes"] = {tuple(p.shape) for p in batch.photos}
        seen["views"] = batch.views
        return [torch.ones_like(p) for p in batch.probs]

    predictor = Predictor(device="cpu", refine=refine, profile=True)
    photos = turntable[:5] + [tmp_path / "lone.jpg"]
    photos[-1].write_bytes(turntable[5].read_bytes())
    out = list(predictor.predict_sets(group_by_car(photos), encode=True))
    assert seen["shapes"] == {(3, 128, 192)}
    assert seen["views"] == [[0, 1, 2, 3, 4]] * 5 + [[5]]
    assert all(p.rle == f"1 {192 * 128}" for p in out)  # the hook's probabilities were used
    assert set(predictor.stage_seconds) == {"decode", "inputs", "model", "postprocess", "copy back"}
    assert all(seconds > 0 for seconds in predictor.stage_seconds.values())


@pytest.mark.slow
def test_views_without_a_car_name_get_a_sentence_that_reads(turntable):
    """Uploads (no <car>_<NN> name) said "these views has 2 readable views"."""
    photos = [np.asarray(Image.open(p)) for p in turntable[:4]]
    out = Predictor(device="cpu").predict_views([("a.jpg", photos[0]), ("b.jpg", photos[1])])
    assert out[0].warning.startswith("a.jpg, b.jpg: only 2 readable views, and a background needs 3")
    out = Predictor(device="cpu").predict_views([(f"{i}.jpg", p[:64] if i == 1 else p) for i, p in enumerate(photos)])
    assert out[1].warning == "1.jpg: not the size of the other views (192x128): predicted alone"


def test_the_wrong_shape_of_views_is_a_sentence_not_a_misreading(turntable):
    """views=one array was taken as 128 one-row views; a string as one view per letter."""
    photo = np.asarray(Image.open(turntable[0]))
    predictor = Predictor(device="cpu")
    for views in (photo, str(turntable[1])):
        with pytest.raises(TypeError, match="views is a list of the car's other views; give one view as"):
            predictor.predict_photo(photo, views=views)
    with pytest.raises(TypeError, match=r"\(name, photo\) pairs"):
        predictor.predict_views([photo, photo, photo])
    with pytest.raises(TypeError, match="predict_sets takes kaggle.PhotoSet items"):
        list(predictor.predict_sets([turntable[:3]]))


def test_copies_of_one_photo_are_not_a_set(turntable, tmp_path):
    """Three copies of one photo passed the studio check (0% differing) and their
    median, the photo itself, left an empty mask (dice 0.02 against the photo alone)."""
    for i in (1, 2, 3):
        (tmp_path / f"copy_{i:02d}.jpg").write_bytes(turntable[0].read_bytes())
    predictor = Predictor(device="cpu")
    out = predictions(predictor, sorted(tmp_path.iterdir()))
    assert all("are (nearly) one photo" in p.warning and "predicted photo by photo" in p.warning for p in out)
    assert all((p.note.kind, p.note.treatment) == (NoteKind.ONE_PHOTO, Treatment.PHOTO_BY_PHOTO) for p in out)
    np.testing.assert_allclose(out[0].probs, predictor.predict_photo(turntable[0]), atol=1e-5)
    assert not any(p.warning for p in predictions(predictor, turntable))  # a real set is still one
