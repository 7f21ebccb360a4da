"""Per-video tracking: link one video's detections into tracklets by motion and appearance, then aggregate each.

Online, in frame order (ideas of SORT / DeepSORT / ByteTrack): each live track predicts its box at
the frame's time with a constant velocity; detections are assigned to tracks by the Hungarian
algorithm on a cost mixing ``1 - IoU`` (predicted vs detected box) with the cosine distance of
the global embedding to the track's running appearance, measured in units of the video's own
distance between two different people (so the same settings fit models whose distances differ
in scale: a synthetic-trained KPR, Open Model Zoo's global models); gated pairs are never assigned:
a box further from the track's last box than a person moves in the time between them, a box of
another scale, or one that looks too different; unmatched detections start new tracks; a track
unseen for more than ``max_gap_s`` seconds ends. Gaps and speeds are measured in seconds and box
heights, not frames and pixels, so the same settings work at any sampling fps and image size.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
from scipy.optimize import linear_sum_assignment

from kpr_model.embeddings import ReIDEmbeddings, aggregate
from workers.errors import WorkerError
from workers.records import DetectionRecord, Tracklet

# Cost of a gated-out pair in the assignment matrix: larger than any admissible cost (at most 2).
_FORBIDDEN = 1e6


@dataclass(frozen=True)
class TrackerConfig:
    """How detections are linked: cost weights, gates, how long a track survives unseen, what is kept.

    Motion gate: a detection ``dt`` seconds after a track's last box of height ``h`` is admissible
    only when its centre lies within ``h * (max_speed * dt + motion_slack)`` pixels of that box's
    centre (``max_speed`` in box heights per second: 3 is a sprint, a walk is below 1; the slack
    absorbs the detector's jitter) and the two heights differ by at most a factor ``max_scale_change``.

    Appearance: a video's scale, measured over the whole video before linking, is the median cosine
    distance between two detections of one frame whose boxes do not overlap (two different people,
    whatever the model), or ``default_scale`` when the video has fewer than ``min_scale_pairs`` such
    pairs (people seen one at a time). With d = cosine distance / scale, cost = ``iou_weight`` *
    (1 - IoU) + (1 - ``iou_weight``) * d; a pair is admissible when d is at most ``appearance_gate``
    (looks no further apart than two different people typically do) and either its IoU is at least
    ``min_iou`` or d is at most ``reid_gate`` (appearance alone may re-link a person whose predicted
    box drifted away during a gap). ``appearance_momentum`` and ``velocity_momentum`` smooth the
    track's appearance and velocity (0 = latest observation only).
    Tracks with fewer than ``min_detections`` detections are dropped: their records get track_id ""
    (search shows them as single detections); the default 1 keeps every track, singletons included.
    """

    iou_weight: float = 0.5
    min_iou: float = 0.1
    appearance_gate: float = 1.0
    reid_gate: float = 0.5
    default_scale: float = 0.5
    min_scale_pairs: int = 20
    max_gap_s: float = 2.0
    appearance_momentum: float = 0.8
    velocity_momentum: float = 0.5
    min_detections: int = 1
    max_speed: float = 3.0
    motion_slack: float = 0.5
    max_scale_change: float = 2.0

    def __post_init__(self) -> None:
        for name in ("iou_weight", "min_iou", "appearance_momentum", "velocity_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise WorkerError(f"tracker {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("appearance_gate", "reid_gate"):
            if not getattr(self, name) >= 0.0:
                raise WorkerError(f"tracker {name} must be >= 0 (in units of the video's distance scale), "
                                  f"got {getattr(self, name)}")
        if not 0.0 < self.default_scale <= 2.0:
            raise WorkerError(f"tracker default_scale must be a cosine distance in (0, 2], got {self.default_scale}")
        if self.min_scale_pairs < 1:
            raise WorkerError(f"tracker min_scale_pairs must be >= 1, got {self.min_scale_pairs}")
        if self.max_gap_s < 0:
            raise WorkerError(f"tracker max_gap_s must be >= 0 seconds, got {self.max_gap_s}")
        if self.min_detections < 1:
            raise WorkerError(f"tracker min_detections must be >= 1, got {self.min_detections}")
        if not (self.max_speed >= 0 and self.motion_slack >= 0):
            raise WorkerError(f"tracker max_speed and motion_slack must be >= 0 box heights, "
                              f"got {self.max_speed} and {self.motion_slack}")
        if not self.max_scale_change >= 1:
            raise WorkerError(f"tracker max_scale_change must be >= 1, got {self.max_scale_change}")


@dataclass
class _Track:
    """A live track: its record indices, last box (x, y, w, h) and time, centre velocity (px/s), appearance."""

    members: list[int]
    box: np.ndarray
    time: float
    appearance: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def predict(self, t: float) -> np.ndarray:
        """The box expected at time ``t``: the last box moved at constant velocity, its size kept."""
        return np.concatenate([self.box[:2] + self.velocity * (t - self.time), self.box[2:]])

    def update(self, index: int, box: np.ndarray, t: float, emb: np.ndarray, config: TrackerConfig) -> None:
        """Add record ``index`` seen at ``box`` and time ``t``: smooth velocity and appearance, move on."""
        if t > self.time:
            measured = (box[:2] - self.box[:2]) / (t - self.time)
            keep = config.velocity_momentum if len(self.members) > 1 else 0.0
            self.velocity = keep * self.velocity + (1.0 - keep) * measured
        mixed = config.appearance_momentum * self.appearance + (1.0 - config.appearance_momentum) * emb
        self.appearance = mixed / max(float(np.linalg.norm(mixed)), 1e-12)
        self.members.append(index)
        self.box, self.time = box, t


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [A, B] of boxes given as (x, y, w, h) rows."""
    a_min, a_max = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b_min, b_max = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    overlap = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0.0, None).prod(axis=-1)
    union = a[:, None, 2:].prod(axis=-1) + b[None, :, 2:].prod(axis=-1) - overlap
    return overlap / np.maximum(union, 1e-9)


