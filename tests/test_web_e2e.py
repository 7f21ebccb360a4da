"""The real `kpr serve` driven by headless Chromium (Playwright): pick a tracklet, click keypoints, filter, read
results, open a hit's frame and clip; the investigation loop: mark hits, search again, the journey, reopen and export
the case; a linked person's identity page: its journey, a hand split, the search for them."""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from storage import Store
from storage.identities import Identities, LinkedTracklet, MadeBy
from support import free_port
from test_web import WebStore, build_web_store, cameras_of, cross_camera_query, prompt_aware_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/kpr_web_e2e.png")
HIT_SCREENSHOT = Path("/tmp/kpr_web_e2e_hit.png")
MARKS_SCREENSHOT = Path("/tmp/kpr_web_e2e_marks.png")
JOURNEY_SCREENSHOT = Path("/tmp/kpr_web_e2e_journey.png")
IDENTITY_SCREENSHOT = Path("/tmp/kpr_web_e2e_identity.png")
START_TIMEOUT_S = 120.0

pytestmark = pytest.mark.integration


def _wait_until_up(process: subprocess.Popen, port: int) -> None:
    """Poll /api/info until the server answers; fail with its output if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kpr serve exited with {process.returncode}: {process.stderr.read()}")
        try:
            status, _ = _raw_get(port, "/api/info")
            if status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"kpr serve did not answer within {START_TIMEOUT_S:.0f} s")


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (None when it has no route out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("10.255.255.255", 9))
        except OSError:
            return None
        address = udp.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _raw_get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no URL normalisation), optionally with another Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host or f"127.0.0.1:{port}")
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def link_by_truth(store: WebStore) -> dict[str, list[str]]:
    """Write the store's identities as a perfect `kpr link` would (each person's tracklets, one identity); returns the
    tracklets of each identity id."""
    person = {store.track[d]: who for d, who in store.identity.items() if store.track[d]}
    groups: dict[str, list[LinkedTracklet]] = {}
    for row in Store.open(str(store.db), create=False).list_tracklets(
            columns=["track_id", "camera_id", "video_id", "t_start", "t_end"]).to_pylist():
        groups.setdefault(person[row["track_id"]], []).append(LinkedTracklet(**row, confidence=0.8))
    identities = Identities.open(str(store.db))
    identities.replace(list(groups.values()), MadeBy("e2e", "e2e-run", None))
    return {row["identity_id"]: [t["track_id"] for t in row["tracklets"]] for row in identities.rows(["tracklets"])}


@pytest.fixture(scope="module")
def served(small_archive, tmp_path_factory):
    """A store built from the synthetic archive (with its tracklets, linked by truth), served by a real `kpr serve`
    subprocess; yields (store, port, process, the tracklets of each identity)."""
    kpr = Path(sys.executable).with_name("kpr")
    if not kpr.is_file():
        pytest.skip(f"the kpr console script is not installed next to {sys.executable}")
    folder = tmp_path_factory.mktemp("web_e2e")
    model = prompt_aware_checkpoint(folder / "model")
    store = build_web_store(small_archive, model, folder / "db", tracklets=True)
    linked = link_by_truth(store)
    port = free_port()
    process = subprocess.Popen([str(kpr), "serve", "--db", str(store.db), "--model", str(model),
                                "--port", str(port), "--max-upload-mb", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_up(process, port)
        yield store, port, process, linked
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright, or a skip saying what is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python client is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _choose_query(store: WebStore, shown: list[list[str]]) -> tuple[str, str]:
    """A shown tracklet to query with (one whose person another camera saw), and a camera to untick that neither
    holds it nor saw its person."""
    wanted = store.track[cross_camera_query(store)]
    tracks = {track: best for track, best in shown}
    track = wanted if wanted in tracks else next(
        t for t, best in shown if best in store.whole and len(cameras_of(store, store.identity[best])) > 1)
    spare = sorted(set(store.camera.values()) - cameras_of(store, store.identity[tracks[track]]))
    assert spare, "every camera saw the query's identity: no camera left to untick"
    return track, spare[0]


def _wait_loaded(page, selector: str, min_width: int = 1) -> None:
    """Wait until the first image matching ``selector`` has loaded (images arrive after their card is drawn);
    fails with a timeout when it never does."""
    page.wait_for_function("([s, w]) => { const img = document.querySelector(s);"
                           " return Boolean(img && img.complete && img.naturalWidth >= w); }", arg=[selector, min_width])


def _open_page(browser, port: int, **options):
    """The app's page in a new 1400 x 1000 browser page, and the list its script errors are collected into."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, **options)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/")
    return page, errors


