"""Person queries: what a user asks (`Query`), and the one place that checks it and runs it (`QuerySearch`).

`kpr search` and the web app only turn their inputs into a Query and show the QueryResult, so both
accept the same queries, refuse the same mistakes and search the same way.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.keypoints import group_names, part_grouping_of
from pipelines.calibrate import no_close_match_above
from pipelines.errors import UserError
from pipelines.query_image import QueryEncoder, read_query_image
from pipelines.query_prompt import KeypointPrompt
from pipelines.times import parse_time
from storage import PersonHit, PersonSearch, SearchFilters, SearchHit, Store, sql
from storage.catalog import best_detections
from storage.feedback import Feedback, FeedbackSearch
from storage.identities import Identities

# An identity search confirms at most this many of the identity's tracklets besides its representative one (those of
# most detections): feedback gathers candidates for each confirmed tracklet, one search each.
IDENTITY_CONFIRMED_MAX = 20


@dataclass(frozen=True)
class Query:
    """One search as the user gave it: exactly one of a stored detection, a stored tracklet, a global identity or an
    image, plus options.

    ``k`` counts people (tracklets) unless ``detections`` asks for the top-k detections. ``image`` is
    an encoded crop (an upload) or an image file; ``prompt`` goes with an image, or with a stored
    detection, which is then re-embedded from its thumbnail. Cameras, parts and times are as typed
    (part names or 1-based numbers; ISO 8601 or epoch seconds): QuerySearch.run checks them. ``same`` and
    ``rejected`` are detection ids of earlier hits marked the same person and not this person (relevance feedback).
    An identity (`kpr link`) is searched for as its representative tracklet with its other tracklets confirmed, over
    every camera: its own tracklets are listed first, then the people it does not hold yet.
    """

    detection_id: str | None = None
    track_id: str | None = None
    image: bytes | Path | None = None
    prompt: KeypointPrompt | None = None
    cameras: tuple[str, ...] | None = None
    parts: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    min_visibility: float = 0.0
    k: int = 10
    rerank: bool = False
    same_camera: bool = False
    global_only: bool = False
    detections: bool = False
    same: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    identity_id: str | None = None


@dataclass(frozen=True)
class QueryResult:
    """The hits of a query, best first, and what the query turned out to be.

    ``people`` are the top people (tracklets) and ``hits`` their closest detections, or, for a query of
    detections, ``people`` is None and ``hits`` the top detections. ``kind`` is "detection", "tracklet",
    "identity" or "image"; ``parts`` the 0-based queried parts (None: the
    whole body) among the store's ``part_names`` (none for a global model's store); ``crop`` the RGB
    pixels that were embedded (an image, or a stored detection's thumbnail re-embedded with a prompt),
    None for stored embeddings; ``global_only`` whether the hits were ranked by the global vectors alone;
    ``no_close_match_above`` the model's calibrated distance above which a hit is no close match (None: not
    calibrated, or a part or re-ranked search, whose distances are on another scale). For an identity, the first
    ``own`` people are its own tracklets (ranked among themselves), the others the people it does not hold yet.
    ``identities`` gives the identity of each hit's tracklet that has one (empty when the store was never linked).
    """

    hits: list[SearchHit]
    kind: str
    parts: list[int] | None
    part_names: list[str]
    crop: np.ndarray | None = None
    global_only: bool = False
    people: list[PersonHit] | None = None
    no_close_match_above: float | None = None
    own: int = 0
    identities: dict[str, str] = field(default_factory=dict)


class QuerySearch:
    """Runs Queries over one store: picks the kind of query, checks every input once, and searches.

    ``encoder`` (the store's model) embeds images and keypoint prompts; without it such a query fails
    with ``missing_model``, which says how to give one. The encoder runs under a lock, so one
    QuerySearch may serve several threads.
    """

    def __init__(self, store: Store, encoder: QueryEncoder | None, missing_model: str) -> None:
        self.store = store
        self.search = PersonSearch(store)
        self.identities = Identities.open(store.uri)
        self._encoder = encoder
        self._missing_model = missing_model
        self._encoder_lock = threading.Lock()

    def run(self, query: Query) -> QueryResult:
        """The query's hits, after checking the query against the store; UserError or StoreError for mistakes."""
        given = [name for name in ("detection_id", "track_id", "identity_id", "image")
                 if getattr(query, name) is not None]
        if len(given) != 1:
            raise UserError("give exactly one query: a detection_id, a track_id, an identity_id or an image file"
                            + (f" (got {', '.join(given)})" if given else ""))
        shape = self.store.embedding_shape
        if shape is None:
            raise UserError(f"the store at {self.store.uri} holds no detections yet (run `kpr ingest` first)")
        global_model = self.search.global_model
        global_only = global_model or query.global_only
        if global_model and (query.parts or query.prompt is not None):
            raise UserError("the store's model is a global ReID model: it has no body parts and takes no keypoints")
        names = [] if global_model else part_names(shape[1])
        parts = parse_parts(query.parts, shape[1]) if query.parts else None
        filters = self._filters(query)
        own: list[str] = []
        if query.identity_id is not None:
            if query.prompt is not None or query.detections:
                raise UserError("an identity search lists people: it takes no keypoints and no --detections or --group")
            own, confirmed = self._identity_tracklets(query.identity_id)
            embedding, _ = self.search.tracklet_query(own[0], False, filters)
            query = replace(query, same=tuple(dict.fromkeys([*confirmed, *query.same])))
            kind, crop = "identity", None
        elif query.track_id is not None:
            if query.prompt is not None:
                raise UserError("keypoints go with an image or a detection, not with a tracklet")
            embedding, filters = self.search.tracklet_query(query.track_id, not query.same_camera, filters)
            kind, crop = "tracklet", None
        elif query.detection_id is None:
            (embedding, crop), kind = self._embed(query.image, query.prompt), "image"
        else:
            stand_in, crop = (None, None) if query.prompt is None else self._prompted_detection(query)
            embedding, filters = self.search.detection_query(query.detection_id, not query.same_camera, filters,
                                                             stand_in)
            kind = "detection"
        options = {"k": query.k, "filters": filters, "parts": parts, "rerank": query.rerank, "global_only": global_only}
        threshold = None if parts or query.rerank else no_close_match_above(self.store.model(), global_only)
        search = self._with_feedback(query)
        if query.detections:
            hits = search.search(embedding, **options)
            return QueryResult(hits, kind, parts, names, crop, global_only, no_close_match_above=threshold,
                               identities=self._identities_of(hits))
        mine = [] if not own else self.search.people(embedding, **(options | {
            "k": len(own), "filters": replace(filters, track_ids=own)}))
        people = mine + search.people(embedding, **(options | {"filters": replace(
            filters, exclude_track_ids=[*filters.exclude_track_ids, *own])}))
        hits = [p.best for p in people]
        return QueryResult(hits, kind, parts, names, crop, global_only, people, threshold, own=len(mine),
                           identities=self._identities_of(hits))

    def _identity_tracklets(self, identity_id: str) -> tuple[list[str], list[str]]:
        """The tracklets of an identity, its representative one first, and the best detection of each of the others
        that the search confirms (at most IDENTITY_CONFIRMED_MAX, those of most detections); NotFoundError for an
        unknown id."""
        row = self.identities.get(identity_id)
        best = row["best_track_id"]
        others = [t["track_id"] for t in row["tracklets"] if t["track_id"] != best]
        stored = self.store.list_tracklets(sql.is_in("track_id", others), columns=["track_id", "n_detections",
                                                                                 "best_detection_id"]).to_pylist()
        chosen = {r["track_id"]: r["best_detection_id"] for r in sorted(stored, key=lambda r: -r["n_detections"])
                  [:IDENTITY_CONFIRMED_MAX]}
        missing = [track for track, detection in chosen.items() if detection is None]
        chosen.update({track: detection for track, (detection, _) in best_detections(self.store, missing).items()})
        return [best, *others], [detection for detection in chosen.values() if detection]

    def _identities_of(self, hits: Sequence[SearchHit]) -> dict[str, str]:
        """The identity of each hit's tracklet that has one (none before the store was linked)."""
        return self.identities.of_tracklets([h.track_id for h in hits if h.track_id])

    def _with_feedback(self, query: Query) -> PersonSearch | FeedbackSearch:
        """What searches the query: with the investigator's marks on earlier hits, if any."""
        if not query.same and not query.rejected:
            return self.search
        return FeedbackSearch(self.search, Feedback(query.same, query.rejected))

    def check_cameras(self, cameras: Sequence[str]) -> None:
        """Refuse camera names the store does not have, naming the known ones."""
        known = self.store.cameras()
        for camera in cameras:
            if camera not in known:
                raise UserError(f"unknown camera {camera!r} (known: {', '.join(known) or 'none'})")

    def _filters(self, query: Query) -> SearchFilters:
        """The query's camera / time window / visibility filters, checked."""
        if query.cameras is not None:
            if not query.cameras:
                raise UserError("choose at least one camera")
            self.check_cameras(query.cameras)
        return SearchFilters(cameras=query.cameras, t_min=parse_time(query.since), t_max=parse_time(query.until),
                             min_visibility=query.min_visibility)

    def _embed(self, image: bytes | Path, prompt: KeypointPrompt | None) -> tuple[ReIDEmbeddings, np.ndarray]:
        """The embedding of a query image with its optional keypoint prompt (checked to lie in it), and its pixels."""
        if self._encoder is None:
            raise UserError(self._missing_model)
        crop = read_query_image(image)
        if prompt is not None:
            prompt.check_inside(crop.shape[1], crop.shape[0])
        with self._encoder_lock:
            return self._encoder.embed(crop, prompt), crop

    def _prompted_detection(self, query: Query) -> tuple[ReIDEmbeddings, np.ndarray]:
        """A stored detection's thumbnail re-embedded with the query's prompt, and the thumbnail's pixels."""
        thumbnail = self.store.get_detection(query.detection_id, ["thumbnail"])["thumbnail"]
        if not thumbnail:
            raise UserError(f"detection {query.detection_id!r} has no thumbnail to re-embed with keypoints")
        return self._embed(thumbnail, query.prompt)


def part_names(num_parts: int) -> list[str]:
    """Display names of the K parts: those of the part grouping with K parts (eight: K = 8, five_v: K = 5), else
    "part 1".."part K" (the store knows K, not the grouping)."""
    grouping = part_grouping_of(num_parts)
    return list(group_names(grouping)) if grouping else [f"part {i}" for i in range(1, num_parts + 1)]


def _normalised(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def parse_parts(values: Sequence[str], num_parts: int) -> list[int]:
    """0-based part indices from part names or 1-based numbers ("left_foot", "7"); UserError otherwise."""
    names = part_names(num_parts)
    index = {_normalised(name): i for i, name in enumerate(names)}
    chosen = []
    for value in values:
        text = _normalised(str(value))
        if text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= num_parts:
            chosen.append(int(text) - 1)
        elif text in index:
            chosen.append(index[text])
        else:
            raise UserError(f"unknown part {value!r}: use a part name ({', '.join(names)}) or a number 1..{num_parts}")
    return sorted(set(chosen))
