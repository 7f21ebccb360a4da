"""Store -> adaptation samples: an ingested archive's tracklets as pseudo-identities, their crops re-cut from the videos.

The store's thumbnails are too small to train on, so each kept detection's frame is decoded again from its
video and the crop cut at the stored box, resized to the model's input size with its keypoints. Tracklets
shorter than ``min_detections`` and boxes lower than ``min_box_height`` pixels are left out; a tracklet gives
at most ``max_per_tracklet`` crops spread over its length, so long tracklets do not crowd out the rest.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from kpr_model.config import KPRConfig
from kpr_model.global_onnx import GlobalOnnxEncoder
from pipelines.errors import UserError
from storage import Store
from training.adapt_samples import ArchiveSamples
from training.pseudo_labels import TrackletSpan, pseudo_identities
from workers.crops import cut_person_crops
from workers.decode import decode_frames
from workers.detections import PersonDetection

COLUMNS = ["video_id", "camera_id", "frame_index", "timestamp", "bbox", "keypoints", "track_id", "vector"]


@dataclass(frozen=True)
class SampleSelection:
    """Which detections become samples and how tracklets become pseudo-identities (see the module docstring).

    ``cross_camera``: merge tracklets of different cameras that are mutually nearest with cosine similarity
    >= ``min_similarity`` (by the teacher's embeddings when there is a teacher, else the store's own).
    """

    min_box_height: float = 64.0
    min_detections: int = 4
    max_per_tracklet: int = 40
    cross_camera: bool = True
    min_similarity: float = 0.7


def _kept_tracklets(store: Store, selection: SampleSelection) -> dict[str, list[dict]]:
    """Each usable tracklet's id -> its kept detection rows (in time order, evenly thinned)."""
    rows = store.query_detections("track_id IS NOT NULL", columns=COLUMNS).to_pylist()
    by_track: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["bbox"][3] >= selection.min_box_height:
            by_track[row["track_id"]].append(row)
    kept = {}
    for track_id, members in sorted(by_track.items()):
        if len(members) >= selection.min_detections:
            members.sort(key=lambda r: r["timestamp"])
            spread = np.unique(np.linspace(0, len(members) - 1, selection.max_per_tracklet).round().astype(int))
            kept[track_id] = [members[i] for i in spread]
    return kept


def _crops(store: Store, rows: list[dict], size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Full-resolution crops of ``rows`` (decoded again from their videos), the crops at ``size`` and their keypoints."""
    uris = {video["video_id"]: video["uri"] for video in store.video_rows("done")}
    by_frame: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_frame[(row["video_id"], row["frame_index"])].append(index)
    crops: list[np.ndarray | None] = [None] * len(rows)
    keypoints = np.zeros((len(rows), 17, 3), np.float32)
    videos = sorted({video_id for video_id, _ in by_frame})
    for number, video_id in enumerate(videos, 1):
        print(f"cutting crops from video {number}/{len(videos)}", file=sys.stderr)
        frames = [frame for vid, frame in by_frame if vid == video_id]
        for frame_index, frame in decode_frames(uris[video_id], frames):
            indices = by_frame[(video_id, frame_index)]
            people = [PersonDetection(np.asarray(rows[i]["bbox"], np.float32), 1.0,
                                      np.asarray(rows[i]["keypoints"], np.float32).reshape(17, 3)) for i in indices]
            for i, crop in zip(indices, cut_person_crops(frame, people)):
                crops[i], keypoints[i] = crop.image, crop.keypoints
    height, width = size
    resized = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_AREA) for c in crops])
    scale = np.array([[[width / c.shape[1], height / c.shape[0], 1.0]] for c in crops], np.float32)
    return crops, resized, keypoints * scale


def _tracklet_means(vectors: np.ndarray, owners: np.ndarray, count: int) -> np.ndarray:
    """The L2-normalised mean of each tracklet's vectors [count, D] (``owners`` = tracklet index per vector)."""
    sums = np.zeros((count, vectors.shape[1]), np.float32)
    np.add.at(sums, owners, vectors)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def export_archive_samples(store: Store, config: KPRConfig, path: str | Path, selection: SampleSelection,
                           teacher: GlobalOnnxEncoder | None = None) -> dict:
    """Write the store's adaptation samples for a model of ``config`` to ``path``; what was kept, in numbers."""
    tracklets = _kept_tracklets(store, selection)
    if len(tracklets) < 2:
        raise UserError(f"store {store.uri} has {len(tracklets)} tracklet(s) of at least {selection.min_detections} "
                        f"detections {selection.min_box_height:.0f} px or taller; adaptation needs at least 2")
    rows = [row for members in tracklets.values() for row in members]
    owners = np.array([t for t, members in enumerate(tracklets.values()) for _ in members])
    full, images, keypoints = _crops(store, rows, config.image_size)
    embedded = None
    if teacher is not None:
        print(f"embedding {len(full)} crops with the teacher", file=sys.stderr)
        embedded = teacher.vectors(full)
    spans = [TrackletSpan(track_id, members[0]["camera_id"], members[0]["timestamp"], members[-1]["timestamp"])
             for track_id, members in tracklets.items()]
    merge_by = embedded if embedded is not None else np.stack([row["vector"] for row in rows]).astype(np.float32)
    labels = pseudo_identities(spans, _tracklet_means(merge_by, owners, len(spans)) if selection.cross_camera else None,
                               selection.min_similarity)
    camera_ids = sorted({span.camera_id for span in spans})
    samples = ArchiveSamples(images, keypoints, np.array(labels)[owners],
                             np.array([camera_ids.index(spans[t].camera_id) for t in owners]), embedded)
    samples.save(path)
    return {"store": store.uri, "tracklets": len(spans), "pseudo_identities": samples.num_identities,
            "crops": len(rows), "cameras": len(camera_ids), "teacher": None if teacher is None else str(teacher.path),
            "selection": asdict(selection)}