def test_the_page_searches_with_a_picked_tracklet_keypoints_and_filters_and_opens_a_hit(browser, served):
    from playwright.sync_api import expect

    store, port, process, _ = served
    page, errors = _open_page(browser, port)
    expect(page.locator("#store-info")).to_contain_text(f"{len(store.identity)} detections")
    page.locator("#pick-grid .tile").first.wait_for()
    shown = page.locator("#pick-grid .tile").evaluate_all(
        "tiles => tiles.map(t => [t.dataset.trackId, t.dataset.detectionId])")
    track, unticked = _choose_query(store, shown)
    query = dict(shown)[track]

    page.locator(f'#pick-grid .tile[data-track-id="{track}"]').click()
    expect(page.locator("#query-canvas")).to_be_visible()
    expect(page.locator("#use-tracklet")).to_be_checked()
    page.locator(f'#cameras input[value="{unticked}"]').uncheck()
    page.locator("#k").fill("30")
    page.locator("#search").click()
    expect(page.locator("#status")).to_contain_text(f"best first, for tracklet {track}")
    people = page.locator("figure.person").evaluate_all(
        "cards => cards.map(c => [c.dataset.camera, c.dataset.trackId, c.querySelector('.time').textContent])")
    cameras = {camera for camera, _, _ in people}
    assert cameras and unticked not in cameras and store.camera[query] not in cameras
    tracks = [track for _, track, _ in people if track]
    assert len(tracks) == len(set(tracks)), "a tracklet shown twice"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\.\S+ UTC", when) for _, _, when in people), people
    top = page.locator('figure.person[data-rank="1"]').get_attribute("data-detection-id")
    assert store.identity[top] == store.identity[query]
    page.locator("#detections").check()
    page.locator("#search").click()
    expect(page.locator('.ranked[data-by="detection"]')).to_be_visible()
    times = page.locator("figure.hit .time").all_text_contents()
    assert times and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t) for t in times), times
    page.locator("#detections").uncheck()
    page.locator("#search").click()
    expect(page.locator('.ranked[data-by="person"]')).to_be_visible()
    page.locator('figure.person[data-rank="1"]').click()
    expect(page.locator("#hit-clip-caption")).to_contain_text("around the hit")
    expect(page.locator("#hit-when")).to_contain_text("UTC")
    _wait_loaded(page, "#hit-frame", min_width=201)
    page.locator("#hit-provenance summary").click()
    expect(page.locator("#hit-provenance-list")).to_contain_text(top)
    page.screenshot(path=str(HIT_SCREENSHOT))
    page.keyboard.press("Escape")
    expect(page.locator("#hit-panel")).to_be_hidden()

    canvas = page.locator("#query-canvas").bounding_box()
    page.locator("#joint").select_option(label="nose")
    page.mouse.click(canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] * 0.1)
    assert page.locator("#joint").input_value() == "1", "the joint select should move on to the next joint"
    page.locator('input[name="mode"][value="negative"]').check()
    page.mouse.click(canvas["x"] + canvas["width"] * 0.1, canvas["y"] + canvas["height"] * 0.5)
    expect(page.locator("#keypoint-count")).to_have_text("1 target, 1 occluder")
    page.locator("#search").click()
    expect(page.locator("#status")).to_contain_text("re-embedded with 1 target and 1 occluder keypoints")
    cameras = set(page.locator("figure.person").evaluate_all("cards => cards.map(c => c.dataset.camera)"))
    assert cameras and unticked not in cameras
    _wait_loaded(page, "figure.hit img")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.locator("#upload").set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                     "buffer": b"this is not a picture"}])
    page.locator("#search").click()
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("not an image")
    assert errors == []


