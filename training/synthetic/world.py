"""A whole synthetic world built from a ``WorldConfig``: identities, cameras and visits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.synthetic.appearance import Identity, make_identities, shared_colours
from training.synthetic.config import WorldConfig
from training.synthetic.scene import Camera, make_camera
from training.synthetic.schedule import Visit, schedule_visits

WORLD_FORMAT = "kpr-synthetic-world-v1"

_IDENTITY_STREAM, _CAMERA_STREAM, _SCHEDULE_STREAM = 1, 2, 3


@dataclass(frozen=True)
class World:
    """Everything needed to render any frame of any camera, deterministically."""

    config: WorldConfig
    identities: tuple[Identity, ...]
    cameras: tuple[Camera, ...]
    visits: tuple[Visit, ...]
    _by_camera: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_camera = {c.index: tuple(i for i, v in enumerate(self.visits) if v.camera == c.index) for c in self.cameras}
        object.__setattr__(self, "_by_camera", by_camera)

    def visits_at(self, camera: int, t: float) -> list[int]:
        """Indices of the visits under way in ``camera`` at ``t`` seconds into the videos."""
        return [i for i in self._by_camera[camera] if self.visits[i].t_start <= t < self.visits[i].t_end]

    def to_dict(self, videos: dict[str, str] | None = None) -> dict[str, Any]:
        """The world.json content: config, identities (with their visits and shared colours), cameras."""
        identities = []
        for index, identity in enumerate(self.identities):
            own = sorted((v for v in self.visits if v.identity == index), key=lambda v: v.t_start)
            entry = identity.to_dict()
            entry["cameras"] = sorted({self.cameras[v.camera].camera_id for v in own})
            entry["visits"] = [{**v.to_dict(), "camera": self.cameras[v.camera].camera_id} for v in own]
            identities.append(entry)
        cameras = [{**c.to_dict(), "video": (videos or {}).get(c.camera_id)} for c in self.cameras]
        return {"format": WORLD_FORMAT, "config": self.config.to_dict(), "identities": identities,
                "shared_colours": shared_colours(self.identities), "cameras": cameras}


def build_world(config: WorldConfig) -> World:
    """Identities, cameras and visit schedule drawn from independent streams of ``config.seed``."""
    identities = make_identities(config.n_identities, np.random.default_rng([config.seed, _IDENTITY_STREAM]))
    camera_rng = np.random.default_rng([config.seed, _CAMERA_STREAM])
    cameras = tuple(make_camera(i, config.width, config.height, config.occluders_per_camera, camera_rng)
                    for i in range(config.n_cameras))
    visits = schedule_visits(config, cameras, np.random.default_rng([config.seed, _SCHEDULE_STREAM]))
    return World(config, tuple(identities), cameras, visits)
