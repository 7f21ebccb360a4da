"""`kpr serve`: a JSON API over PersonSearch and the single page (static/) that drives it.

Routes: GET / (the page), GET /api/info, GET /api/tracklets (pickable queries, a page by camera and time),
GET /api/tracklets/{track_id}/thumbnail and /api/thumbnails/{detection_id} (JPEG bytes from the store),
GET /api/hits/{detection_id} (where, when and provenance), /api/hits/{detection_id}/frame (its archived frame with
the box, JPEG) and /api/hits/{detection_id}/clip (seconds around it), POST /api/search (multipart form; with ``same`` / ``not`` marks and
a ``case`` to record it in), GET /api/cases, GET /api/case?case= (reopen), POST /api/case/marks, GET
/api/case/export?case= (the evidence bundle as a zip), GET /api/journey?query=&same= (timeline and map SVG), GET
/api/identities (a page of the people `kpr link` found), GET /api/identities/{identity_id} (its page) and
/api/identities/{identity_id}/thumbnail, POST /api/identities/merge and /api/identities/{identity_id}/split (hand
edits). Ids are looked up, never used as paths. Every user mistake is a 4xx JSON ``{"error": "..."}``.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from kpr_model.keypoints import COCO_KEYPOINTS
from pipelines.errors import UserError, user_error_types
from pipelines.query import Query, QuerySearch, part_names
from pipelines.query_image import QueryEncoder
from pipelines.query_prompt import prompt_from_text
from pipelines.store_cameras import view_cameras
from pipelines.times import parse_time
from pipelines.web.context import HitContext
from pipelines.web.guard import RequestGuard
from pipelines.web.identities import IdentityViews
from pipelines.web.investigation import Investigation, check_marks
from pipelines.web.payload import finite, query_json, results_json, tracklet_json
from storage import NotFoundError, RowsMovedError, Store
from storage.cases import check_name
from storage.catalog import CatalogFilters, best_detections, check_cameras, list_tracklets, tracklet_thumbnails
from workers.cameras import Cameras
from workers.errors import DecodeError

K_MAX = 200
LIST_MAX = 200
TOKEN_ENV = "KPR_SERVE_TOKEN"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,}")
FACTS_TTL_S = 10.0
STATIC = Path(__file__).with_name("static")
NO_MODEL = "this server has no model loaded (start kpr serve with --model), so it cannot embed images or keypoint prompts"
log = logging.getLogger("kpr.serve")


@dataclass(frozen=True)
class StoreFacts:
    """What the page needs to know about the store, re-read at most every FACTS_TTL_S seconds."""

    cameras: tuple[str, ...]
    time_range: tuple[float, float] | None
    detections: int
    videos: int
    num_parts: int | None
    global_model: bool


class SearchService:
    """Everything the routes share: the store, the QuerySearch that answers searches, and the store's facts.

    Routes run in a thread pool; QuerySearch runs the encoder (one model on the CPU) under a lock.
    """

    def __init__(self, db: str, model: str | None = None, model_input: str | None = None,
                 cameras: Cameras = Cameras()) -> None:
        self.store = Store.open(db, create=False)
        self.context = HitContext(self.store, cameras)
        encoder = None if model is None else QueryEncoder(model, self.store, model_input)
        self.queries = QuerySearch(self.store, encoder, missing_model=NO_MODEL)
        self.image_queries = encoder is not None
        self.investigation = Investigation(self.store, cameras)
        self.people = IdentityViews(self.store, self.queries.identities)
        self._facts: StoreFacts | None = None
        self._facts_at = 0.0

    def facts(self) -> StoreFacts:
        """Cameras, time range, counts and part count of the store (cached briefly: ingestion may add rows)."""
        if self._facts is None or time.monotonic() - self._facts_at > FACTS_TTL_S:
            shape = self.store.embedding_shape
            self._facts = StoreFacts(tuple(self.store.cameras()), self.store.time_range(), self.store.count_detections(),
                                     self.store.count_videos("done"), None if shape is None else shape[1],
                                     self.queries.search.global_model)
            self._facts_at = time.monotonic()
        return self._facts

    def info(self, max_upload_bytes: int) -> dict:
        """The page's start-up facts: cameras (and their display names), time range, part and joint names (none for a global model's store),
        counts, whether images can be queried and whether the store's model is a global one."""
        facts = self.facts()
        return {
            "store": self.store.uri,
            "detections": facts.detections,
            "videos": facts.videos,
            "cameras": list(facts.cameras),
            "camera_names": {camera: self.context.cameras.display(camera).name for camera in facts.cameras},
            "time_range": None if facts.time_range is None else list(facts.time_range),
            "parts": [] if facts.num_parts is None or facts.global_model else part_names(facts.num_parts),
            "global_model": facts.global_model,
            "joints": list(COCO_KEYPOINTS),
            "image_queries": self.image_queries,
            "max_upload_bytes": max_upload_bytes,
            "k_max": K_MAX,
            "max_candidates": self.queries.search.max_candidates,
        }

    def list_tracklets(self, camera: str | None, since: str | None, limit: int, offset: int) -> dict:
        """A page of tracklets (by camera, then start time; of one camera, seen at or after ``since``) to pick a
        query from, each with its best detection (the one keypoint prompts are drawn on)."""
        if camera is not None:
            check_cameras(self.store, [camera])
        filters = CatalogFilters(cameras=None if camera is None else (camera,), t_min=parse_time(since))
        page = list_tracklets(self.store, filters, limit, offset)
        unknown = [t.track_id for t in page.rows if t.best_detection_id is None]
        best = {track: detection for track, (detection, _) in best_detections(self.store, unknown).items()}
        return {"tracklets": [tracklet_json(t, t.best_detection_id or best.get(t.track_id)) for t in page.rows],
                "offset": offset, "limit": limit, "total": page.total, "more": page.remaining > 0}

    def tracklet_thumbnail(self, track_id: str) -> bytes:
        """The best thumbnail of a tracklet; 404 for unknown ids or tracklets without one."""
        found = tracklet_thumbnails(self.store, [track_id])
        if track_id not in found:
            raise HTTPException(404, f"unknown tracklet id {track_id!r} or it has no thumbnail")
        return found[track_id]

    def thumbnail(self, detection_id: str) -> bytes:
        """The stored JPEG thumbnail of a detection; 404 for unknown ids (the id is only ever a store key)."""
        row = self.store.get_detection(detection_id, ["thumbnail"])
        if not row["thumbnail"]:
            raise HTTPException(404, f"detection {detection_id!r} has no thumbnail")
        return row["thumbnail"]

    def run(self, query: Query, case: str | None = None) -> dict:
        """Answer one search: its people (or detections), best first, with what the query was; with ``case``, the
        search, its marks and its results are recorded in that case."""
        started = time.perf_counter()
        check_marks(query.same, query.rejected)
        if case is not None:
            check_name(case)
        result = self.queries.run(query)
        if case is not None:
            self.investigation.record_search(case, query, result)
        names = None if result.parts is None else [result.part_names[p] for p in result.parts]
        return {"query": query_json(query, result), "parts": names, "count": len(result.hits),
                "global_only": result.global_only, **results_json(result),
                "case": case, "elapsed_ms": finite(1000 * (time.perf_counter() - started))}


