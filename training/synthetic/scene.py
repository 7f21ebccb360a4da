"""Cameras of the synthetic world: ground-plane perspective, background, static occluders and image look.

A camera looks at a flat ground from ``cam_height_m`` with a level pinhole of focal ``focal``
pixels, so a foot at depth d lands on row ``horizon_v + focal * cam_height_m / d`` and a person of
height h is ``focal * h / d`` pixels tall: people higher up in the image are smaller. Each camera
has its own ground and wall colours and texture, static occluders standing on the ground (drawn
in depth order with the walkers), an illumination (per-channel gain and offset), blur and noise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from training.synthetic.appearance import Colour

CAMERA_STYLES: dict[str, dict[str, float]] = {
    "corridor": {"lateral": 0.75, "diagonal": 0.25},
    "entrance": {"toward": 0.4, "away": 0.4, "diagonal": 0.2},
    "plaza": {"diagonal": 0.5, "lateral": 0.25, "toward": 0.125, "away": 0.125},
    "mixed": {"lateral": 0.25, "diagonal": 0.25, "toward": 0.25, "away": 0.25},
}
"""How often walkers of each camera style cross the view (lateral), come toward it, walk away or cut across."""

GROUND_COLOURS: tuple[Colour, ...] = ((120, 130, 135), (95, 110, 120), (140, 145, 150), (80, 105, 95), (110, 120, 150))
WALL_COLOURS: tuple[Colour, ...] = ((170, 180, 190), (120, 140, 175), (185, 175, 160), (150, 160, 140), (200, 200, 205))
OCCLUDER_COLOURS: dict[str, Colour] = {"concrete": (168, 172, 176), "wood": (60, 105, 160), "steel": (140, 115, 90),
                                       "hedge": (50, 120, 60), "terracotta": (70, 95, 190)}
OCCLUDER_KINDS: dict[str, tuple[float, float]] = {"pillar": (0.5, 6.0), "crates": (1.1, 1.0), "bench": (1.8, 0.9),
                                                  "planter": (1.3, 1.15), "sign": (0.9, 1.9)}
"""Occluder kinds with their (width, height) in metres."""


@dataclass(frozen=True)
class CameraGeometry:
    """Level pinhole camera above a flat ground; depths and lateral positions in metres."""

    width: int
    height: int
    focal: float
    horizon_v: float
    cam_height_m: float
    centre_u: float
    far_depth_m: float

    @property
    def near_depth_m(self) -> float:
        """Depth whose ground point lies on the bottom row of the image."""
        return self.focal * self.cam_height_m / (self.height - self.horizon_v)

    def ground_to_image(self, x_m: float, depth_m: float) -> tuple[float, float]:
        """Pixel (u, v) of the ground point at lateral ``x_m`` and ``depth_m``."""
        return self.centre_u + self.focal * x_m / depth_m, self.horizon_v + self.focal * self.cam_height_m / depth_m

    def pixels_per_metre(self, depth_m: float) -> float:
        """Image scale of objects standing at ``depth_m``."""
        return self.focal / depth_m

    def x_range(self, depth_m: float) -> tuple[float, float]:
        """Lateral extent (metres) of the view at ``depth_m``."""
        return -self.centre_u * depth_m / self.focal, (self.width - self.centre_u) * depth_m / self.focal


@dataclass(frozen=True)
class CameraLook:
    """Illumination (per-channel gain, offset), blur and sensor noise of a camera."""

    gain: tuple[float, float, float]
    offset: float
    blur_sigma: float
    noise_sigma: float

    def lut(self) -> np.ndarray:
        """Per-channel tone lookup table [256, 1, 3] for ``cv2.LUT``."""
        levels = np.arange(256, dtype=float)[:, None] * np.array(self.gain) + self.offset
        return np.clip(np.round(levels), 0, 255).astype(np.uint8)[:, None, :]

    def tone(self, colours: np.ndarray) -> np.ndarray:
        """BGR colours [..., 3] as this camera's illumination shows them (before blur and noise)."""
        colours = np.asarray(colours, np.uint8)
        return self.lut()[colours, 0, np.arange(3)]


@dataclass(frozen=True)
class Occluder:
    """A static object standing on the ground in front of (or behind) walkers."""

    kind: str
    x_m: float
    depth_m: float
    colour: str
    seed: int


