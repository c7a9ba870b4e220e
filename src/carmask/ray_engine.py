"""`carmask predict --engine ray`: the same predictor over a Ray cluster.

Ray Data streams one row per car through a pool of actors that each hold one
`Predictor`. A car's views stay in one row (its background needs all of
them), and the results come back in input order, so the submission is the
same file as the single-process run's and a resumed run continues it. The
photos (and a checkpoint given as a path) must be readable at the same path
on every node, and the nodes need carmask installed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from carmask.kaggle import PhotoSet
from carmask.outcomes import ImageError, Note
from carmask.predict import Prediction, Predictor

# Cars per actor call: the predictor decodes the next cars while one is computed.
CARS_PER_CALL = 4


class RayPredictor:
    """`Predictor.predict_sets` on a pool of Ray actors, one `Predictor` each.

    Joins the cluster at `address` (or $RAY_ADDRESS), else starts a local Ray
    instance; `close()` (or `with RayPredictor(...) as predictor:`) leaves Ray
    as it found it. `actors` defaults to one per GPU, or one per CPU when the
    cluster has no GPU or `device` is cpu.
    `options`: the rest of `Predictor`'s options (upright, sets, tta, ...),
    for every actor's predictor; `device`: the actors' torch device. Each
    `Prediction` comes back with its error and note, as a local run's (they
    travel in the rows as their dicts, in JSON: `outcomes.as_dict`).
    """

    def __init__(
        self,
        model=None,
        device: str = "auto",
        batch_size: int = 16,
        actors: int | None = None,
        address: str | None = None,
        **options,
    ):
        try:
            import ray.data  # noqa: F401  (fail here, before any work, when it is missing)
        except ImportError:
            raise ImportError("--engine ray needs Ray: pip install 'carmask[ray]'") from None
        self._started = _connect(address)
        try:
            self._resources, self._device, default_actors = _actor_resources(device)
        except ValueError:
            self.close()
            raise
        if model is not None and Path(model).exists():
            model = str(Path(model).absolute())  # the actors may run in another folder
        self.model, self.batch_size, self.actors = model, batch_size, actors or default_actors
        self.options = options  # the rest of Predictor's options (upright, sets, tta, ...)
        self.device = torch.device(self._device)

    def predict_sets(
        self, photo_sets: Iterable[PhotoSet], output_size=None, encode: bool = True
    ) -> Iterator[Prediction]:
        """As `Predictor.predict_sets` with `encode=True`: only the masks' run
        boundaries travel back from the actors."""
        if not encode:
            raise ValueError("the Ray engine returns run boundaries only (encode=True)")
        sets = list(photo_sets)
        if not sets:  # e.g. a resumed run that was done: start no actors
            return
        for row in self._dataset(sets, output_size).iter_rows():
            error = ImageError.from_dict(json.loads(row["error"])) if row["error"] else None
            note = Note.from_dict(json.loads(row["note"])) if row["note"] else None
            yield Prediction(
                Path(row["path"]), error=error, runs=None if error else row["runs"], note=note, exception=error
            )

    def _dataset(self, sets: list[PhotoSet], output_size):
        import ray

        rows = [{"car": s.car or "", "paths": [str(p.absolute()) for p in s.paths]} for s in sets]
        blocks = max(1, math.ceil(len(rows) / CARS_PER_CALL))
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            SetPredictor,
            batch_size=CARS_PER_CALL,
            fn_constructor_args=(self.model, self._device, self.batch_size, output_size, self.options),
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            **self._resources,
        )
        # Rows in input order: the same file as a single-process run, and resumable.
        ds.context.execution_options.preserve_order = True
        ds.context.enable_progress_bars = False  # the CLI shows its own
        return ds

    def close(self) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayPredictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SetPredictor:
    """A Ray Data actor: one `Predictor`, loaded once, for batches of whole cars."""

    def __init__(self, model, device, batch_size, output_size, options):
        self.predictor = Predictor(model, device=device, batch_size=batch_size, **options)
        self.output_size = output_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sets = [PhotoSet(car or None, [Path(p) for p in paths]) for car, paths in zip(batch["car"], batch["paths"])]
        out = list(self.predictor.predict_sets(sets, self.output_size, encode=True))
        runs = np.empty(len(out), dtype=object)  # ragged: one array per photo
        runs[:] = [np.zeros(0, np.int64) if p.error else p.runs for p in out]
        return {
            "path": np.array([str(p.path) for p in out]),
            "error": np.array([json.dumps(p.error.as_dict()) if p.error else "" for p in out]),
            "note": np.array([json.dumps(p.note.as_dict()) if p.note else "" for p in out]),
            "runs": runs,
        }


def _connect(address: str | None) -> bool:
    """Join a cluster or start a local instance; True if this call did either."""
    import ray

    if ray.is_initialized():  # the caller's own Ray session: leave it to them
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Local workers import the same carmask as this process, however it was found.
        import carmask

        paths = [str(Path(carmask.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, paths))}},
        )
    return True


def _actor_resources(device: str) -> tuple[dict, str, int]:
    """Ray resources per actor, the actors' torch device, and the default pool size."""
    import ray

    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if device == "cuda" and not gpus:
        raise ValueError("--device cuda was asked for, but the Ray cluster has no GPU")
    if device == "cuda" or (device == "auto" and gpus):
        return {"num_gpus": 1}, "cuda", gpus
    return {"num_cpus": 1}, "cpu", max(1, cpus)
