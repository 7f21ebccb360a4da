"""Configuration of a synthetic multi-camera world: everything else is derived from it and its seed."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kpr_model.config_check import checked_values


@dataclass(frozen=True)
class WorldConfig:
    """Size, timing and density of a synthetic world; the same config always renders the same world."""

    seed: int = 7
    n_identities: int = 30
    n_cameras: int = 4
    duration_s: float = 60.0
    fps: float = 10.0
    width: int = 640
    height: int = 360
    walkers_per_frame: float = 5.0
    occluders_per_camera: int = 2
    max_cameras_per_identity: int = 3
    start_time: float = 1767254400.0
    min_target_height: int = 40
    min_target_visibility: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        if not 2 <= self.n_cameras <= 9:
            problems.append("n_cameras must be 2..9 (Market-1501 names hold one camera digit)")
        if self.n_identities < 1:
            problems.append("n_identities must be >= 1")
        if self.max_cameras_per_identity < 2:
            problems.append("max_cameras_per_identity must be >= 2")
        if self.fps <= 0 or self.duration_s <= 0:
            problems.append("fps and duration_s must be positive")
        if self.width < 96 or self.height < 96 or self.width % 2 or self.height % 2:
            problems.append("width and height must be even and >= 96")
        if self.walkers_per_frame <= 0 or self.occluders_per_camera < 0:
            problems.append("walkers_per_frame must be positive and occluders_per_camera >= 0")
        if problems:
            raise ValueError("invalid WorldConfig: " + "; ".join(problems))

    @property
    def num_frames(self) -> int:
        """Frames in each camera's video."""
        return int(round(self.duration_s * self.fps))

    @property
    def camera_ids(self) -> tuple[str, ...]:
        """Camera names: cam1, cam2, ..."""
        return tuple(f"cam{i + 1}" for i in range(self.n_cameras))

    @classmethod
    def small(cls, seed: int = 0) -> WorldConfig:
        """A tiny world for tests and smoke runs: 3 cameras, 6 identities, 8 s at 320x192."""
        return cls(seed=seed, n_identities=6, n_cameras=3, duration_s=8.0, fps=10.0, width=320, height=192,
                   walkers_per_frame=2.5, occluders_per_camera=2)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (written into world.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of ``to_dict``; unknown keys and values of the wrong type raise ValueError naming them."""
        return cls(**checked_values(cls, data, "WorldConfig", ValueError))
