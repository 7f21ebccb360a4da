"""`kpr calibrate`: the distance above which a search result is "no close match", measured on labelled people.

People search ranks each tracklet by its closest detection to the query; calibration measures that same
distance between the tracklets of a store whose people are labelled (the sidecar annotations of an
archive made by `kpr synth` say who every detection is): every labelled tracklet queries, with its
aggregated embedding, the tracklets of the other cameras. The threshold is the distance that best
separates same-person pairs from different-person pairs (Youden's J: the share of same pairs at or below
it minus the share of different pairs at or below it is largest). It is recorded per distance (KPR part
distance; cosine of the global vectors) in the model record of the labelled store and of the stores named
to share it (stores of the same model), and searches there show results above it as "no close match".
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from kpr_model.distance import ReIDEmbeddings, aggregate, kpr_distance
from pipelines.errors import UserError
from storage import Store, embeddings_of
from storage.schema import GLOBAL_KIND, holistic_weight
from storage.search import cosine_distance
from training.archive_truth import archive_truth

# The model record's field that holds the thresholds: {"kpr": Threshold, "global": Threshold} as dicts.
NO_CLOSE_MATCH = "no_close_match"
# Calibration holds the labelled store's detections in memory: a labelled archive, not a whole deployment.
MAX_DETECTIONS = 200_000


@dataclass(frozen=True)
class Threshold:
    """A calibrated "no close match" distance and how it splits the labelled pairs it came from."""

    distance: float
    same_at_or_below: float
    different_at_or_below: float
    same_pairs: int
    different_pairs: int


def separating_threshold(same: np.ndarray, different: np.ndarray) -> Threshold:
    """The distance that best separates ``same`` from ``different`` pair distances (largest Youden's J)."""
    same, different = np.sort(np.asarray(same, np.float64)), np.sort(np.asarray(different, np.float64))
    if not len(same) or not len(different):
        raise UserError(f"calibration needs pairs of the same person and of different people across cameras, got "
                        f"{len(same)} and {len(different)}")
    candidates = np.unique(np.concatenate([same, different]))
    same_share = np.searchsorted(same, candidates, side="right") / len(same)
    different_share = np.searchsorted(different, candidates, side="right") / len(different)
    best = int(np.argmax(same_share - different_share))
    return Threshold(float(candidates[best]), float(same_share[best]), float(different_share[best]), len(same),
                     len(different))


def tracklet_identities(rows: pa.Table, identity_of: Callable[[str], str | None]) -> dict[str, str]:
    """Who each tracklet of ``rows`` (detection_id and track_id columns) is: the person most of its labelled
    detections are (``identity_of`` a detection id; None: unknown); tracklets with no labelled detection are left out."""
    votes: dict[str, Counter] = {}
    for detection_id, track_id in zip(rows["detection_id"].to_pylist(), rows["track_id"].to_pylist()):
        identity = identity_of(detection_id)
        if track_id and identity is not None:
            votes.setdefault(track_id, Counter())[identity] += 1
    return {track_id: counts.most_common(1)[0][0] for track_id, counts in votes.items()}


def pair_distances(store: Store, identity_of: Callable[[str], str | None],
                   global_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distances of same-person and of different-person tracklet pairs across cameras, as people search measures
    them: a tracklet's aggregated embedding to the other tracklet's closest detection.

    A tracklet is the person most of its labelled detections are (``identity_of`` a detection id; None: unknown).
    """
    if store.count_detections() > MAX_DETECTIONS:
        raise UserError(f"the store holds more than {MAX_DETECTIONS} detections: calibrate on a labelled archive's "
                        "own store")
    rows = store.query_detections(None, ["detection_id", "track_id", "camera_id", *store.embedding_columns])
    identities = tracklet_identities(rows, identity_of)
    if not identities:
        raise UserError("no tracklet of the store has a labelled detection: calibration needs a labelled archive")
    tracks = sorted(identities)
    index = {track_id: i for i, track_id in enumerate(tracks)}
    owner = np.array([index.get(t, -1) if t else -1 for t in rows["track_id"].to_pylist()])
    rows, owner = rows.filter(owner >= 0), owner[owner >= 0]
    gallery = embeddings_of(rows)
    cameras = np.empty(len(tracks), dtype=object)
    cameras[owner] = rows["camera_id"].to_pylist()  # a tracklet lies within one video
    identity = np.array([identities[t] for t in tracks])
    queries = ReIDEmbeddings.concat([aggregate(gallery.select(np.flatnonzero(owner == i))) for i in range(len(tracks))])
    distance = cosine_distance if global_only else partial(kpr_distance,
                                                           holistic_weight=holistic_weight(store.model() or {}))
    same, different = [], []
    for q in range(len(tracks)):
        closest = np.full(len(tracks), np.inf)
        np.minimum.at(closest, owner, distance(queries.select([q]), gallery)[0])
        others = np.flatnonzero(cameras != cameras[q])
        match = identity[others] == identity[q]
        same.append(closest[others[match]])
        different.append(closest[others[~match]])
    return np.concatenate(same), np.concatenate(different)


def archive_identities(store: Store) -> Callable[[str], str | None]:
    """Who each detection of the store is, from the annotation sidecars beside its videos (None: not annotated)."""
    videos = {row["uri"]: row["video_id"] for row in store.video_rows("done")}
    missing = [uri for uri in videos if not Path(uri).with_suffix(".json").is_file()]
    if missing:
        raise UserError(f"no annotation sidecar beside {missing[0]}: calibration needs a labelled archive (kpr synth "
                        "writes one)")
    truth = archive_truth(videos)

    def identity_of(detection_id: str) -> str | None:
        video_id, frame, ordinal = detection_id.rsplit(":", 2)
        record = truth.get((video_id, int(frame), int(ordinal)))
        return None if record is None else record.identity

    return identity_of


def calibrate(store: Store, identity_of: Callable[[str], str | None],
              also: Sequence[Store] = ()) -> dict[str, Threshold]:
    """Calibrate the store's model on its labelled people and record the thresholds in its model record, and in
    those of the ``also`` stores (which must hold the same model: checked before anything is recorded)."""
    model = store.model()
    if model is None:
        raise UserError(f"the store at {store.uri} holds no detections yet (run `kpr ingest` first)")
    for other in also:
        held = other.model()
        if held is None or held["model_id"] != model["model_id"]:
            raise UserError(f"the store at {other.uri} does not hold model {model['model_id']}: a calibration is "
                            "the model's own")
    kinds = ["global"] if model["kind"] == GLOBAL_KIND else ["kpr", "global"]
    thresholds = {kind: separating_threshold(*pair_distances(store, identity_of, kind == "global")) for kind in kinds}
    recorded = {kind: asdict(t) for kind, t in thresholds.items()}
    for target in (store, *also):
        target.set_model({**target.model(), NO_CLOSE_MATCH: recorded})
    return thresholds


def no_close_match_above(model: dict | None, global_only: bool) -> float | None:
    """The calibrated "no close match" distance of a search by the global vectors alone or by KPR part distance
    (None: the store's model was not calibrated)."""
    recorded = ((model or {}).get(NO_CLOSE_MATCH) or {}).get("global" if global_only else "kpr")
    return None if recorded is None else float(recorded["distance"])