@dataclass(frozen=True)
class Camera:
    """One camera: name, walking-direction style, geometry, look, background and occluders."""

    camera_id: str
    index: int
    style: str
    geometry: CameraGeometry
    look: CameraLook
    ground: Colour
    wall: Colour
    wall_depth_m: float
    background_seed: int
    occluders: tuple[Occluder, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for world.json."""
        return asdict(self)


def make_camera(index: int, width: int, height: int, n_occluders: int, rng: np.random.Generator) -> Camera:
    """A camera with random viewpoint, scene colours, look and ``n_occluders`` non-overlapping occluders."""
    style = list(CAMERA_STYLES)[index % len(CAMERA_STYLES)]
    focal = float(rng.uniform(0.95, 1.3)) * width
    horizon = float(rng.uniform(0.05, 0.3)) * height
    cam_height = float(rng.uniform(2.6, 3.6))
    far = focal * cam_height / (height - horizon) * float(rng.uniform(1.9, 2.6))
    geometry = CameraGeometry(width, height, round(focal, 2), round(horizon, 2), round(cam_height, 3),
                              round(width / 2 + float(rng.uniform(-0.08, 0.08)) * width, 2), round(far, 3))
    brightness = float(rng.uniform(0.8, 1.05))
    look = CameraLook(gain=tuple(round(brightness * float(g), 3) for g in rng.uniform(0.9, 1.1, 3)),
                      offset=round(float(rng.uniform(-4, 10)), 2), blur_sigma=round(float(rng.uniform(0.3, 0.9)), 3),
                      noise_sigma=round(float(rng.uniform(1.5, 4.0)), 3))
    ground = GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))]
    wall = WALL_COLOURS[rng.integers(len(WALL_COLOURS))]
    occluders = _place_occluders(geometry, n_occluders, rng)
    return Camera(f"cam{index + 1}", index, style, geometry, look, ground, wall, round(far * 1.4, 3),
                  int(rng.integers(2**31)), occluders)


def _place_occluders(geometry: CameraGeometry, count: int, rng: np.random.Generator) -> tuple[Occluder, ...]:
    near, far = geometry.near_depth_m, geometry.far_depth_m
    placed: list[Occluder] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(count * 20):
        if len(placed) == count:
            break
        kind = list(OCCLUDER_KINDS)[rng.integers(len(OCCLUDER_KINDS))]
        depth = float(rng.uniform(near * 1.2, near + 0.5 * (far - near)))
        left, right = geometry.x_range(depth)
        x = float(rng.uniform(left + 0.15 * (right - left), right - 0.15 * (right - left)))
        box = occluder_box(geometry, kind, x, depth)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
            continue
        boxes.append(box)
        colour = list(OCCLUDER_COLOURS)[rng.integers(len(OCCLUDER_COLOURS))]
        placed.append(Occluder(kind, round(x, 3), round(depth, 3), colour, int(rng.integers(2**31))))
    return tuple(placed)


def occluder_box(geometry: CameraGeometry, kind: str, x_m: float, depth_m: float) -> tuple[float, float, float, float]:
    """Image box (x0, y0, x1, y1) of an occluder, unclipped."""
    width_m, height_m = OCCLUDER_KINDS[kind]
    u, v = geometry.ground_to_image(x_m, depth_m)
    scale = geometry.pixels_per_metre(depth_m)
    return u - width_m * scale / 2, v - height_m * scale, u + width_m * scale / 2, v


def _shade(colour: Colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, round(c * factor))) for c in colour)


def draw_occluder(geometry: CameraGeometry, occluder: Occluder) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Sprite of an occluder: (origin x, y), BGR pixels and coverage mask, drawn at its depth."""
    x0, y0, x1, y1 = occluder_box(geometry, occluder.kind, occluder.x_m, occluder.depth_m)
    ox, oy = int(np.floor(x0)), int(np.floor(y0))
    w, h = int(np.ceil(x1)) - ox + 1, int(np.ceil(y1)) - oy + 1
    s = geometry.pixels_per_metre(occluder.depth_m)
    rng = np.random.default_rng(occluder.seed)
    base = OCCLUDER_COLOURS[occluder.colour]
    dark, light = _shade(base, 0.7), _shade(base, 1.15)
    image = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    left, bottom = x0 - ox, y1 - oy

    def rect(a: float, top_m: float, b: float, low_m: float, colour: tuple[int, int, int]) -> None:
        """Fill from ``a`` to ``b`` metres across and ``low_m`` to ``top_m`` metres above the ground."""
        p0 = (int(round(left + a * s)), int(round(bottom - top_m * s)))
        p1 = (int(round(left + b * s)) - 1, int(round(bottom - low_m * s)) - 1)
        cv2.rectangle(image, p0, p1, colour, -1)
        cv2.rectangle(mask, p0, p1, 255, -1)

    width_m, height_m = OCCLUDER_KINDS[occluder.kind]
    if occluder.kind == "pillar":
        rect(0, height_m, width_m, 0, base)
        rect(0, height_m, 0.08, 0, dark)
        rect(width_m - 0.1, height_m, width_m, 0, light)
    elif occluder.kind == "crates":
        for col, top in ((0.0, 1.0), (0.55, 0.55)):
            rect(col, top, col + 0.55, 0, base)
            for plank in np.arange(0.0, top, 0.18):
                rect(col, top - plank, col + 0.55, top - plank - 0.03, dark)
            rect(col, top, col + 0.04, 0, dark)
    elif occluder.kind == "bench":
        rect(0, 0.9, width_m, 0.58, base)
        rect(0, 0.5, width_m, 0.42, base)
        for leg in (0.1, width_m - 0.18):
            rect(leg, 0.42, leg + 0.08, 0, dark)
        rect(0, 0.76, width_m, 0.72, dark)
    elif occluder.kind == "planter":
        rect(0, 0.7, width_m, 0, base)
        rect(0, 0.7, width_m, 0.62, dark)
        centre = (int(round(left + width_m * s / 2)), int(round(bottom - 0.8 * s)))
        axes = (max(1, int(width_m * s / 2.2)), max(1, int(0.38 * s)))
        leaf = _shade(OCCLUDER_COLOURS["hedge"], float(rng.uniform(0.8, 1.1)))
        cv2.ellipse(image, centre, axes, 0, 180, 360, leaf, -1)
        cv2.ellipse(mask, centre, axes, 0, 180, 360, 255, -1)
    else:
        rect(width_m / 2 - 0.04, 1.2, width_m / 2 + 0.04, 0, dark)
        rect(0, height_m, width_m, 1.2, light)
        rect(0.08, height_m - 0.08, width_m - 0.08, 1.28, base)
    return (ox, oy), image, mask > 0


def render_background(camera: Camera) -> np.ndarray:
    """Static background of a camera: textured ground tiles in perspective, a back wall with windows."""
    g = camera.geometry
    rng = np.random.default_rng(camera.background_seed)
    image = np.empty((g.height, g.width, 3), np.uint8)
    image[:] = camera.ground
    wall_row = int(round(g.ground_to_image(0.0, camera.wall_depth_m)[1]))
    image[:max(0, wall_row)] = camera.wall
    line = _shade(camera.ground, 0.85)
    depth = g.near_depth_m * 0.6
    while depth < camera.wall_depth_m:
        row = int(round(g.ground_to_image(0.0, depth)[1]))
        cv2.line(image, (0, row), (g.width - 1, row), line, 1)
        depth *= 1.18
    left, right = g.x_range(g.near_depth_m * 0.6)
    for x in np.arange(np.floor(left), np.ceil(right) + 1, 1.2):
        p0 = g.ground_to_image(float(x), g.near_depth_m * 0.6)
        p1 = g.ground_to_image(float(x), camera.wall_depth_m)
        cv2.line(image, (int(round(p0[0])), int(round(p0[1]))), (int(round(p1[0])), int(round(p1[1]))), line, 1)
    scale = g.pixels_per_metre(camera.wall_depth_m)
    window = _shade(camera.wall, 0.6)
    wl, wr = g.x_range(camera.wall_depth_m)
    for x in np.arange(wl + float(rng.uniform(0.5, 2.0)), wr, float(rng.uniform(2.5, 4.0))):
        u = int(round(g.ground_to_image(float(x), camera.wall_depth_m)[0]))
        door = rng.random() < 0.25
        top = wall_row - int(round((2.2 if door else 2.6) * scale))
        bottom = wall_row if door else wall_row - int(round(1.0 * scale))
        cv2.rectangle(image, (u, top), (u + int(round((1.1 if door else 1.4) * scale)), bottom - 1), window, -1)
    shading = cv2.resize(rng.uniform(0.88, 1.08, (6, 10)).astype(np.float32), (g.width, g.height),
                         interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 3.0, (g.height, g.width, 1)).astype(np.float32)
    textured = image.astype(np.float32) * shading[..., None] + grain
    return np.clip(textured, 0, 255).astype(np.uint8)