def _jpeg(data: bytes) -> Response:
    """JPEG bytes as a response the browser may keep for an hour (a stored detection's pixels do not change)."""
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


def _blank(value: str | None) -> str | None:
    """None for missing or blank form values, the stripped text otherwise."""
    return value.strip() if value is not None and value.strip() else None


def _ids(values: list[str] | None) -> tuple[str, ...]:
    """The non-blank ids of a repeated form or query field, stripped, each once."""
    return tuple(dict.fromkeys(v.strip() for v in values or () if v.strip()))


def _error(status: int, message: str) -> JSONResponse:
    """The API's error response: one line for the user."""
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    """'field: what is wrong' for the first invalid request field."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return f"{field}: {first.get('msg', 'invalid value')}"


def _add_error_handlers(app: FastAPI) -> None:
    """Project errors become 400 (404 for unknown ids; 503 for a search that maintenance kept moving its rows under:
    the request was right, asking again will do), validation 422, HTTP errors keep their status; all as JSON."""
    async def user_error(_: Request, exc: Exception) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 503 if isinstance(exc, RowsMovedError) else 400
        return _error(status, str(exc))

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    async def unreadable(_: Request, exc: Exception) -> JSONResponse:
        return _error(410, f"the archived video cannot be read any more: {exc}")

    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    for kind in user_error_types():
        app.add_exception_handler(kind, user_error)
    app.add_exception_handler(DecodeError, unreadable)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crash)


def create_app(db: str, model: str | None = None, max_upload_bytes: int = 8 * 2**20,
               allowed_hosts: list[str] | None = None, model_input: str | None = None,
               cameras: Cameras = Cameras(), token: str | None = None) -> FastAPI:
    """The web app over the store at ``db``; with ``model`` (the store's model; ``model_input``: a global ONNX
    model's pixel coding) image and keypoint queries work; ``cameras`` names the cameras and their time zones.

    Request bodies over ``max_upload_bytes`` get a 413; ``allowed_hosts`` (None: any) restricts the Host header;
    with ``token`` every API request must carry it (see RequestGuard).
    """
    service = SearchService(str(db), None if model is None else str(model), model_input, cameras)
    app = FastAPI(title="kpr person search", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    _add_error_handlers(app)
    app.add_middleware(RequestGuard, max_body_bytes=max_upload_bytes, allowed_hosts=allowed_hosts, token=token)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        return service.info(max_upload_bytes)

    @app.get("/api/tracklets")
    def tracklets(camera: Annotated[str | None, QueryParam()] = None,
                  since: Annotated[str | None, QueryParam()] = None,
                  limit: Annotated[int, QueryParam(ge=1, le=LIST_MAX)] = 24,
                  offset: Annotated[int, QueryParam(ge=0)] = 0) -> dict:
        return service.list_tracklets(_blank(camera), _blank(since), limit, offset)

    @app.get("/api/tracklets/{track_id}/thumbnail")
    def tracklet_thumbnail(track_id: str) -> Response:
        return _jpeg(service.tracklet_thumbnail(track_id))

    @app.get("/api/thumbnails/{detection_id}")
    def thumbnail(detection_id: str) -> Response:
        return _jpeg(service.thumbnail(detection_id))

    @app.get("/api/hits/{detection_id}")
    def hit(detection_id: str) -> dict:
        return service.context.describe(detection_id)

    @app.get("/api/hits/{detection_id}/frame")
    def frame(detection_id: str) -> Response:
        return _jpeg(service.context.frame(detection_id))

    @app.get("/api/hits/{detection_id}/clip")
    def clip(detection_id: str) -> dict:
        return service.context.clip(detection_id)

    @app.post("/api/search")
    def search(
        detection_id: Annotated[str | None, Form()] = None,
        track_id: Annotated[str | None, Form()] = None,
        identity_id: Annotated[str | None, Form()] = None,
        image: Annotated[UploadFile | None, File()] = None,
        keypoints: Annotated[str | None, Form()] = None,
        cameras: Annotated[list[str] | None, Form()] = None,
        parts: Annotated[list[str] | None, Form()] = None,
        since: Annotated[str | None, Form()] = None,
        until: Annotated[str | None, Form()] = None,
        min_visibility: Annotated[float, Form(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0,
        k: Annotated[int, Form(ge=1, le=K_MAX)] = 10,
        rerank: Annotated[bool, Form()] = False,
        same_camera: Annotated[bool, Form()] = False,
        global_only: Annotated[bool, Form()] = False,
        detections: Annotated[bool, Form()] = False,
        same: Annotated[list[str] | None, Form()] = None,
        rejected: Annotated[list[str] | None, Form(alias="not")] = None,
        case: Annotated[str | None, Form()] = None,
    ) -> dict:
        """Search by a stored detection, a stored tracklet, an identity or an uploaded crop: the top-k people
        (tracklets), each by its closest detection (an identity's own tracklets first), or with ``detections`` the
        top-k detections.

        Each search re-ranks a bounded number of candidates, whatever it asks for (at most ``max_candidates``
        of /api/info; k-reciprocal re-ranking re-orders the best of them only), so one request's work is bounded.
        ``same`` / ``not`` are detection ids of earlier hits marked the same person or not this person (relevance
        feedback; marked hits are not shown again); with ``case`` the search is recorded in that case.
        """
        prompt = _blank(keypoints)
        query = Query(
            detection_id=_blank(detection_id), track_id=_blank(track_id), identity_id=_blank(identity_id),
            image=None if image is None else image.file.read(), prompt=None if prompt is None else prompt_from_text(prompt),
            cameras=None if cameras is None else tuple(c.strip() for c in cameras if c.strip()), parts=tuple(parts or ()),
            since=_blank(since), until=_blank(until), min_visibility=min_visibility, k=k, rerank=rerank,
            same_camera=same_camera, global_only=global_only, detections=detections,
            same=_ids(same), rejected=_ids(rejected))
        return service.run(query, _blank(case))

    @app.get("/api/cases")
    def cases() -> dict:
        return service.investigation.list_cases()

    @app.get("/api/case")
    def case(case: Annotated[str, QueryParam()]) -> dict:
        return service.investigation.reopen(case)

    @app.post("/api/case/marks")
    def marks(case: Annotated[str, Form()], same: Annotated[list[str] | None, Form()] = None,
              rejected: Annotated[list[str] | None, Form(alias="not")] = None,
              cleared: Annotated[list[str] | None, Form()] = None) -> dict:
        """Record a change of marks in a case: results marked the same person or not, or marks taken back."""
        return service.investigation.record_marks(case, _ids(same), _ids(rejected), _ids(cleared))

    @app.get("/api/case/export")
    def export(case: Annotated[str, QueryParam()]) -> Response:
        name, data = service.investigation.export_zip(case)
        return Response(data, media_type="application/zip",
                        headers={"content-disposition": f'attachment; filename="{name}"'})

    @app.get("/api/identities")
    def identities(camera: Annotated[str | None, QueryParam()] = None,
                   limit: Annotated[int, QueryParam(ge=1, le=LIST_MAX)] = 24,
                   offset: Annotated[int, QueryParam(ge=0)] = 0) -> dict:
        return service.people.page(_blank(camera), limit, offset)

    @app.post("/api/identities/merge")
    def merge(identity_id: Annotated[list[str] | None, Form()] = None,
              note: Annotated[str, Form(max_length=2000)] = "") -> dict:
        """Merge identities by hand into the first one given; later `kpr link` runs keep them together."""
        return service.people.merge(_ids(identity_id), note.strip())

    @app.get("/api/identities/{identity_id}")
    def identity(identity_id: str) -> dict:
        return service.people.describe(identity_id)

    @app.get("/api/identities/{identity_id}/thumbnail")
    def identity_thumbnail(identity_id: str) -> Response:
        jpeg = service.people.thumbnail(identity_id)
        if not jpeg:
            raise HTTPException(404, f"identity {identity_id!r} has no thumbnail")
        return _jpeg(jpeg)

    @app.post("/api/identities/{identity_id}/split")
    def split(identity_id: str, track_id: Annotated[list[str] | None, Form()] = None,
              note: Annotated[str, Form(max_length=2000)] = "") -> dict:
        """Split the ``track_id`` tracklets off an identity by hand into a new one; later runs keep them apart."""
        return service.people.split(identity_id, _ids(track_id), note.strip())

    @app.get("/api/journey")
    def journey(query: Annotated[str, QueryParam()], same: Annotated[list[str] | None, QueryParam()] = None) -> dict:
        """The journey of the person of a tracklet or detection and its confirmed sightings (``same``)."""
        return service.investigation.journey(query.strip(), _ids(same))

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (only this machine can connect)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """``host`` as it appears in a URL or Host header (IPv6 addresses in brackets)."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or a UserError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve_token(token: str | None) -> str | None:
    """The token ``--token`` gives, else that of the KPR_SERVE_TOKEN environment variable, checked (None: neither)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise UserError("the token must be at least 16 characters of letters, digits and ._~+/=- "
                        "(for example: python -c 'import secrets; print(secrets.token_urlsafe())')")
    return token


def serve(db: str, model: str | None = None, host: str = "127.0.0.1", port: int = 8765,
          max_upload_mb: float = 8.0, model_input: str | None = None, cameras_file: str | None = None,
          token: str | None = None) -> int:
    """Run the web app on ``host``:``port`` until interrupted: loopback by default; any other address needs a token
    (``token`` or KPR_SERVE_TOKEN). Every request is logged on stderr."""
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    loopback, shown, token = is_loopback(host), _url_host(host), serve_token(token)
    if not loopback and token is None:
        raise UserError(f"listening on {host} lets anyone who can reach this machine search the store: "
                        f"give --token TOKEN (or set {TOKEN_ENV}), or serve on 127.0.0.1")
    cameras = view_cameras(Store.open(db, create=False), cameras_file)
    allowed = ["127.0.0.1", "localhost", "[::1]", shown.lower()] if loopback else None
    app = create_app(db, model, int(max_upload_mb * 2**20), allowed_hosts=allowed, model_input=model_input,
                     cameras=cameras, token=token)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    entry = f"http://{shown}:{bound}/" + ("" if token is None else "?token=TOKEN (the token you gave)")
    print(f"kpr serve: {entry} (store {db}; Ctrl+C stops)", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0