def _centres(boxes: np.ndarray) -> np.ndarray:
    """Centre (x, y) of each (x, y, w, h) row."""
    return boxes[:, :2] + boxes[:, 2:] / 2


def reachable(last: np.ndarray, dt: np.ndarray, boxes: np.ndarray, config: TrackerConfig) -> np.ndarray:
    """[T, D] whether each detection box could be the person of each track's ``last`` box ``dt`` seconds later:
    its centre within the distance a person moves in that time, its height within the scale change allowed."""
    shift = np.linalg.norm(_centres(last)[:, None] - _centres(boxes)[None], axis=-1)
    height = last[:, 3:4]
    near = shift <= height * (config.max_speed * dt[:, None] + config.motion_slack)
    ratio = np.maximum(height, boxes[None, :, 3]) / np.maximum(np.minimum(height, boxes[None, :, 3]), 1e-9)
    return near & (ratio <= config.max_scale_change)


def _assign(tracks: list[_Track], boxes: np.ndarray, embs: np.ndarray, t: float, scale: float,
            config: TrackerConfig) -> list[tuple[int, int]]:
    """(track, detection) pairs of one frame: minimum total cost among admissible pairs (Hungarian)."""
    if not tracks or not len(boxes):
        return []
    iou = box_iou(np.stack([track.predict(t) for track in tracks]), boxes)
    distance = (1.0 - np.stack([track.appearance for track in tracks]) @ embs.T) / scale
    moved = reachable(np.stack([track.box for track in tracks]), np.array([t - track.time for track in tracks]),
                      boxes, config)
    admissible = moved & (distance <= config.appearance_gate) & (
        (iou >= config.min_iou) | (distance <= config.reid_gate))
    cost = config.iou_weight * (1.0 - iou) + (1.0 - config.iou_weight) * distance
    rows, cols = linear_sum_assignment(np.where(admissible, cost, _FORBIDDEN))
    return [(int(r), int(c)) for r, c in zip(rows, cols) if admissible[r, c]]


def _frame_order(record: DetectionRecord) -> tuple[float, int, str]:
    """Sort key of a detection: time, frame, then id, so the result does not depend on the input's order."""
    return record.timestamp, record.frame_index, record.detection_id


def appearance_scale(records: list[DetectionRecord], indices: list[int], global_emb: np.ndarray,
                     config: TrackerConfig) -> float:
    """The median cosine distance between two people seen at once (same frame, boxes apart) among the records at
    ``indices``; ``config.default_scale`` with fewer than ``config.min_scale_pairs`` such pairs."""
    distances = []
    for _, frame in groupby(sorted(indices, key=lambda i: _frame_order(records[i])), key=lambda i: records[i].frame_index):
        frame = list(frame)
        if len(frame) < 2:
            continue
        boxes = np.stack([np.asarray(records[i].bbox, np.float64) for i in frame])
        apart = np.triu(box_iou(boxes, boxes) == 0, k=1)
        distances.append((1.0 - global_emb[frame] @ global_emb[frame].T)[apart])
    found = np.concatenate(distances) if distances else np.zeros(0)
    return float(np.median(found)) if len(found) >= config.min_scale_pairs else config.default_scale


