"""Who walks where and when: straight walks across a camera's ground, chained into per-identity timelines.

Every identity walks through a random subset of at least two cameras, one visit at a time with a
gap between visits (it cannot be in two places at once), so each identity has cross-camera
matches. Gaps are sized so that on average ``walkers_per_frame`` people are in each camera, as far
as the number of identities allows (each one spends at most 90% of the time on camera).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.synthetic.config import WorldConfig
from training.synthetic.scene import CAMERA_STYLES, Camera, CameraGeometry

_ENTRY_MARGIN_M = 0.6
_MIN_GAP_S = 1.0
_MIN_CAMERA_OVERLAP_S = 2.0


@dataclass(frozen=True)
class WalkPath:
    """A straight walk on the ground from ``start`` to ``end`` ((x, depth) in metres), maybe with one pause."""

    start: tuple[float, float]
    end: tuple[float, float]
    speed: float
    pause_at: float
    pause_s: float

    @property
    def length(self) -> float:
        """Walked distance in metres."""
        return math.hypot(self.end[0] - self.start[0], self.end[1] - self.start[1])

    @property
    def duration(self) -> float:
        """Seconds from entering to leaving, pause included."""
        return self.length / self.speed + self.pause_s

    @property
    def heading(self) -> float:
        """Walking direction on the ground: 0 = to the right, +pi/2 = away from the camera."""
        return math.atan2(self.end[1] - self.start[1], self.end[0] - self.start[0])

    def walked(self, t: float) -> float:
        """Metres walked ``t`` seconds after the start."""
        paused = min(max(t - self.pause_at, 0.0), self.pause_s)
        return min(max((t - paused) * self.speed, 0.0), self.length)

    def position(self, t: float) -> tuple[float, float]:
        """Ground position (x, depth) ``t`` seconds after the start."""
        f = self.walked(t) / self.length
        return self.start[0] + f * (self.end[0] - self.start[0]), self.start[1] + f * (self.end[1] - self.start[1])

    def amplitude(self, t: float) -> float:
        """Stride amplitude: 1 while walking, easing to 0 (standing) around the pause."""
        if self.pause_s <= 0:
            return 1.0
        away = max(self.pause_at - t, t - self.pause_at - self.pause_s, 0.0)
        return min(1.0, away / 0.5)


@dataclass(frozen=True)
class Visit:
    """One walk of an identity through one camera, starting at ``t_start`` seconds into the videos."""

    identity: int
    camera: int
    t_start: float
    path: WalkPath
    phase0: float

    @property
    def t_end(self) -> float:
        """Time (seconds into the videos) the walk ends."""
        return self.t_start + self.path.duration

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for world.json."""
        return {"camera": self.camera, "t_start": round(self.t_start, 3), "t_end": round(self.t_end, 3),
                "path": asdict(self.path)}


def _edge_x(geometry: CameraGeometry, depth: float, side: int) -> float:
    return geometry.x_range(depth)[side] + (_ENTRY_MARGIN_M if side else -_ENTRY_MARGIN_M)


def random_path(geometry: CameraGeometry, style: str, rng: np.random.Generator) -> WalkPath:
    """A walk typical of the camera's style: across, toward, away from the camera or diagonally."""
    kinds = list(CAMERA_STYLES[style])
    weights = np.array([CAMERA_STYLES[style][k] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    near, far = geometry.near_depth_m, geometry.far_depth_m
    low, high = near * 1.1, far
    if kind in ("toward", "away"):
        left, right = geometry.x_range(far)
        x_far = float(rng.uniform(left + 0.2 * (right - left), right - 0.2 * (right - left)))
        start, end = (x_far, far), (x_far + float(rng.uniform(-1.5, 1.5)), near * 0.72)
        flip = kind == "away"
    else:
        if kind == "lateral":
            d0 = float(rng.uniform(low, high))
            d1 = float(np.clip(d0 * rng.uniform(0.85, 1.15), low, high))
        else:
            d0 = float(rng.uniform(low, low + 0.4 * (high - low)))
            d1 = float(rng.uniform(low + 0.6 * (high - low), high))
        start, end = (_edge_x(geometry, d0, 0), d0), (_edge_x(geometry, d1, 1), d1)
        flip = bool(rng.random() < 0.5)
    if flip:
        start, end = end, start
    speed = float(rng.uniform(1.0, 1.5))
    walk_s = math.hypot(end[0] - start[0], end[1] - start[1]) / speed
    pause_s = float(rng.uniform(1.0, 3.0)) if rng.random() < 0.25 else 0.0
    pause_at = float(rng.uniform(0.3, 0.7)) * walk_s if pause_s else 0.0
    return WalkPath((round(start[0], 4), round(start[1], 4)), (round(end[0], 4), round(end[1], 4)),
                    round(speed, 4), round(pause_at, 4), round(pause_s, 4))


def _timeline(identity: int, cameras: tuple[Camera, ...], config: WorldConfig, occupancy: float,
              rng: np.random.Generator) -> list[Visit]:
    k = int(rng.integers(2, min(len(cameras), config.max_cameras_per_identity) + 1))
    subset = [int(c) for c in rng.permutation(len(cameras))[:k]]
    visits: list[Visit] = []
    t: float | None = None
    while True:
        camera = subset[len(visits) % k]
        path = random_path(cameras[camera].geometry, cameras[camera].style, rng)
        gap = path.duration * (1.0 - occupancy) / occupancy
        if t is None:
            t = float(rng.uniform(-0.6 * path.duration, gap))
        if t >= config.duration_s:
            return visits
        visits.append(Visit(identity, camera, round(t, 4), path, round(float(rng.uniform(0, 2 * math.pi)), 4)))
        t += path.duration + max(_MIN_GAP_S, gap * float(rng.uniform(0.5, 1.5)))


def _cameras_seen(visits: list[Visit], duration_s: float) -> set[int]:
    seen = set()
    for v in visits:
        overlap = min(v.t_end, duration_s) - max(v.t_start, 0.0)
        if overlap >= min(_MIN_CAMERA_OVERLAP_S, 0.6 * v.path.duration):
            seen.add(v.camera)
    return seen


def schedule_visits(config: WorldConfig, cameras: tuple[Camera, ...], rng: np.random.Generator) -> tuple[Visit, ...]:
    """Visits of every identity, each seen walking through at least two cameras within the videos."""
    occupancy = min(0.9, config.walkers_per_frame * len(cameras) / config.n_identities)
    visits: list[Visit] = []
    for identity in range(config.n_identities):
        for _ in range(200):
            timeline = _timeline(identity, cameras, config, occupancy, rng)
            if len(_cameras_seen(timeline, config.duration_s)) >= 2:
                break
        else:
            raise ValueError(f"duration_s={config.duration_s} is too short for identities to visit two cameras")
        visits.extend(timeline)
    return tuple(sorted(visits, key=lambda v: (v.camera, v.t_start, v.identity)))
