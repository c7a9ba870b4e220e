"""Photos to full-resolution uint8 tensors on the predictor's device.

Every source (a path, bytes, a numpy array, a PIL image) becomes the photo's
own pixels at full resolution, as a 3 x H x W uint8 tensor on the device:
the one input of everything after (`views` reduces it to the model's frame
with one antialiased resize, the same for every source). Nothing is decoded
at a reduced JPEG scale: DCT-scaled decoding gives other pixels than any
resize of the full decode, and the file, bytes and array paths must agree.

Decoding runs in worker threads (Pillow releases the GIL). On a CUDA device
with torchvision, JPEG files go to nvjpeg in one batch per model batch
(`torchvision.io.decode_jpeg(list, device="cuda")`); photos that nvjpeg would
get wrong or cannot take (EXIF-rotated when `upright`, progressive,
grey or CMYK, truncated, not JPEG) and any batch that nvjpeg refuses are
decoded by Pillow instead. CPU-decoded photos reach a GPU through pinned
memory, copied without blocking.
"""

from __future__ import annotations

import io as _io
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from carmask.inputs.resize import resize_image
from carmask.io import MAX_PIXELS, ImageError, orientation, read_photo, read_turned


@dataclass
class Source:
    """One photo to decode: `data` is a path, bytes, a numpy array or a PIL
    image; `name` labels it in predictions and error messages."""

    name: Path
    data: object


@dataclass
class _Encoded:
    """A JPEG file's bytes, left for nvjpeg."""

    data: bytes
    name: str


@dataclass
class Decoded:
    """A decoded photo of `size` (width, height): at full resolution, 3 x H x W
    uint8 on the device (to be read, never written), and on the CPU also
    reduced to a frame by the worker that decoded it, and when asked also
    to `small`, a copy at the edge refiner's size; the full-resolution
    photo may then be dropped (`photo` None) to save memory. `orientation`:
    the EXIF orientation it was turned upright from (1: none), which
    `stored_grid` undoes."""

    photo: torch.Tensor | None
    size: tuple[int, int]
    frame: torch.Tensor | None = None
    orientation: int = 1
    small: torch.Tensor | None = None


def to_tensor(photo: np.ndarray, pin: bool = False) -> torch.Tensor:
    """An H x W x 3 uint8 array as a 3 x H x W tensor (a channels-last view,
    the layout the CPU's fast resize takes): the array's own memory, or a
    copy in pinned memory if `pin` (for a non-blocking copy to a GPU)."""
    if pin:
        out = torch.empty(photo.shape, dtype=torch.uint8, pin_memory=True)
        out.numpy()[...] = photo
        return out.permute(2, 0, 1)
    # Pillow's arrays are read-only; nothing in the pipeline writes into a photo.
    # DLPack shares the memory as from_numpy would, without its warning about that.
    try:
        return torch.from_dlpack(photo).permute(2, 0, 1)
    except BufferError:  # numpy before 2.1 exports no read-only array
        return torch.from_numpy(np.array(photo)).permute(2, 0, 1)


def decode(source, *, name=None, upright: bool = True, device="cpu") -> torch.Tensor:
    """One photo (path, bytes, array or PIL image) as a 3 x H x W uint8 tensor on `device`."""
    device = torch.device(device)
    photo = to_tensor(read_photo(source, name=name, upright=upright), pin=device.type == "cuda")
    return photo.to(device, non_blocking=True)


