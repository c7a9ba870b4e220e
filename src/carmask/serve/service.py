"""What the routes share (`app.state.service`): the predictor, the limits and the one cut-out path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from carmask.cutout import Cutout, remove_set
from carmask.io import MiB
from carmask.predict import Predictor
from carmask.serve.limits import MULTIPART_SLACK, Admission
from carmask.serve.uploads import Budget

DEFAULT_MAX_UPLOAD_BYTES = 25 * MiB
DEFAULT_REQUEST_PIXELS = 48_000_000  # every image of one request together (a 16-view 1918x1280 set: 39 Mpx)
DEFAULT_PIXELS_AT_ONCE = 96_000_000  # decoded pixels in flight in the whole server


@dataclass
class Service:
    """The app's state: the predictor, the limits, the admission of work."""

    predictor: Predictor
    admission: Admission
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    request_pixels: int = DEFAULT_REQUEST_PIXELS
    api_key: str | None = None
    refine: bool = True

    @property
    def max_body(self) -> int:
        """A request's body: an upload and its multipart headers and fields."""
        return self.max_upload_bytes + MULTIPART_SLACK

    @property
    def max_removebg_body(self) -> int:
        """A remove.bg request's body: room for the photo as base64 text, url-encoded (4/3 and
        a little more: + and / become %2B, %2F), or for a photo and a background file."""
        return 2 * self.max_upload_bytes + MULTIPART_SLACK

    def budget(self) -> Budget:
        """A new request's allowance of bytes and pixels."""
        return Budget(self.max_upload_bytes, self.request_pixels)

    def model_names(self) -> list[str]:
        from carmask import models

        if self.predictor.model_name is not None:
            name = str(self.predictor.model_name)
            return [Path(name).stem if Path(name).suffix else name]
        return models.shipped()

    def cut(self, items: list[tuple[str, object]], background) -> list[Cutout]:
        """The one cut-out path (`cutout.remove_set`); call it inside the request's pixels."""
        return remove_set(items, self.predictor, background, refine=self.refine)


def service(request: Request) -> Service:
    return request.app.state.service
