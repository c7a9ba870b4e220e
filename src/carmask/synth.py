"""Synthetic Carvana-style turntable sets with exact masks.

A car is a few convex solids (body box, cabin frustum, wheel discs) seen by an
orthographic camera that looks slightly down, rotated on a turntable in front of
one static studio background.  Only the car changes between views, so the
per-pixel median of a car's photos recovers the studio wherever the car is
absent in most views -- the property the real pipeline relies on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

ELEVATION = np.deg2rad(18.0)  # camera looks down a little, so roof and bonnet show
LIGHT = np.array([-0.45, -0.55, 0.7]) / np.linalg.norm([-0.45, -0.55, 0.7])  # (x, depth, up)
TOWARDS_CAMERA = np.array([0.0, -np.cos(ELEVATION), np.sin(ELEVATION)])
GLASS = np.array([45.0, 55.0, 68.0])
TYRE = np.array([28.0, 28.0, 30.0])
RIM = np.array([150.0, 152.0, 158.0])
NOISE_SIGMA = 2.0  # sensor noise, grey levels

# (RGB, weight): many white/silver cars so the car often resembles the light studio
PALETTE = [
    ((236, 236, 238), 3),
    ((196, 198, 202), 3),
    ((120, 122, 126), 2),
    ((28, 28, 32), 2),
    ((165, 25, 30), 1),
    ((30, 60, 140), 1),
    ((40, 80, 55), 1),
    ((205, 170, 120), 1),
]


@dataclass(frozen=True)
class CarSpec:
    """Shape and colour of one synthetic car; lengths relative to the body length."""

    colour: tuple[int, int, int]
    length: float  # body length as a fraction of the frame scale min(W, 1.5 H)
    width: float  # body width / length
    height: float  # body (below the cabin) height / length
    cabin_length: float  # cabin base length / length
    cabin_height: float  # cabin height / length
    cabin_shift: float  # cabin centre along the car / length (negative = towards rear)
    wheel_radius: float  # / length
    offset: tuple[float, float]  # car centre offset (dx, dy) as fractions of the frame
    heading: float  # radians added to the turntable angle


def random_car(rng: np.random.Generator) -> CarSpec:
    """Draw a plausible car; all randomness comes from rng."""
    weights = np.array([w for _, w in PALETTE], float)
    base = np.array(PALETTE[rng.choice(len(PALETTE), p=weights / weights.sum())][0])
    # Mostly brightness jitter; a little per-channel so greys stay nearly neutral.
    colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 8) + rng.normal(0, 2, 3), 0, 255))
    u = rng.uniform
    return CarSpec(
        colour=colour,
        length=u(0.74, 0.84),
        width=u(0.45, 0.50),
        height=u(0.17, 0.22),
        cabin_length=u(0.45, 0.58),
        cabin_height=u(0.14, 0.18),
        cabin_shift=u(-0.12, 0.0),
        wheel_radius=u(0.085, 0.10),
        offset=(u(-0.03, 0.03), u(-0.03, 0.03)),
        heading=u(-0.08, 0.08),
    )


def studio_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Light wall with a lighting gradient and faint texture over a floor band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    horizon = rng.uniform(0.50, 0.58)
    # Key light from the upper centre: wall brightest there, falling off to the sides.
    wall = 222 + 14 * (1 - y / horizon) - 18 * (x - 0.5) ** 2
    floor = 188 + 30 * (y - horizon) / (1 - horizon) - 12 * (x - 0.5) ** 2
    grey = np.where(y < horizon, wall, floor)
    # Soft edge plus a slightly darker seam: the faint horizon line of a studio cove.
    seam = np.exp(-((((y - horizon) * height) / max(1.0, 0.004 * height)) ** 2))
    grey = grey - 10 * seam + 3 * _smooth_noise(rng, width, height, 10) + rng.normal(0, 1.0, grey.shape)
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.015, 0.015, 3)  # slight colour cast
    return np.clip(grey[..., None] * tint, 0, 255).round().astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency unit noise, generated coarse and upsampled so any size is cheap."""
    coarse = rng.normal(0, 1, (cells, int(cells * 1.5))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))


# --- geometry -------------------------------------------------------------------