def stored_grid(tensor: torch.Tensor, orientation: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """An upright `tensor` (rows and columns at `dims`) back on the pixel grid
    of a photo stored with the EXIF `orientation`: the inverse of the turn
    that made it upright (Pillow's `ImageOps.exif_transpose`)."""
    rows, cols = dims
    if orientation == 2:
        return tensor.flip(cols)
    if orientation == 3:
        return tensor.flip(rows, cols)
    if orientation == 4:
        return tensor.flip(rows)
    if orientation == 5:
        return tensor.transpose(rows, cols)
    if orientation == 6:  # turned a quarter clockwise to stand: back a quarter anticlockwise
        return tensor.rot90(1, (rows, cols))
    if orientation == 7:
        return tensor.transpose(rows, cols).flip(rows, cols)
    if orientation == 8:
        return tensor.rot90(-1, (rows, cols))
    return tensor


class Decoder:
    """Decodes photos in `workers` threads, ahead of their use; `gather`
    brings a batch of them to `device`. `nvjpeg`: "auto" (where torchvision
    can decode on this CUDA device), True (required), False, or a function
    that decodes a list of JPEG bytes in one batch (a stand-in). `lock`: held
    while nvjpeg decodes; whoever else queues work on the device from another
    thread holds it too (see `_nvjpeg_decoder`)."""

    def __init__(
        self,
        device: torch.device,
        workers: int,
        upright: bool = True,
        nvjpeg="auto",
        lock: threading.Lock | None = None,
    ):
        self.device, self.upright, self.lock = torch.device(device), upright, lock or threading.Lock()
        self._pin = self.device.type == "cuda"
        if callable(nvjpeg):  # a stand-in batch decoder (tests)
            self._nvjpeg = nvjpeg
        else:
            self._nvjpeg = _nvjpeg_decoder(self.device, required=nvjpeg is True) if nvjpeg else None
        # Pillow frees a decoded photo's memory to the system at once by default;
        # faulting fresh pages in for every 10 MB photo costs about as much as
        # decoding it, so let Pillow keep a few blocks for the next photos.
        Image.core.set_blocks_max(max(Image.core.get_blocks_max(), 2 * workers + 2))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="carmask-decode")
        self._lock = threading.Lock()
        self.seconds = 0.0  # decoding time summed over the workers (and nvjpeg calls)

    @property
    def uses_nvjpeg(self) -> bool:
        return self._nvjpeg is not None

    def submit(
        self,
        source: Source,
        frame: tuple[int, int] | None = None,
        keep: bool = True,
        small: tuple[int, int] | None = None,
    ) -> Future:
        """Decode `source` in a worker. On the CPU the worker also reduces it
        to `frame` (width, height), so that this work spreads over the cores,
        and keeps the full-resolution photo only if `keep`; with `small`
        (width, height: the edge refiner's size) it makes that copy too, and
        the frame from it: one resize of the full photo, not two (and the
        frame as the coarse models' 512x512 training photos gave theirs)."""
        on_cpu = self.device.type == "cpu"
        keep = keep or not frame or not on_cpu
        return self._pool.submit(self._work, source, frame if on_cpu else None, keep, small if on_cpu else None)

    def _work(self, source: Source, frame, keep: bool, small=None):
        start = time.perf_counter()
        try:
            if self._nvjpeg is not None:
                data = _jpeg_for_nvjpeg(source, self.upright)
                if data is not None:
                    return _Encoded(data, str(source.name))
            photo, orientation = self._cpu(source.data, str(source.name))
            small = resize_image(photo[None], small)[0] if small else None
            reduced = resize_image((photo if small is None else small)[None], frame)[0] if frame else None
            return Decoded(photo if keep else None, (photo.shape[-1], photo.shape[-2]), reduced, orientation, small)
        finally:
            self._count(start)

    def _cpu(self, data, name: str) -> tuple[torch.Tensor, int]:
        photo, orientation = read_turned(data, name=name, upright=self.upright)
        return to_tensor(photo, self._pin), orientation

    def _count(self, start: float) -> None:
        with self._lock:
            self.seconds += time.perf_counter() - start

    def gather(self, futures: Sequence[Future]) -> list:
        """The photos of `futures` on the device, in order: a `Decoded` each,
        or the `ImageError` that names an unreadable one."""
        out: list = []
        for future in futures:
            try:
                out.append(future.result())
            except ImageError as exc:
                out.append(exc)
        encoded = [i for i, item in enumerate(out) if isinstance(item, _Encoded)]
        if encoded:
            start = time.perf_counter()
            for i, photo in zip(encoded, self._decode_jpegs([out[i] for i in encoded])):
                out[i] = (
                    Decoded(photo, (photo.shape[-1], photo.shape[-2])) if isinstance(photo, torch.Tensor) else photo
                )
            self._count(start)
        for item in out:
            if isinstance(item, Decoded) and item.photo is not None:
                item.photo = item.photo.to(self.device, non_blocking=True)
        return out

    def _decode_jpegs(self, jpegs: list[_Encoded]) -> list:
        """nvjpeg over the batch; Pillow for all of it if nvjpeg refuses any."""
        try:
            with self.lock:
                return self._nvjpeg([jpeg.data for jpeg in jpegs])
        except RuntimeError:
            out = []
            for jpeg in jpegs:
                try:
                    out.append(self._cpu(jpeg.data, jpeg.name)[0])  # never turned: see _jpeg_for_nvjpeg
                except ImageError as exc:
                    out.append(exc)
            return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jpeg_for_nvjpeg(source: Source, upright: bool) -> bytes | None:
    """The file's bytes when nvjpeg decodes it as Pillow would, else None:
    a complete baseline YCbCr JPEG, not turned by EXIF where `upright` asks."""
    if isinstance(source.data, (bytes, bytearray)):
        data = bytes(source.data)
    elif isinstance(source.data, (str, os.PathLike)):
        if not Path(source.data).is_file():
            return None  # Pillow's path names the problem (a pipe would wait forever)
        try:
            data = Path(source.data).read_bytes()
        except OSError:
            return None  # Pillow's path names the problem
    else:
        return None
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\0").endswith(b"\xff\xd9")):
        return None  # not a JPEG, or truncated
    try:
        with Image.open(_io.BytesIO(data)) as image:  # reads the header only
            if (
                image.format != "JPEG"
                or image.mode != "RGB"
                or image.info.get("progressive")
                or image.info.get("progression")
                or image.width * image.height > MAX_PIXELS
            ):
                return None
            if upright and orientation(image) != 1:
                return None
    except Exception:  # anything odd: Pillow decodes it and names the problem
        return None
    return data


