"""A store where one tracklet crowds the results: the query person's long passage past one camera.

Person 0 (the query) walks past cam0 (tracklet Q), then past cam1 for a long time (tracklet LONG:
60 detections, each closer to the query than anything else) and briefly past cam2 (tracklet TRUE:
4 detections, further than every LONG detection). Persons 1-4 pass cam1..cam3 (3 detections each);
person 5 is seen by cam3 in 3 detections of no tracklet. Videos 0 and 1 have stored tracklets (their
time spans come from the tracklets table); videos 2 and 3 have none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kpr_model.distance import ReIDEmbeddings, aggregate
from storage import Store, detection_row, detections_table, tracklet_row, tracklets_table
from support import unit_rows
from workers.crops import thumbnail_jpeg

K, D = 8, 16
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MODEL_ID = "people-model"
CAMERAS = ("cam0", "cam1", "cam2", "cam3")
QUERY_TRACK, LONG_TRACK, TRUE_TRACK = "video0-q", "video1-long", "video2-true"
LONG_LENGTH, TRUE_LENGTH = 60, 4
# The stored span of the long tracklet: wider than its detections, so a test can tell where a span came from.
LONG_SPAN = (T0 + 3600.0, T0 + 3600.0 + 120.0)


def _embeddings(base: np.ndarray, noise: float, n: int, rng: np.random.Generator) -> ReIDEmbeddings:
    """``n`` detections of the person whose part vectors are ``base`` [K, D], each part moved by ``noise``."""
    parts = unit_rows(base[None] + noise * rng.standard_normal((n, K, D)))
    return ReIDEmbeddings(unit_rows(parts.mean(axis=1)), parts, np.ones((n, K), np.float32))


def person_of(detection_id: str) -> str:
    """Who a detection of the people store is: person 0 in passages 0-2, else one person per passage."""
    passage = int(detection_id.split("-")[1])
    return "0" if passage < 3 else f"p{passage}"


def build_people_store(path: Path) -> Store:
    """The store described in the module docstring."""
    rng = np.random.default_rng(7)
    people = unit_rows(rng.standard_normal((6, K, D)))
    # (camera, track id or None, person, detections, noise, first timestamp)
    passages = [
        (0, QUERY_TRACK, 0, 3, 0.02, T0),
        (1, LONG_TRACK, 0, LONG_LENGTH, 0.02, LONG_SPAN[0] + 10.0),
        (2, TRUE_TRACK, 0, TRUE_LENGTH, 0.25, T0 + 7200.0),
        *[(c, f"video{c}-p{p}", p, 3, 0.05, T0 + 600.0 * p) for p, c in ((1, 1), (2, 1), (3, 2), (4, 3))],
        (3, None, 5, 3, 0.05, T0 + 9000.0),
    ]
    store = Store.open(str(path))
    for camera, name in enumerate(CAMERAS):
        video_id = f"video{camera}"
        rows, embeddings, tracklets, aggregated = [], [], [], []
        for index, (cam, track, person, n, noise, start) in enumerate(passages):
            if cam != camera:
                continue
            shown = _embeddings(people[person], noise, n, rng)
            thumbnail = thumbnail_jpeg(np.full((64, 32, 3), 30 * person + 20, np.uint8))
            ids = [f"{video_id}-{index}-{i}" for i in range(n)]
            rows += [detection_row(ids[i], video_id, name, 1000 * index + i, start + i, [0, 0, 32, 64], MODEL_ID,
                                   track_id=track, thumbnail=thumbnail) for i in range(n)]
            embeddings.append(shown)
            if track is not None and camera < 2:
                t_start, t_end = LONG_SPAN if track == LONG_TRACK else (start, start + n - 1)
                tracklets.append(tracklet_row(track, video_id, name, t_start, t_end, n, ids[0], thumbnail, MODEL_ID))
                aggregated.append(aggregate(shown))
        video = {"video_id": video_id, "uri": f"/archive/{name}.mp4", "camera_id": name, "model_id": MODEL_ID}
        stored = tracklets_table(tracklets, ReIDEmbeddings.concat(aggregated)) if tracklets else None
        store.write_video(video, detections_table(rows, ReIDEmbeddings.concat(embeddings)), stored)
    return store