# Corner order of a frustum: bottom rectangle 0-3, top rectangle 4-7 (same sign pattern).
_SIGNS = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
_FACES = [[0, 1, 2, 3], [4, 5, 6, 7]] + [[k, (k + 1) % 4, (k + 1) % 4 + 4, k + 4] for k in range(4)]


def _frustum(bottom, top, h0, h1, shift_bottom=0.0, shift_top=0.0) -> np.ndarray:
    """8 corners (u along the car, v across, h up) of a box with possibly smaller top."""
    lo = [(shift_bottom + su * bottom[0], sv * bottom[1], h0) for su, sv in _SIGNS]
    hi = [(shift_top + su * top[0], sv * top[1], h1) for su, sv in _SIGNS]
    return np.array(lo + hi, float)


def _to_camera(pts: np.ndarray, angle: float) -> np.ndarray:
    """Turntable rotation: (u, v, h) -> (x, depth, h), depth growing away from camera."""
    c, s = np.cos(angle), np.sin(angle)
    u, v, h = pts.T
    return np.stack([u * c - v * s, u * s + v * c, h], axis=1)


def _to_screen(cam: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """Orthographic projection for a camera tilted down by ELEVATION."""
    x, z, h = cam.T
    sy = origin[1] - h * np.cos(ELEVATION) - z * np.sin(ELEVATION)
    return np.stack([origin[0] + x, sy], axis=1)


def _polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside the convex hull of points (evaluated in its bbox)."""
    mask = np.zeros(shape, bool)
    try:
        eq = ConvexHull(points).equations
    except (QhullError, ValueError):  # degenerate (edge-on) face
        return mask
    x0, y0 = np.clip(np.floor(points.min(0)).astype(int), 0, None)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    yy, xx = np.mgrid[y0 : min(y1, shape[0]), x0 : min(x1, shape[1])] + 0.5
    inside = np.all(eq[:, :1, None] * xx + eq[:, 1:2, None] * yy + eq[:, 2:, None] <= 0, axis=0)
    mask[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] = inside
    return mask


def _ellipse_mask(centre, axes, shape) -> np.ndarray:
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return ((xx + 0.5 - centre[0]) / axes[0]) ** 2 + ((yy + 0.5 - centre[1]) / axes[1]) ** 2 <= 1


def _visible_faces(corners: np.ndarray, angle: float):
    """Yield (face corner indices, camera-space unit normal) for faces facing the camera."""
    cam = _to_camera(corners, angle)
    centre = cam.mean(0)
    for face in _FACES:
        p = cam[face]
        n = np.cross(p[1] - p[0], p[3] - p[0])
        n = n / (np.linalg.norm(n) + 1e-12)
        n = n if np.dot(n, p.mean(0) - centre) > 0 else -n  # outward
        if np.dot(n, TOWARDS_CAMERA) > 1e-6:
            yield face, n


def _shade(n: np.ndarray) -> float:
    return 0.55 + 0.5 * max(0.0, float(np.dot(n, LIGHT)))


# --- rendering ------------------------------------------------------------------


def _car_parts(car: CarSpec, scale: float):
    """Body and cabin corners and wheel centres (car coordinates, pixels)."""
    L = car.length * scale
    W, r = car.width * L, car.wheel_radius * L
    clearance = 0.65 * r
    top = clearance + car.height * L
    body = _frustum((L / 2, W / 2), (L / 2, W / 2), clearance, top)
    cl, cs = car.cabin_length * L / 2, car.cabin_shift * L
    # Roof shorter than the cabin base and shifted back: raked windscreen.
    cabin = _frustum((cl, 0.46 * W), (0.6 * cl, 0.38 * W), top, top + car.cabin_height * L, cs, cs - 0.15 * cl)
    wb, tread = 0.34 * L, W / 2 - 0.15 * r
    wheels = np.array([(su * wb, sv * tread, r) for su, sv in _SIGNS], float)
    return body, cabin, wheels, r


def _origin(car: CarSpec, size: tuple[int, int], views: int):
    """Screen position of the turntable centre so the car stays centred in every view."""
    width, height = size
    scale = min(width, 1.5 * height)
    body, cabin, wheels, r = _car_parts(car, scale)
    ground = wheels.copy()
    ground[:, 2] = 0
    pts = np.vstack([body, cabin, ground])
    angles = 2 * np.pi * np.arange(views) / views + car.heading
    ys = np.concatenate([_to_screen(_to_camera(pts, a), (0, 0))[:, 1] for a in angles])
    cy = height * (0.5 + car.offset[1]) - (ys.min() + ys.max()) / 2
    return (width * (0.5 + car.offset[0]), cy), scale


def _paint(photo, mask, region, colour):
    """Opaque car part: colour (RGB or anything broadcasting to the photo) and mask together."""
    photo[region] = np.broadcast_to(colour, photo.shape)[region]
    mask |= region


def render_view(
    background: np.ndarray, car: CarSpec, view: int, views: int = 16, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Photo (uint8 HxWx3) and exact 0/1 car mask for turntable view 1..views."""
    rng = np.random.default_rng(view) if rng is None else rng
    photo, mask = _render(background, car, view, views)
    photo += rng.normal(0, NOISE_SIGMA, photo.shape)
    return np.clip(photo, 0, 255).round().astype(np.uint8), mask.astype(np.uint8)


def render_soft_view(
    background: np.ndarray,
    car: CarSpec,
    view: int,
    views: int = 16,
    rng: np.random.Generator | None = None,
    supersample: int = 4,
    blur: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """Photo (uint8 HxWx3) with soft edges of known alpha (float32 HxW, 0..1).

    The view is rendered `supersample` times larger and averaged down, so each
    edge pixel mixes car and studio by the car's share of it, as a camera's
    pixel does; a `blur` (pixels, the lens) softens photo and alpha alike.
    Then photo = alpha * car + (1 - alpha) * studio holds at every pixel, up to
    the sensor noise, the studio being `background` as lit (shadow included).
    """
    rng = np.random.default_rng(view) if rng is None else rng
    big = np.repeat(np.repeat(background, supersample, 0), supersample, 1)
    photo, mask = _render(big, car, view, views)
    height, width = background.shape[:2]
    cells = (height, supersample, width, supersample)
    alpha = mask.astype(np.float32).reshape(cells).mean(axis=(1, 3))
    # Average the car's colour (not the shadowed studio) where it covers the pixel:
    # outside the car the photo is the studio itself, shadow included.
    car_sum = (photo * mask[..., None]).reshape(*cells, 3).sum(axis=(1, 3))
    car_colour = car_sum / np.maximum(mask.reshape(cells).sum(axis=(1, 3)), 1)[..., None]
    studio = np.where(mask[..., None], np.nan, photo).reshape(*cells, 3)
    with warnings.catch_warnings():  # pixels wholly covered by the car have no studio: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        studio = np.nanmean(studio, axis=(1, 3))
    studio = np.where(np.isnan(studio), background, studio)
    if blur:
        alpha = ndimage.gaussian_filter(alpha, blur)
        car_colour = (
            np.stack([ndimage.gaussian_filter(car_colour[..., c] * alpha, blur) for c in range(3)], -1)
            / np.maximum(alpha, 1e-6)[..., None]
        )
    out = alpha[..., None] * car_colour + (1 - alpha[..., None]) * studio
    out += rng.normal(0, NOISE_SIGMA, out.shape)
    return np.clip(out, 0, 255).round().astype(np.uint8), alpha


def _render(background: np.ndarray, car: CarSpec, view: int, views: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free photo (float32) and boolean car mask."""
    shape = background.shape[:2]
    angle = 2 * np.pi * (view - 1) / views + car.heading
    origin, scale = _origin(car, (shape[1], shape[0]), views)
    body, cabin, wheels, r = _car_parts(car, scale)
    screen = lambda pts: _to_screen(_to_camera(pts, angle), origin)  # noqa: E731

    photo = background.astype(np.float32)
    photo *= 1 - 0.35 * _shadow(body, screen, shape, scale)[..., None]
    mask = np.zeros(shape, bool)

    wheel_cam = _to_camera(wheels, angle)
    order = np.argsort(-wheel_cam[:, 1])  # far to near
    far = [i for i in order if wheel_cam[i, 1] > 0]
    near = [i for i in order if wheel_cam[i, 1] <= 0]
    for i in far:
        _draw_wheel(photo, mask, wheels[i], screen, angle, r, rim=False)
    _draw_body(photo, mask, body, screen, angle, car, scale)
    _draw_cabin(photo, mask, cabin, screen, angle, car)
    for i in near:
        # The hubcap shows only when that side of the car faces the camera.
        _draw_wheel(photo, mask, wheels[i], screen, angle, r, rim=wheel_cam[i, 1] < -0.1 * r)
    return photo, mask


def _shadow(body, screen, shape, scale) -> np.ndarray:
    """Soft contact shadow in 0..1: blurred, slightly enlarged footprint of the body."""
    foot = body[:4].copy()
    foot[:, :2] *= 1.05
    foot[:, 2] = 0
    region = _polygon_mask(screen(foot), shape).astype(np.float32)
    return _blur(region, 0.025 * scale)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur from two box passes: cost independent of sigma at full-size frames."""
    size = max(1, int(round(np.sqrt(6 * sigma**2 + 1))))  # two boxes of n have variance (n^2-1)/6
    return ndimage.uniform_filter(ndimage.uniform_filter(img, size), size)


def _draw_body(photo, mask, body, screen, angle, car, scale):
    # Rounded silhouette: blurring a convex mask and thresholding at 0.5 eats the corners.
    outline = _polygon_mask(screen(body), mask.shape)
    outline = _blur(outline.astype(np.float32), 0.012 * car.length * scale) > 0.5
    colour = np.array(car.colour, np.float32)
    yy = np.arange(mask.shape[0], dtype=np.float32)[:, None, None]
    ys = screen(body)[:, 1]
    t = (yy - ys.min()) / max(1.0, ys.max() - ys.min())
    # Darker towards the sills, plus a bright shoulder-line reflection.
    gradient = 1.08 - 0.22 * t + 0.25 * np.exp(-(((t - 0.3) / 0.06) ** 2))
    for face, n in _visible_faces(body, angle):
        region = _polygon_mask(screen(body[face]), mask.shape) & outline
        lit = np.clip(colour * _shade(n) * gradient, 0, 255)
        _paint(photo, mask, region, lit)


def _draw_cabin(photo, mask, cabin, screen, angle, car):
    colour = np.array(car.colour, np.float32)
    for face, n in _visible_faces(cabin, angle):
        quad = screen(cabin[face])
        _paint(photo, mask, _polygon_mask(quad, mask.shape), np.clip(colour * _shade(n), 0, 255))
        if n[2] < 0.9:  # side faces get a window; the border left over reads as pillars
            centre = quad.mean(0)
            glass = _polygon_mask(centre + 0.78 * (quad - centre), mask.shape)
            photo[glass] = GLASS * (0.8 + 0.5 * _shade(n))


def _draw_wheel(photo, mask, centre, screen, angle, r, rim):
    c = screen(centre[None])[0]
    # The disc faces along the axle: wide from the side, a thin tyre tread head-on.
    axes = (r * abs(np.cos(angle)) + 0.3 * r * abs(np.sin(angle)) + 0.5, r * np.cos(ELEVATION))
    _paint(photo, mask, _ellipse_mask(c, axes, mask.shape), TYRE)
    if rim:
        hub = _ellipse_mask(c, (0.55 * axes[0], 0.55 * axes[1]), mask.shape)
        photo[hub] = RIM


# --- dataset --------------------------------------------------------------------


def _save_mask_gif(mask: np.ndarray, path: Path) -> None:
    """Palette GIF whose indices are the 0/1 mask values, like Kaggle's train_masks."""
    img = Image.fromarray(mask.astype(np.uint8))  # mode L
    img.putpalette([0, 0, 0, 255, 255, 255])  # turns it into mode P, indices untouched
    img.save(path, optimize=False)


def make_dataset(
    root: str | Path,
    cars: int = 4,
    views: int = 16,
    size: tuple[int, int] = (192, 128),
    seed: int = 0,
    test_cars: int = 0,
) -> Path:
    """Write train/, train_masks/ and test/ in the Kaggle Carvana layout; return root."""
    root = Path(root)
    for sub in ("train", "train_masks") + (("test",) if test_cars else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    background = studio_background(*size, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(cars + test_cars):
        car_id, is_train = f"synth{seed:03d}c{i:03d}", i < cars
        spec = random_car(rng)
        for view in range(1, views + 1):
            photo, mask = render_view(background, spec, view, views, rng)
            name = f"{car_id}_{view:02d}"
            Image.fromarray(photo).save(root / ("train" if is_train else "test") / f"{name}.jpg", quality=95)
            if is_train:
                _save_mask_gif(mask, root / "train_masks" / f"{name}_mask.gif")
    return root