def _link(records: list[DetectionRecord], indices: list[int], global_emb: np.ndarray,
          config: TrackerConfig) -> list[list[int]]:
    """Link the records at ``indices`` into tracks; returns each track's record indices, tracks in order of first appearance."""
    order = sorted(indices, key=lambda i: _frame_order(records[i]))
    scale = max(appearance_scale(records, indices, global_emb, config), 1e-6)
    live: list[_Track] = []
    finished: list[_Track] = []
    for (t, _), frame in groupby(order, key=lambda i: (records[i].timestamp, records[i].frame_index)):
        frame = list(frame)
        finished += [track for track in live if t - track.time > config.max_gap_s]
        live = [track for track in live if t - track.time <= config.max_gap_s]
        boxes = np.stack([np.asarray(records[i].bbox, np.float64) for i in frame])
        embs = global_emb[frame]
        matched = set()
        for r, c in _assign(live, boxes, embs, t, scale, config):
            live[r].update(frame[c], boxes[c], t, embs[c], config)
            matched.add(c)
        live += [_Track([frame[c]], boxes[c], t, embs[c]) for c in range(len(frame)) if c not in matched]
    position = {index: rank for rank, index in enumerate(order)}
    return [track.members for track in sorted(finished + live, key=lambda track: position[track.members[0]])]


def _thumbnail_scores(records: Sequence[DetectionRecord], visibility: np.ndarray) -> np.ndarray:
    """How well each crop of one tracklet shows its person, to pick the thumbnail an investigator sees first.

    det_score x mean part visibility x mean joint confidence x box height over the tallest: a person half
    hidden behind an obstacle keeps a confident box and visible-looking parts but loses joints, and a
    distant crop shows less than a close one. Joints count only when some crop has keypoints.
    """
    scores = np.array([float(r.det_score or 0.0) for r in records]) * np.asarray(visibility, np.float64).mean(axis=1)
    joints = np.array([float(np.clip(r.keypoints[:, 2], 0.0, 1.0).mean()) for r in records])
    heights = np.array([float(r.bbox[3]) for r in records])
    return scores * (joints if joints.max() > 0 else 1.0) * heights / max(float(heights.max()), 1e-9)


def _tracklet(track_id: str, members: list[int], records: list[DetectionRecord],
              embeddings: ReIDEmbeddings) -> Tracklet:
    """A Tracklet of the records at ``members``; its thumbnail is the best shown one (see _thumbnail_scores)."""
    members = sorted(members, key=lambda i: _frame_order(records[i]))
    chosen = embeddings.select(np.asarray(members))
    best = records[members[int(np.argmax(_thumbnail_scores([records[i] for i in members], chosen.visibility)))]]
    times = [records[i].timestamp for i in members]
    return Tracklet(track_id, float(min(times)), float(max(times)), len(members), aggregate(chosen),
                    best.thumbnail, best.detection_id)


def track_video(video_id: str, records: list[DetectionRecord], embeddings: ReIDEmbeddings | None,
                config: TrackerConfig = TrackerConfig()) -> list[Tracklet]:
    """Link one video's detections into tracklets; sets ``track_id`` on every record and returns the tracklets by start time.

    Records that already carry a track id (annotations: ground truth) keep it and form that
    tracklet as they are; only the others are linked. New ids are ``{video_id[:12]}-t{n}`` with
    n = 1, 2, ... in order of first appearance (ids an annotation already uses are skipped), so
    the same input always gives the same ids. ``embeddings`` are row-aligned with ``records``.
    """
    if not records:
        return []
    if embeddings is None or len(embeddings) != len(records):
        found = 0 if embeddings is None else len(embeddings)
        raise WorkerError(f"video {video_id}: {len(records)} detections but {found} embeddings to track them with")
    annotated: dict[str, list[int]] = {}
    untracked = []
    for i, record in enumerate(records):
        if record.track_id:
            annotated.setdefault(record.track_id, []).append(i)
        else:
            untracked.append(i)
    unit = embeddings.global_emb / np.maximum(np.linalg.norm(embeddings.global_emb, axis=1, keepdims=True), 1e-12)
    named = dict(annotated)
    n = 0
    for members in _link(records, untracked, unit.astype(np.float64), config):
        track_id = ""
        if len(members) >= config.min_detections:
            n += 1
            while f"{video_id[:12]}-t{n}" in annotated:
                n += 1
            track_id = f"{video_id[:12]}-t{n}"
            named[track_id] = members
        for i in members:
            records[i].track_id = track_id
    tracklets = [_tracklet(track_id, members, records, embeddings) for track_id, members in named.items()]
    return sorted(tracklets, key=lambda tracklet: (tracklet.t_start, tracklet.track_id))
