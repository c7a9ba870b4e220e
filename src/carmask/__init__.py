"""carmask: remove the studio background from car photos.

The Python API is a thin layer over one predictor::

    from carmask import Predictor, remove
    predictor = Predictor()                 # shipped default models
    probs = predictor.predict_photo(photo)  # HxW float probabilities
    rgba = remove(photo)                    # the cut-out, transparent background
"""

__version__ = "0.1.0"

from carmask.inputs.spec import NotEnoughViews  # noqa: E402
from carmask.io import ImageError, read_photo  # noqa: E402


def __getattr__(name):
    # Heavy imports (torch) only when the predictor is asked for.
    if name == "Predictor":
        from carmask.predict import Predictor

        return Predictor
    if name == "remove":
        from carmask.cutout import remove

        return remove
    raise AttributeError(name)


__all__ = ["ImageError", "NotEnoughViews", "Predictor", "remove", "read_photo", "__version__"]
