"""Prefect flow `link-identities`: group a store's tracklets into global identities and write its identities table.

The inputs are checked first (store, tracklets, cameras file, threshold): a mistake is one line and nothing is
written. A run is incremental once the store has identities made with its model: they stay as they are, and only the
tracklets in none of them are linked, joining one of them or making new ones; `full` relinks every tracklet. Both
respect the hand merges and splits recorded in the store. The linking itself (reading every tracklet's aggregate,
workers.link) runs as a Ray task on the cluster at RAY_ADDRESS or a local Ray; the flow then writes the identities in
one commit (storage.identities).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import ray
from prefect import flow, get_run_logger, task

from pipelines.calibrate import no_close_match_above
from pipelines.errors import UserError
from pipelines.store_cameras import view_cameras
from storage import Store, embeddings_of
from storage.identities import Identities, LinkedTracklet, MadeBy
from storage.schema import GLOBAL_KIND, holistic_weight
from workers.link import GLOBAL_DISTANCE, KPR_DISTANCE, LinkSettings, Prior, Topology, Tracklets, link_tracklets
from workers.ray_stages import ensure_ray

_SUMMARY_COLUMNS = ["track_id", "video_id", "camera_id", "t_start", "t_end"]


@dataclass(frozen=True)
class LinkInputs:
    """What a linking run reads: the store, an optional cameras file (None: the one the store recorded, if any), the
    threshold (None: the store model's calibrated "no close match" distance), the candidate neighbours per
    tracklet, and whether to relink every tracklet."""

    db: str
    cameras: str | None = None
    threshold: float | None = None
    neighbours: int = 15
    full: bool = False

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
        return topology, LinkSettings(threshold, self.neighbours, distance,
                                      holistic_weight=holistic_weight(model))


@dataclass(frozen=True)
class LinkPlan:
    """How a run links: from the store's hand edits (and, incrementally, its identities) as ``prior``; ``kept`` the
    stored link confidence of each tracklet already in an identity (None: a full run relinks every tracklet)."""

    prior: Prior
    kept: dict[str, float] | None
    reason: str

    @property
    def mode(self) -> str:
        return "full" if self.kept is None else "incremental"


def settings_text(settings: LinkSettings, topology: Topology | None) -> str:
    """The settings of a run as stored with its identities (a run with other settings relinks every tracklet)."""
    windows = [] if topology is None else sorted([*pair, *window] for pair, window in topology.windows.items())
    return json.dumps({**asdict(settings), "windows": windows}, sort_keys=True)


def plan_link(store: Store, identities: Identities, full: bool, settings: str) -> LinkPlan:
    """Incremental when the store holds identities made with its current model and the same ``settings``
    (settings_text), and ``full`` is not asked."""
    prior = Prior.from_edits([(edit["kind"], edit["groups"]) for edit in identities.edits()])
    rows = identities.rows(["tracklets", "model_id", "settings"])
    model_id = (store.model() or {}).get("model_id", "")
    reason = ("asked (--full)" if full else "first run" if not rows
              else "the store's model changed" if any(row["model_id"] != model_id for row in rows)
              else "the link settings changed" if any(row.get("settings") != settings for row in rows) else None)
    if reason is not None:
        return LinkPlan(prior, None, reason)
    kept = {t["track_id"]: t["confidence"] for row in rows for t in row["tracklets"]}
    groups = [[t["track_id"] for t in row["tracklets"]] for row in rows]
    return LinkPlan(prior.with_identities(groups), kept, f"{len(rows)} identities kept")


def store_tracklets(store: Store) -> Tracklets:
    """Every tracklet of ``store`` with its aggregated embedding, as linking takes them."""
    rows = store.list_tracklets(columns=[*_SUMMARY_COLUMNS, "vector", "parts", "visibility"])
    return Tracklets(rows["track_id"].to_pylist(), rows["video_id"].to_pylist(), rows["camera_id"].to_pylist(),
                     rows["t_start"].to_numpy(), rows["t_end"].to_numpy(), embeddings_of(rows))


@dataclass(frozen=True)
class LinkOutcome:
    """What the linking task found: per tracklet its identity number and link confidence, and how many it linked."""

    tracklets: Tracklets
    identity: np.ndarray
    confidence: np.ndarray
    linked: int


@ray.remote(num_cpus=1, max_retries=0)
def _link_store(db: str, topology: Topology | None, settings: LinkSettings, plan: LinkPlan) -> LinkOutcome:
    """The store's tracklets linked as ``plan`` says."""
    tracklets = store_tracklets(Store.open(db, create=False))
    new = None if plan.kept is None else np.array(
        [i for i, track_id in enumerate(tracklets.track_ids) if track_id not in plan.kept], np.int64)
    linking = link_tracklets(tracklets, topology, settings, plan.prior, new)
    return LinkOutcome(tracklets, linking.identity, linking.confidence, len(tracklets) if new is None else len(new))


@task(name="link-tracklets")
def link_task(db: str, topology: Topology | None, settings: LinkSettings, plan: LinkPlan,
              ray_address: str | None) -> LinkOutcome:
    """Link the store's tracklets in a Ray task."""
    ensure_ray(ray_address)
    return ray.get(_link_store.remote(db, topology, settings, plan))


def identity_groups(outcome: LinkOutcome, kept: dict[str, float] | None) -> list[list[LinkedTracklet]]:
    """The tracklets of each identity of a linking (a tracklet already linked keeps its stored confidence)."""
    tracklets, groups = outcome.tracklets, {}
    for i, (number, linked) in enumerate(zip(outcome.identity.tolist(), outcome.confidence.tolist())):
        track_id = tracklets.track_ids[i]
        confidence = kept[track_id] if kept is not None and track_id in kept else round(linked, 4)
        groups.setdefault(number, []).append(LinkedTracklet(track_id, tracklets.camera_ids[i], tracklets.video_ids[i],
                                                            float(tracklets.t_start[i]), float(tracklets.t_end[i]),
                                                            confidence))
    return [groups[number] for number in sorted(groups)]


@task(name="write-identities")
def write_task(db: str, outcome: LinkOutcome, plan: LinkPlan, run_id: str, settings: str) -> dict:
    """Write the linking's identities into the store in one commit; what changed, in numbers."""
    groups = identity_groups(outcome, plan.kept)
    model_id = (Store.open(db, create=False).model() or {}).get("model_id", "")
    counts = Identities.open(db).replace(groups, MadeBy(model_id, run_id, settings))
    across = sum(len({t.camera_id for t in group}) > 1 for group in groups)
    return {"tracklets": len(outcome.tracklets), "linked": outcome.linked, "identities": len(groups),
            "across_cameras": across, **counts}


@flow(name="link-identities")
def link_identities(db: str, cameras: str | None = None, threshold: float | None = None, neighbours: int = 15,
                    full: bool = False, ray_address: str | None = None) -> dict:
    """Group the tracklets of store ``db`` into global identities (``cameras``: the cameras file whose links and
    transit windows constrain them; ``full``: relink every tracklet, else only those in no identity yet) and write
    them as the store's identities table."""
    topology, settings = LinkInputs(db, cameras, threshold, neighbours, full).check()
    used = settings_text(settings, topology)
    plan = plan_link(Store.open(db, create=False), Identities.open(db), full, used)
    run_id = uuid.uuid4().hex
    outcome = link_task(db, topology, settings, plan, ray_address)
    result = write_task(db, outcome, plan, run_id, used) | {"run_id": run_id, "threshold": settings.threshold,
                                                      "mode": plan.mode, "reason": plan.reason}
    get_run_logger().info("%s run (%s): linked %d of %d tracklets; %d identities (%d across cameras)", plan.mode,
                          plan.reason, result["linked"], result["tracklets"], result["identities"],
                          result["across_cameras"])
    return result
