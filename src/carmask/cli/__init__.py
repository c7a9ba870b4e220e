"""`carmask`: one verb per task, one file per verb, each a thin shell over the modules."""

from carmask.cli import cutout, evaluate, models, predict, tools, train  # noqa: F401  (each registers its verbs)
from carmask.cli.common import main

__all__ = ["main"]