def test_the_investigation_loop_marks_searches_again_follows_the_journey_and_exports_the_case(browser, served):
    from playwright.sync_api import expect

    store, port, _, _ = served
    page, errors = _open_page(browser, port, accept_downloads=True)
    page.locator("#pick-grid .tile").first.wait_for()
    page.locator("#case-name").fill("loop case")
    page.locator("#case-name").press("Tab")
    shown = page.locator("#pick-grid .tile").evaluate_all(
        "tiles => tiles.map(t => [t.dataset.trackId, t.dataset.detectionId])")
    track, _ = _choose_query(store, shown)
    page.locator(f'#pick-grid .tile[data-track-id="{track}"]').click()
    page.locator("#search").click()
    expect(page.locator("#status")).to_contain_text("recorded in case “loop case”")
    first = page.locator("figure.person").evaluate_all("cards => cards.map(c => [c.dataset.detectionId, c.dataset.trackId])")
    (same, same_track), (other, other_track) = first[0], first[1]

    page.locator(f'figure.person[data-detection-id="{same}"] button.mark[data-mark="same"]').click()
    page.locator(f'figure.person[data-detection-id="{other}"]').click()
    page.locator("#hit-not").click()
    expect(page.locator("#hit-not")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Escape")
    expect(page.locator(f'figure.person[data-detection-id="{same}"]')).to_have_class(re.compile("marked-same"))
    expect(page.locator(f'figure.person[data-detection-id="{other}"] .mark-label')).to_have_text("not this person")
    expect(page.locator("#marks-summary")).to_have_text("confirmed: 1 · rejected: 1")
    expect(page.locator("#confirmed figure")).to_have_count(1)
    expect(page.locator("#case-status")).to_contain_text("marks recorded")
    page.screenshot(path=str(MARKS_SCREENSHOT))

    page.locator("#search-again").click()
    expect(page.locator("#status")).to_contain_text("with 1 confirmed and 1 rejected (not shown again)")
    again = page.locator("figure.person").evaluate_all("cards => cards.map(c => c.dataset.trackId)")
    assert again and not {same_track, other_track} & set(again), (same_track, other_track, again)
    assert page.locator("#confirmed figure").get_attribute("data-detection-id") == same

    page.locator("#journey").click()
    expect(page.locator("#journey-summary")).to_contain_text("2 sightings on 2 cameras: the query and 1 confirmed")
    expect(page.locator("#journey-lines")).to_contain_text("(the query)")
    page.wait_for_function("() => document.querySelector('#journey-timeline').naturalWidth > 300")
    page.screenshot(path=str(JOURNEY_SCREENSHOT))
    page.keyboard.press("Escape")
    expect(page.locator("#journey-panel")).to_be_hidden()

    page.reload()
    page.locator("#case-list").select_option("loop case")
    page.locator("#case-open").click()
    expect(page.locator("#status")).to_contain_text(f"for tracklet {track} · with 1 confirmed and 1 rejected")
    expect(page.locator("#marks-summary")).to_have_text("confirmed: 1 · rejected: 1")
    expect(page.locator(f'#pick-grid .tile[data-track-id="{track}"]')).to_have_class(re.compile("chosen"))
    with page.expect_download() as download:
        page.locator("#case-export").click()
    expect(page.locator("#case-status")).to_contain_text("exported case-loop-case.zip")
    bundle = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    manifest = json.loads(bundle.read("case-loop-case/manifest.json"))["files"]
    assert all(hashlib.sha256(bundle.read(f"case-loop-case/{name}")).hexdigest() == digest
               for name, digest in manifest.items())
    kinds = [e["kind"] for e in json.loads(bundle.read("case-loop-case/case.json"))["events"]]
    assert kinds.count("query") == 3 and kinds.count("marks") >= 3, kinds
    assert errors == []


def test_the_server_listens_on_loopback_and_reads_no_files(served):
    store, port, process, _ = served
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) == 0
    outside = _non_loopback_address()
    if outside is not None:
        with socket.socket() as probe:
            probe.settimeout(5)
            assert probe.connect_ex((outside, port)) != 0, f"kpr serve answers on {outside}, not only on loopback"
    for path in ("/api/thumbnails/../../../../etc/passwd", "/static/../../../../etc/passwd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/api/thumbnails/..%2f..%2f..%2fetc%2fpasswd",
                 "/static/../app.py"):
        status, body = _raw_get(port, path)
        assert status in (400, 404) and b"root:" not in body and b"import" not in body, path
    status, body = _raw_get(port, "/api/info", host="rebound.example.com")
    assert status == 400 and "Host" in json.loads(body)["error"]
    announced = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    announced.putrequest("POST", "/api/search")
    announced.putheader("Content-Type", "multipart/form-data; boundary=x")
    announced.putheader("Content-Length", str(2 * 2**20))
    announced.endheaders()
    answer = announced.getresponse()
    assert answer.status == 413 and "upload too large" in json.loads(answer.read())["error"]
    announced.close()
    assert process.poll() is None, "the server died"


