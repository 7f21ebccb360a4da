"""Builders the tests share: unit vectors and random embeddings, store rows, image bytes, small videos, a free port."""
from __future__ import annotations

import socket

import cv2
import numpy as np
import pyarrow as pa

from kpr_model.embeddings import ReIDEmbeddings
from storage import Store, detection_row, detections_table

MODEL_ID = "kpr-test"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit L2 norm along its last axis, as float32."""
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random float32 vectors of ``shape``, L2-normalised along the last axis."""
    return unit_rows(rng.standard_normal(shape))


def random_embeddings(rng: np.random.Generator, n: int, parts: int, dim: int,
                      random_visibility: bool = False) -> ReIDEmbeddings:
    """``n`` random people: unit global and part vectors, every part visible unless ``random_visibility`` (uniform 0..1)."""
    global_, part_vectors = random_unit(rng, n, dim), random_unit(rng, n, parts, dim)
    visibility = rng.uniform(0, 1, (n, parts)) if random_visibility else np.ones((n, parts))
    return ReIDEmbeddings(global_, part_vectors, visibility.astype(np.float32))


def video_row(video_id: str, camera_id: str = "cam-1", start_time: float = 1_000.0, duration: float = 60.0,
              num_frames: int = 1500, model_id: str = MODEL_ID) -> dict:
    """A video dict as ingestion hands it to Store.write_video."""
    return {"video_id": video_id, "uri": f"file:///archive/{video_id}.mp4", "camera_id": camera_id,
            "start_time": start_time, "duration": duration, "num_frames": num_frames, "model_id": model_id,
            "run_id": "run-1"}


def write_video(path, frames: int = 30, fps: float = 10.0, size=(96, 64)) -> None:
    """A small MP4 of ``frames`` flat grey frames whose shade changes each frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8))
    writer.release()


def png_bytes(height: int, width: int, value: int = 90) -> bytes:
    """A grey PNG image of ``height`` x ``width`` pixels."""
    ok, data = cv2.imencode(".png", np.full((height, width, 3), value, np.uint8))
    assert ok
    return data.tobytes()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detections_of(video: dict, embeddings: ReIDEmbeddings) -> pa.Table:
    """One detection row per embedding for ``video``, a frame apart, with ids that need escaping in SQL."""
    rows = [
        detection_row(
            detection_id=f"{video['video_id']}:f{i}-p0'", video_id=video["video_id"], camera_id=video["camera_id"],
            frame_index=i, timestamp=video["start_time"] + i, bbox=(10.0, 20.0, 50.0, 120.0),
            model_id=video["model_id"], det_score=0.9, keypoints=np.ones((17, 3)),
            track_id=f"{video['video_id']}:t{i % 3}", thumbnail=b"\xff\xd8jpeg" + bytes([i % 256]), run_id="run-1",
        )
        for i in range(len(embeddings))
    ]
    return detections_table(rows, embeddings)


def sorted_rows(store: Store) -> list[dict]:
    """All detection rows of ``store``, sorted by id, for exact comparisons."""
    return sorted(store.query_detections(None).to_pylist(), key=lambda r: r["detection_id"])
