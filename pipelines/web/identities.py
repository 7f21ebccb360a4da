"""The web app's identities (`kpr link`): a page of them, one identity's page (its tracklets, cameras, history and
what its journey asks for), its thumbnail, and hand merges and splits (storage.identities records them so that
later linking runs respect them)."""
from __future__ import annotations

import json
from collections.abc import Sequence

from pipelines.errors import UserError
from pipelines.times import span_text, utc_text
from pipelines.web.payload import identity_thumbnail_url, tracklet_thumbnail_url
from storage import Store
from storage.identities import Identities
from storage.catalog import CatalogFilters, IdentitySummary, check_cameras, list_identities

EDIT_MAX = 200  # identities one merge, or tracklets one split, may name
JOURNEY_SAME_MAX = 199  # tracklets besides the representative one that an identity's journey follows


def summary_json(identity: IdentitySummary) -> dict:
    """A listed identity: its size, cameras, first and last seen (UTC) and representative thumbnail."""
    return {"identity_id": identity.identity_id, "tracklets": identity.tracklets, "cameras": identity.cameras,
            "detections": identity.detections, "first_seen": identity.first_seen, "last_seen": identity.last_seen,
            "span_utc": span_text(identity.first_seen, identity.last_seen), "best_track_id": identity.best_track_id,
            "confidence": identity.confidence, "thumbnail": identity_thumbnail_url(identity.identity_id)}


def identity_json(row: dict) -> dict:
    """An identity's page: its tracklets (thumbnail, camera, time, link confidence), first and last seen per camera,
    history (events with their UTC time), provenance, and the journey to ask for (its representative tracklet and
    the others)."""
    best = row["best_track_id"]
    others = [t["track_id"] for t in row["tracklets"] if t["track_id"] != best]
    return {
        "identity_id": row["identity_id"],
        "best_track_id": best,
        "thumbnail": identity_thumbnail_url(row["identity_id"]),
        "span_utc": span_text(row["first_seen"], row["last_seen"]),
        "tracklets": [{**t, "span_utc": span_text(t["t_start"], t["t_end"]),
                       "thumbnail": tracklet_thumbnail_url(t["track_id"])} for t in row["tracklets"]],
        "cameras": [{**c, "first_utc": utc_text(c["first_seen"]), "last_utc": utc_text(c["last_seen"])}
                    for c in row["cameras"]],
        "history": [{**event, "at_utc": utc_text(event["at"])} for event in json.loads(row["history"])],
        "model_id": row["model_id"],
        "run_id": row["run_id"],
        "linked_utc": utc_text(row["linked_at"]),
        "journey": {"query": best, "same": others[:JOURNEY_SAME_MAX]},
    }


class IdentityViews:
    """The identities of the served store, as the page shows and edits them."""

    def __init__(self, store: Store, identities: Identities) -> None:
        self.store = store
        self.identities = identities

    def page(self, camera: str | None, limit: int, offset: int) -> dict:
        """A page of identities (earliest first seen first; those ``camera`` saw), and whether the store was linked."""
        if camera is not None:
            check_cameras(self.store, [camera])
        found = list_identities(self.store, CatalogFilters(cameras=None if camera is None else (camera,)), limit,
                                offset)
        if found is None:
            return {"linked": False, "identities": [], "offset": offset, "limit": limit, "total": 0, "more": False}
        return {"linked": True, "identities": [summary_json(row) for row in found.rows], "offset": offset,
                "limit": limit, "total": found.total, "more": found.remaining > 0}

    def describe(self, identity_id: str) -> dict:
        """Identity ``identity_id``'s page (NotFoundError for an unknown id)."""
        return identity_json(self.identities.get(identity_id))

    def thumbnail(self, identity_id: str) -> bytes | None:
        """The representative thumbnail of identity ``identity_id`` (None: it has none)."""
        return self.identities.get(identity_id)["thumbnail"]

    def merge(self, identity_ids: Sequence[str], note: str) -> dict:
        """Merge the identities by hand into the first; the merged identity's page."""
        _check_count(identity_ids, "identities to merge")
        return identity_json(self.identities.merge(identity_ids, note))

    def split(self, identity_id: str, track_ids: Sequence[str], note: str) -> dict:
        """Split tracklets ``track_ids`` off identity ``identity_id`` by hand into a new identity; both pages."""
        _check_count(track_ids, "tracklets to split off")
        kept, new = self.identities.split(identity_id, track_ids, note)
        return {"kept": identity_json(kept), "new": identity_json(new)}


def _check_count(ids: Sequence[str], what: str) -> None:
    """Refuse more than EDIT_MAX ids in one edit."""
    if len(ids) > EDIT_MAX:
        raise UserError(f"at most {EDIT_MAX} {what} in one edit, got {len(ids)}")