def test_an_identity_page_shows_the_journey_splits_a_tracklet_off_and_searches_for_the_person(browser, served):
    from playwright.sync_api import expect

    store, port, _, linked = served
    page, errors = _open_page(browser, port)
    expect(page.locator("#people-page")).to_contain_text(f"of {len(linked)}")
    person = max(linked, key=lambda i: (len(linked[i]), i))
    tracks = linked[person]
    left = len(tracks) - 1
    assert left >= 1, linked
    page.locator(f'#people-grid .tile[data-identity-id="{person}"]').click()
    expect(page.locator("#identity-title")).to_have_text(f"Identity {person}")
    expect(page.locator("#identity-tracklets .tile")).to_have_count(len(tracks))
    cameras = len({store.camera[d] for d, t in store.track.items() if t in tracks})
    expect(page.locator("#identity-journey-summary")).to_have_text(f"{len(tracks)} sightings on {cameras} cameras")
    page.wait_for_function("() => document.querySelector('#identity-journey-timeline').naturalWidth > 300")

    shown = page.locator("#identity-tracklets .tile").evaluate_all("tiles => tiles.map(t => t.dataset.trackId)")
    page.locator(f'#identity-tracklets .tile[data-track-id="{shown[-1]}"] input').check()
    page.locator("#identity-split").click()
    expect(page.locator("#identity-status")).to_contain_text("split 1 tracklet off into")
    expect(page.locator("#identity-tracklets .tile")).to_have_count(left)
    expect(page.locator("#identity-journey-summary")).to_have_text(re.compile(rf"^{left} sightings? on \d"))
    new = page.locator("#identity-status a.identity").get_attribute("data-identity-id")
    expect(page.locator("#people-page")).to_contain_text(f"of {len(linked) + 1}")
    tiles = page.locator("#people-grid .tile").evaluate_all("tiles => tiles.map(t => t.dataset.identityId)")
    assert person in tiles and new in tiles and new != person
    page.wait_for_function("() => document.querySelector('#identity-journey-timeline').naturalWidth > 300")
    page.screenshot(path=str(IDENTITY_SCREENSHOT))

    page.locator("#case-name").fill("identity case")
    page.locator("#case-name").press("Tab")
    page.locator("#identity-search").click()
    expect(page.locator("#identity-panel")).to_be_hidden()
    searched = f"for identity {person} (its {left} tracklet{'s' * (left > 1)} first)"
    expect(page.locator("#status")).to_contain_text(searched)
    own = page.locator("figure.person.own").evaluate_all("cards => cards.map(c => c.dataset.trackId)")
    assert sorted(own) == sorted(shown[:-1])
    page.locator("figure.person.own a.identity").first.click()
    expect(page.locator("#identity-title")).to_have_text(f"Identity {person}")
    page.keyboard.press("Escape")
    expect(page.locator("#identity-panel")).to_be_hidden()

    page.reload()  # a case whose last search was an identity's reopens it
    page.locator("#case-list").select_option("identity case")
    page.locator("#case-open").click()
    expect(page.locator("#status")).to_contain_text(searched)
    assert errors == []
