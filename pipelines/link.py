"""Prefect flow `link-identities`: group a store's tracklets into global identities and write its identities table.

The inputs are checked first (store, tracklets, cameras file, threshold): a mistake is one line and nothing is
written. The linking itself (reading every tracklet's aggregate, workers.link) runs as a Ray task on the cluster at
RAY_ADDRESS or a local Ray; the flow then picks each identity's representative thumbnail and writes the identities
in one commit (storage.identities).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import ray
from prefect import flow, get_run_logger, task

from pipelines.calibrate import no_close_match_above
from pipelines.errors import UserError
from pipelines.store_cameras import view_cameras
from storage import Store, embeddings_of, sql
from storage.identities import Identities, Identity, LinkedTracklet
from storage.schema import GLOBAL_KIND
from workers.link import GLOBAL_DISTANCE, KPR_DISTANCE, LinkSettings, Topology, Tracklets, link_tracklets
from workers.ray_stages import ensure_ray

_SUMMARY_COLUMNS = ["track_id", "video_id", "camera_id", "t_start", "t_end", "n_detections"]
_ID_BATCH = 1000


@dataclass(frozen=True)
class LinkInputs:
    """What a linking run reads: the store, an optional cameras file (None: the one the store recorded, if any), the
    threshold (None: the store model's calibrated "no close match" distance) and the candidate neighbours per
    tracklet."""

    db: str
    cameras: str | None = None
    threshold: float | None = None
    neighbours: int = 15

    def check(self) -> tuple[Topology | None, LinkSettings]:
        """The cameras' topology and the link settings, after refusing (one error line) what cannot be linked."""
        if self.threshold is not None and not self.threshold > 0:
            raise UserError(f"the threshold must be > 0, got {self.threshold:g}")
        if self.neighbours < 1:
            raise UserError(f"neighbours must be >= 1, got {self.neighbours}")
        store = Store.open(self.db, create=False)
        cameras = view_cameras(store, self.cameras)
        topology = None if cameras.path is None else Topology.from_cameras(cameras)
        if not store.count_tracklets():
            raise UserError(f"store {self.db} holds no tracklets: ingest an archive into it first (kpr ingest)")
        model = store.model() or {}
        distance = GLOBAL_DISTANCE if model.get("kind") == GLOBAL_KIND else KPR_DISTANCE
        threshold = self.threshold or no_close_match_above(model, distance == GLOBAL_DISTANCE)
        if threshold is None:
            raise UserError("the store's model is not calibrated: give --threshold (a distance) or run kpr calibrate")
        return topology, LinkSettings(threshold, self.neighbours, distance)


def store_tracklets(store: Store) -> Tracklets:
    """Every tracklet of ``store`` with its aggregated embedding, as linking takes them."""
    rows = store.list_tracklets(columns=[*_SUMMARY_COLUMNS[:5], "vector", "parts", "visibility"])
    return Tracklets(rows["track_id"].to_pylist(), rows["video_id"].to_pylist(), rows["camera_id"].to_pylist(),
                     rows["t_start"].to_numpy(), rows["t_end"].to_numpy(), embeddings_of(rows))


@ray.remote(num_cpus=1, max_retries=0)
def _link_store(db: str, topology: Topology | None, settings: LinkSettings) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(track ids, identity numbers, confidences) of the store's tracklets, linked."""
    tracklets = store_tracklets(Store.open(db, create=False))
    linking = link_tracklets(tracklets, topology, settings)
    return list(tracklets.track_ids), linking.identity, linking.confidence


@task(name="link-tracklets")
def link_task(db: str, topology: Topology | None, settings: LinkSettings,
              ray_address: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Link the store's tracklets in a Ray task."""
    ensure_ray(ray_address)
    return ray.get(_link_store.remote(db, topology, settings))


def _identities(store: Store, track_ids: list[str], identity: np.ndarray, confidence: np.ndarray) -> list[Identity]:
    """The identities of a linking, each with its tracklets and the thumbnail of its tracklet of most detections."""
    summary = {row["track_id"]: row for row in store.list_tracklets(columns=_SUMMARY_COLUMNS).to_pylist()}
    groups: dict[int, list[LinkedTracklet]] = {}
    for track_id, number, linked in zip(track_ids, identity.tolist(), confidence.tolist()):
        row = summary[track_id]
        groups.setdefault(number, []).append(LinkedTracklet(track_id, row["camera_id"], row["video_id"],
                                                            row["t_start"], row["t_end"], round(linked, 4)))
    best = {number: min(members, key=lambda t: (-summary[t.track_id]["n_detections"], t.t_start, t.track_id)).track_id
            for number, members in groups.items()}
    thumbnails = {}
    chosen = list(best.values())
    for start in range(0, len(chosen), _ID_BATCH):
        rows = store.list_tracklets(sql.is_in("track_id", chosen[start:start + _ID_BATCH]),
                                    columns=["track_id", "thumbnail"])
        thumbnails.update(zip(rows["track_id"].to_pylist(), rows["thumbnail"].to_pylist()))
    return [Identity(members, best[number], thumbnails.get(best[number])) for number, members in sorted(groups.items())]


@task(name="write-identities")
def write_task(db: str, track_ids: list[str], identity: np.ndarray, confidence: np.ndarray, run_id: str) -> dict:
    """Write the linking's identities into the store in one commit; what changed, in numbers."""
    store = Store.open(db, create=False)
    identities = _identities(store, track_ids, identity, confidence)
    counts = Identities.open(db).replace(identities, (store.model() or {}).get("model_id", ""), run_id)
    across = sum(len({t.camera_id for t in found.tracklets}) > 1 for found in identities)
    return {"tracklets": len(track_ids), "identities": len(identities), "across_cameras": across, **counts}


@flow(name="link-identities")
def link_identities(db: str, cameras: str | None = None, threshold: float | None = None, neighbours: int = 15,
                    ray_address: str | None = None) -> dict:
    """Group the tracklets of store ``db`` into global identities (``cameras``: the cameras file whose links and
    transit windows constrain them) and write them as the store's identities table."""
    topology, settings = LinkInputs(db, cameras, threshold, neighbours).check()
    run_id = uuid.uuid4().hex
    track_ids, identity, confidence = link_task(db, topology, settings, ray_address)
    result = write_task(db, track_ids, identity, confidence, run_id) | {"run_id": run_id,
                                                                         "threshold": settings.threshold}
    get_run_logger().info("linked %d tracklets into %d identities (%d across cameras)", result["tracklets"],
                          result["identities"], result["across_cameras"])
    return result