def _nvjpeg_decoder(device: torch.device, required: bool):
    """A function from JPEG bytes to 3 x H x W uint8 tensors on `device` by
    nvjpeg, or None where torchvision cannot decode there."""
    try:
        if device.type != "cuda":
            raise ValueError("nvjpeg decoding needs a CUDA device")
        decode = _batch_decoder(device)
        probe = _io.BytesIO()  # a build without nvjpeg fails here, not in the middle of a run
        Image.new("RGB", (16, 16), (200, 30, 30)).save(probe, "JPEG")
        decode([probe.getvalue()])
    except Exception as exc:  # not installed, a build that does not load beside this torch, no nvjpeg
        if required:
            raise ValueError(f"nvjpeg decoding does not work on {device}: {exc}") from None
        return None
    return decode


def _batch_decoder(device: torch.device):
    """torchvision's batched JPEG decoder onto `device` (nvjpeg on a GPU), as
    a function from a list of JPEG bytes to 3 x H x W uint8 tensors."""
    with _torchvision_quiet():
        from torchvision.io import ImageReadMode, decode_jpeg
    cuda = device.type == "cuda"

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        inputs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
        if cuda:
            # pytorch/vision#9606: the CUDA decoder writes into memory handed
            # out on this stream without waiting for the kernels queued on it
            # that still read that memory, so nothing may be queued when it
            # starts (and no other thread may queue work until it is done:
            # Decoder.lock).
            torch.cuda.synchronize(device)
        with _torchvision_quiet():
            photos = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)
        if cuda:
            torch.cuda.synchronize(device)  # its own stream: done before this stream reads the photos
        return photos

    return decode


@contextmanager
def _torchvision_quiet():
    """torchvision 0.29 deprecates its decoders in favour of torchcodec (0.26
    does not): its note silenced where carmask calls them, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        yield
