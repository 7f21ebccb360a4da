"use strict";
// The kpr search page: pick a tracklet (by camera and time) or upload a crop, click keypoint prompts, filter, show
// the ranked people (tracklets, each by its closest detection) or detections, and open any hit's frame and clip;
// mark hits "same person" / "not this person" and search again with the marks, follow the person's journey, and keep
// it all in a case (recorded in the store, reopened, exported as an evidence bundle). Once the store is linked
// (`kpr link`), list its people (global identities), open one's page (tracklets, cameras, history, journey), search for
// them, merge or split them by hand; every result links to its identity.
// Plain DOM code: every value from the server is written with textContent or attributes, never as HTML.

const PAGE_SIZE = 24;
const VIEW_HEIGHT = 288;
const VIEW_MAX_WIDTH = 200;

const state = {
  info: null,
  query: null,        // {kind: "detection", detectionId, cameraId, trackId} (a picked tracklet: its best detection) or {kind: "image", file}
  image: null,        // the query crop as a loaded HTMLImageElement (null when the browser cannot show it)
  positive: [],       // [{joint, x, y}] in crop pixels
  negative: [],       // [{x, y}] in crop pixels
  pickOffset: 0,
  globalOnly: false,  // whether the shown hits were ranked by the global vectors alone
  hit: null,          // the hit open in the detail panel
  clipTimer: null,    // the interval that animates its clip
  marks: new Map(),   // detection id -> {mark: "same" | "not", hit}: the investigator's marks, sent with every search
  case: "",           // the case searches and marks are recorded in ("": none)
  searched: null,     // the stored id (tracklet or detection) the shown results were searched for, for the journey
  peopleOffset: 0,
  identity: null,     // the identity open in its panel (its page as the server gives it)
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function utc(timestamp) {
  return new Date(timestamp * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function withCase(path) {
  if (!state.case) return path;
  return `${path}${path.includes("?") ? "&" : "?"}case=${encodeURIComponent(state.case)}`;
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(withCase(path), options);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ---- start-up: store facts, filter checkboxes, joint list ----

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  const range = info.time_range ? ` · ${utc(info.time_range[0])} – ${utc(info.time_range[1])} UTC` : "";
  const model = info.image_queries ? "model loaded" : "no model: image and keypoint queries are off";
  $("store-info").textContent =
    `${info.detections} detections · ${info.cameras.length} cameras · ${info.videos} videos${range} · ${model}`;
  for (const camera of info.cameras) {
    $("pick-camera").append(element("option", {value: camera}, cameraName(camera)));
    $("people-camera").append(element("option", {value: camera}, cameraName(camera)));
    $("cameras").append(checkbox("camera", camera, true, cameraName(camera)));
  }
  info.parts.forEach((name) => $("parts").append(checkbox("part", name, false)));
  info.joints.forEach((name, index) => $("joint").append(element("option", {value: String(index)}, name.replace("_", " "))));
  $("k").max = String(info.k_max);
  $("global-only").checked = info.global_model;
  $("global-only").disabled = info.global_model;
  $("upload").disabled = !info.image_queries;
  $("prompt-tools").disabled = !info.image_queries || info.global_model;  // a global model takes no keypoints
}

function checkbox(kind, value, checked, shown = value) {
  const label = element("label");
  const input = element("input", {type: "checkbox", name: kind, value});
  input.checked = checked;
  label.append(input, " " + shown);
  return label;
}

function cameraName(camera) {
  return state.info.camera_names[camera] || camera;
}

function ticked(kind) {
  return [...document.querySelectorAll(`input[name="${kind}"]`)].filter((i) => i.checked).map((i) => i.value);
}

// ---- picking a stored tracklet ----

async function loadPickPage() {
  const camera = $("pick-camera").value;
  const params = new URLSearchParams({limit: String(PAGE_SIZE), offset: String(state.pickOffset)});
  if (camera) params.set("camera", camera);
  if ($("pick-since").value) params.set("since", $("pick-since").value);
  try {
    const page = await api(`/api/tracklets?${params}`);
    showGridPage("pick", page, page.tracklets.map(pickTile), state.pickOffset, "no tracklets");
    markQueryTile();
  } catch (err) {
    showError(err.message);
  }
}

function showGridPage(name, page, tiles, offset, none) {
  // A page of tiles in the grid `${name}-grid`, where it starts among how many, and its pager's buttons.
  $(`${name}-grid`).replaceChildren(...tiles);
  $(`${name}-page`).textContent = tiles.length ? `people ${offset + 1}–${offset + tiles.length} of ${page.total}` : none;
  $(`${name}-prev`).disabled = offset === 0;
  $(`${name}-next`).disabled = !page.more;
}

function pickTile(tracklet) {
  const tile = element("button", {type: "button", class: "tile", "data-track-id": tracklet.track_id,
    "data-detection-id": tracklet.best_detection_id || "", "data-camera": tracklet.camera_id,
    title: `${tracklet.camera_id} · ${tracklet.span_utc} UTC · track ${tracklet.track_id}`});
  tile.append(element("img", {src: tracklet.thumbnail, alt: tracklet.track_id, loading: "lazy"}),
    element("span", {class: "tile-camera", title: cameraName(tracklet.camera_id)}, cameraName(tracklet.camera_id)),
    element("span", {class: "tile-time"}, `${utc(tracklet.t_start).slice(11)} +${Math.round(tracklet.t_end - tracklet.t_start)} s`),
    element("span", {class: "tile-size"}, plural(tracklet.detections, "detection", "detections")));
  tile.addEventListener("click", () => chooseTracklet(tracklet, tile));
  return tile;
}

function markQueryTile() {
  // The tracklet the query searches with stays marked in the picker: on its page, and after a case is reopened.
  const track = state.query && $("use-tracklet").checked ? state.query.trackId : null;
  document.querySelectorAll("#pick-grid .tile").forEach((t) => t.classList.toggle("chosen", Boolean(track) &&
    t.dataset.trackId === track));
}

function chooseTracklet(tracklet, tile) {
  if (!state.query || state.query.trackId !== tracklet.track_id) clearMarks();
  state.query = {kind: "detection", detectionId: tracklet.best_detection_id, cameraId: tracklet.camera_id,
    trackId: tracklet.track_id};
  $("upload").value = "";
  document.querySelectorAll(".tile.chosen").forEach((t) => t.classList.remove("chosen"));
  tile.classList.add("chosen");
  $("query-caption").textContent = `${cameraName(tracklet.camera_id)} · ${tracklet.span_utc} UTC · track ${tracklet.track_id}` +
    ` · ${plural(tracklet.detections, "detection", "detections")}` +
    (tracklet.best_detection_id ? " · keypoints go on its best detection" : "");
  $("tracklet-option").hidden = false;
  $("use-tracklet").checked = true;
  showCrop(tracklet.best_detection_id ? `/api/thumbnails/${encodeURIComponent(tracklet.best_detection_id)}` : tracklet.thumbnail,
    Boolean(tracklet.best_detection_id));
}

function chooseIdentity(identity) {
  if (!state.query || state.query.identityId !== identity.identity_id) clearMarks();
  state.query = {kind: "identity", identityId: identity.identity_id, trackId: null};
  $("upload").value = "";
  document.querySelectorAll(".tile.chosen").forEach((t) => t.classList.remove("chosen"));
  $("query-caption").textContent = `identity ${identity.identity_id} · ` +
    `${plural(identity.tracklets.length, "tracklet", "tracklets")} · ${identity.span_utc} UTC`;
  $("tracklet-option").hidden = true;
  $("use-tracklet").checked = false;
  showCrop(identity.thumbnail, false);
}

function chooseDetection(detection) {
  state.query = {kind: "detection", detectionId: detection.detection_id, cameraId: detection.camera_id,
    trackId: detection.track_id};
  $("upload").value = "";
  document.querySelectorAll(".tile.chosen").forEach((t) => t.classList.remove("chosen"));
  $("query-caption").textContent = `${cameraName(detection.camera_id)} · ${utc(detection.timestamp)} UTC` +
    (detection.track_id ? ` · track ${detection.track_id}` : "");
  $("tracklet-option").hidden = !detection.track_id;
  $("use-tracklet").checked = false;
  showCrop(detection.thumbnail, true);
}

function chooseUpload(file) {
  clearMarks();
  state.query = {kind: "image", file};
  document.querySelectorAll(".tile.chosen").forEach((t) => t.classList.remove("chosen"));
  $("query-caption").textContent = `uploaded ${file.name} (${Math.ceil(file.size / 1024)} KiB)`;
  $("tracklet-option").hidden = true;
  $("use-tracklet").checked = false;
  showCrop(URL.createObjectURL(file), true);
}

// ---- the query crop and its keypoint prompt ----

function showCrop(url, promptable) {
  state.positive = [];
  state.negative = [];
  state.image = null;
  state.promptable = promptable;
  $("query-view").hidden = false;
  $("search").disabled = false;
  const image = new Image();
  image.onload = () => { state.image = image; drawCrop(); };
  image.onerror = () => { drawCrop("the browser cannot show this file"); };
  image.src = url;
  drawCrop("loading…");
}

function viewScale() {
  const image = state.image;
  return Math.min(VIEW_HEIGHT / image.naturalHeight, VIEW_MAX_WIDTH / image.naturalWidth);
}

function drawCrop(note) {
  const canvas = $("query-canvas");
  const context = canvas.getContext("2d");
  if (!state.image) {
    canvas.width = VIEW_MAX_WIDTH / 2;
    canvas.height = VIEW_HEIGHT / 2;
    context.fillStyle = "#e4e7eb";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.fillStyle = "#555";
    context.font = "12px sans-serif";
    context.fillText(note || "", 6, canvas.height / 2, canvas.width - 12);
    updateKeypointCount();
    return;
  }
  const scale = viewScale();
  canvas.width = Math.round(state.image.naturalWidth * scale);
  canvas.height = Math.round(state.image.naturalHeight * scale);
  context.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  context.lineWidth = 2;
  context.font = "bold 11px sans-serif";
  for (const point of state.positive) {
    const [x, y] = [point.x * scale, point.y * scale];
    context.fillStyle = "#1db954";
    context.strokeStyle = "#fff";
    context.beginPath();
    context.arc(x, y, 5, 0, 2 * Math.PI);
    context.fill();
    context.stroke();
    context.fillStyle = "#fff";
    context.fillText(String(point.joint), x + 7, y + 4);
  }
  context.strokeStyle = "#e5383b";
  context.lineWidth = 3;
  for (const point of state.negative) {
    const [x, y] = [point.x * scale, point.y * scale];
    context.beginPath();
    context.moveTo(x - 5, y - 5); context.lineTo(x + 5, y + 5);
    context.moveTo(x + 5, y - 5); context.lineTo(x - 5, y + 5);
    context.stroke();
  }
  updateKeypointCount();
}

function updateKeypointCount() {
  const count = state.positive.length + state.negative.length;
  $("keypoint-count").textContent = count
    ? `${state.positive.length} target, ${state.negative.length} occluder` : "no keypoints";
  $("use-tracklet").disabled = count > 0;
}

function placeKeypoint(event) {
  if (!state.image || !state.promptable || $("prompt-tools").disabled) return;
  const canvas = $("query-canvas");
  const box = canvas.getBoundingClientRect();
  const scale = viewScale() * box.width / canvas.width;
  const x = Math.min(Math.max((event.clientX - box.left) / scale, 0), state.image.naturalWidth - 0.5);
  const y = Math.min(Math.max((event.clientY - box.top) / scale, 0), state.image.naturalHeight - 0.5);
  const mode = document.querySelector('input[name="mode"]:checked').value;
  if (mode === "negative") {
    state.negative.push({x, y});
  } else {
    const select = $("joint");
    const joint = Number(select.value);
    state.positive = state.positive.filter((p) => p.joint !== joint).concat([{joint, x, y}]);
    select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
  }
  drawCrop();
}

function clearKeypoints() {
  state.positive = [];
  state.negative = [];
  $("joint").selectedIndex = 0;
  drawCrop();
}

// ---- search ----

function searchForm() {
  const form = new FormData();
  const query = state.query;
  const prompted = state.positive.length + state.negative.length > 0;
  if (query.kind === "identity") {
    form.append("identity_id", query.identityId);
  } else if (query.kind === "image") {
    form.append("image", query.file, query.file.name);
  } else if (($("use-tracklet").checked || !query.detectionId) && query.trackId && !prompted) {
    form.append("track_id", query.trackId);
  } else {
    form.append("detection_id", query.detectionId);
  }
  if (prompted) {
    form.append("keypoints", JSON.stringify({
      positive: state.positive.map((p) => ({joint: p.joint, x: p.x, y: p.y})),
      negative: state.negative.map((p) => ({x: p.x, y: p.y})),
    }));
  }
  const cameras = ticked("camera");
  if (cameras.length < state.info.cameras.length) {
    if (cameras.length === 0) form.append("cameras", "");
    cameras.forEach((camera) => form.append("cameras", camera));
  }
  ticked("part").forEach((part) => form.append("parts", part));
  for (const name of ["since", "until"]) if ($(name).value) form.append(name, $(name).value);
  form.append("min_visibility", $("min-visibility").value);
  form.append("k", $("k").value);
  form.append("rerank", String($("rerank").checked));
  form.append("global_only", String($("global-only").checked));
  form.append("same_camera", String($("same-camera").checked));
  form.append("detections", String($("detections").checked));
  for (const [id, {mark}] of state.marks) form.append(mark, id);
  if (state.case) form.append("case", state.case);
  return form;
}

async function runSearch() {
  if (!state.query) return;
  showError("");
  $("search").disabled = true;
  $("status").textContent = "searching…";
  try {
    const form = searchForm();
    const answer = await api("/api/search", {method: "POST", body: form});
    state.searched = form.get("track_id") || form.get("detection_id");
    renderResults(answer);
    if (answer.case) loadCases();
  } catch (err) {
    $("status").textContent = "";
    $("results").replaceChildren();
    showError(err.message);
  } finally {
    $("search").disabled = false;
    $("results-panel").scrollIntoView({block: "start"});
  }
}

function describeQuery(query) {
  if (query.kind === "tracklet") return `tracklet ${query.track_id}`;
  if (query.kind === "identity") return `identity ${query.identity_id} (its ${plural(query.own, "tracklet", "tracklets")} first)`;
  const what = query.kind === "image" ? `uploaded image ${query.width}×${query.height}` : `detection ${query.detection_id}`;
  const prompt = query.positive || query.negative
    ? `, re-embedded with ${query.positive} target and ${query.negative} occluder keypoints` : "";
  return what + prompt;
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function renderResults(answer) {
  state.globalOnly = answer.global_only;
  const byPerson = answer.by === "person";
  const parts = answer.parts ? ` · parts: ${answer.parts.join(", ")}` : "";
  const found = byPerson ? plural(answer.count, "person", "people") : plural(answer.count, "detection", "detections");
  const far = answer.no_close_match_above;
  const results = byPerson ? answer.people : answer.hits;
  const isClose = (result) => far === null || (result.distance !== null && result.distance <= far);
  const close = results.filter(isClose).length;
  const calibrated = far === null ? "" : close
    ? ` · ${close} within the model's calibrated distance ${far.toFixed(3)}`
    : ` · no close match: none within the model's calibrated distance ${far.toFixed(3)}`;
  const sent = [...state.marks.values()];
  const confirmed = sent.filter((m) => m.mark === "same").length;
  const marks = sent.length ? ` · with ${confirmed} confirmed and ${sent.length - confirmed} rejected (not shown again)` : "";
  const recorded = answer.case ? ` · recorded in case “${answer.case}”` : "";
  $("status").textContent = answer.count
    ? `${found}, best first, for ${describeQuery(answer.query)}${marks}${parts}${calibrated}${recorded} · ${Math.round(answer.elapsed_ms)} ms`
    : `no results for ${describeQuery(answer.query)}${marks}: widen the filters`;
  const list = element("div", {class: "ranked", "data-by": answer.by});
  const cards = results.map(byPerson ? personCard : hitCard);
  const own = answer.query.own || 0;
  cards.forEach((card, i) => {
    if (i < own) card.classList.add("own");
    else if (!isClose(results[i])) markFar(card, far);
  });
  list.append(...cards);
  $("results").replaceChildren(list);
  showMarks();
}

function markFar(card, far) {
  card.classList.add("far");
  card.querySelector("figcaption").prepend(element("div", {class: "no-match",
    title: `distance above ${far.toFixed(3)}, the model's calibrated threshold`}, "no close match"));
}

function formatDistance(distance) {
  return distance === null ? "–" : distance.toFixed(3);
}

function personCard(person) {
  const card = resultCard(person.best, "hit person", [
    element("div", {class: "time", title: "seen from … to (UTC)"}, `${person.span_utc} UTC`),
    element("div", {class: "matched", title: "detections of this tracklet among the closest candidates"},
      `${person.matched} of ${plural(person.detections, "detection", "detections")} matched`),
    element("div", {class: "track"}, person.track_id ? `track ${person.track_id}` : "no track"),
  ]);
  card.dataset.trackId = person.track_id || "";
  return card;
}

function hitCard(hit) {
  return resultCard(hit, "hit", [element("div", {class: "time"}, `${hit.time_utc} UTC`)]);
}

function resultCard(hit, classes, lines) {
  const card = element("figure", {class: classes, "data-detection-id": hit.detection_id, "data-camera": hit.camera_id,
    "data-rank": String(hit.rank), title: partDetails(hit)});
  card.append(element("img", {src: hit.thumbnail, alt: hit.detection_id, loading: "lazy"}));
  const caption = element("figcaption");
  caption.append(element("div", {class: "rank"}, `#${hit.rank}`));
  const measure = state.globalOnly ? "cosine distance of the global vectors" : "KPR distance";
  caption.append(element("div", {class: "distance", title: measure}, formatDistance(hit.distance)));
  caption.append(element("div", {class: "camera", title: hit.camera_id}, cameraName(hit.camera_id)), ...lines);
  if (hit.identity_id) caption.append(identityLink(hit.identity_id));
  if (hit.visibility) {
    const visibility = hit.query_visibility === null ? 0 : hit.query_visibility;
    const bar = element("div", {class: "visibility", title: `visibility ${visibility.toFixed(2)}`});
    const fill = element("div", {class: "fill"});
    fill.style.width = `${Math.round(visibility * 100)}%`;
    bar.append(fill);
    caption.append(bar, partBars(hit));
  }
  caption.append(element("div", {class: "mark-label"}),
    markButtons(hit, [["same", "✓ same"], ["not", "✗ not"]]));
  card.append(caption);
  card.addEventListener("click", () => openHit(hit));
  showCardMark(card);
  return card;
}

// ---- marks: "same person" / "not this person", sent with every search and recorded in the case ----

function markButtons(hit, labels) {
  const box = element("div", {class: "mark-buttons"});
  for (const [mark, text] of labels) {
    const button = element("button", {type: "button", class: "mark", "data-mark": mark, "aria-pressed": "false",
      title: mark === "same" ? "the same person as the query" : "not this person"}, text);
    button.addEventListener("click", (event) => { event.stopPropagation(); toggleMark(hit, mark); });
    box.append(button);
  }
  return box;
}

function showCardMark(card) {
  const mark = state.marks.get(card.dataset.detectionId)?.mark;
  card.classList.toggle("marked-same", mark === "same");
  card.classList.toggle("marked-not", mark === "not");
  card.querySelector(".mark-label").textContent = mark === "same" ? "same person" : mark === "not" ? "not this person" : "";
  card.querySelectorAll("button.mark").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.mark === mark)));
}

async function toggleMark(hit, mark) {
  const was = state.marks.get(hit.detection_id)?.mark;
  if (was === mark) state.marks.delete(hit.detection_id);
  else state.marks.set(hit.detection_id, {mark, hit});
  showMarks();
  const change = was === mark ? {cleared: [hit.detection_id]} : {[mark]: [hit.detection_id]};
  await recordMarks(change);
}

async function recordMarks(change) {
  if (!state.case) return;
  const form = new FormData();
  form.append("case", state.case);
  for (const [kind, ids] of Object.entries(change)) ids.forEach((id) => form.append(kind, id));
  try {
    await api("/api/case/marks", {method: "POST", body: form});
    $("case-status").textContent = `marks recorded in case “${state.case}”`;
  } catch (err) {
    showError(`the marks were not recorded: ${err.message}`);
  }
}

function clearMarks() {
  if (!state.marks.size) return;
  const ids = [...state.marks.keys()];
  state.marks.clear();
  showMarks();
  recordMarks({cleared: ids});
}

function showMarks() {
  document.querySelectorAll("figure.hit").forEach(showCardMark);
  if (state.hit) {
    const mark = state.marks.get(state.hit.detection_id)?.mark;
    for (const id of ["hit-same", "hit-not"]) $(id).setAttribute("aria-pressed", String($(id).dataset.mark === mark));
  }
  const marks = [...state.marks.values()];
  const confirmed = marks.filter((m) => m.mark === "same");
  $("marks-panel").hidden = !state.searched && !marks.length;
  $("marks-summary").textContent = marks.length
    ? `confirmed: ${confirmed.length} · rejected: ${marks.length - confirmed.length}`
    : "no marks yet: mark results “same” or “not”, then search again";
  $("journey").disabled = !state.searched;
  $("clear-marks").disabled = !marks.length;
  $("confirmed").replaceChildren(...confirmed.map(({hit}) => {
    const figure = element("figure", {"data-detection-id": hit.detection_id,
      title: `${cameraName(hit.camera_id)} · ${hit.time_utc} UTC · ${hit.detection_id}`});
    const undo = element("button", {type: "button", title: "take back"}, "×");
    undo.addEventListener("click", () => toggleMark(hit, "same"));
    figure.append(element("img", {src: hit.thumbnail, alt: hit.detection_id}), undo,
      element("figcaption", {}, `${cameraName(hit.camera_id)} ${hit.time_utc.slice(11)}`));
    return figure;
  }));
}

function partBars(hit) {
  const strip = element("div", {class: "parts"});
  (hit.visibility || []).forEach((value) => {
    const bar = element("span");
    bar.style.height = `${Math.max(1, Math.round(value * 14))}px`;
    strip.append(bar);
  });
  return strip;
}

function partDetails(hit) {
  const names = state.info.parts;
  const lines = (hit.visibility || []).map((value, i) => {
    const distance = hit.part_distances ? hit.part_distances[i] : null;
    return `${names[i] || `part ${i + 1}`}: visibility ${value.toFixed(2)}, distance ${formatDistance(distance)}`;
  });
  return [`${hit.camera_id} · ${hit.time_utc} UTC · frame ${hit.frame_index}`, ...lines].join("\n");
}

// ---- a hit's context: its frame with the box, the seconds around it, where and when, provenance ----

async function openHit(hit) {
  closeHit();
  state.hit = hit;
  $("hit-panel").hidden = false;
  $("hit-title").textContent = `#${hit.rank} · ${cameraName(hit.camera_id)}`;
  showMarks();
  $("hit-when").textContent = `${hit.time_utc} UTC · frame ${hit.frame_index}`;
  $("hit-clip-caption").textContent = "clip: decoding…";
  const path = `/api/hits/${encodeURIComponent(hit.detection_id)}`;
  try {
    const about = await api(path);
    $("hit-title").textContent = `#${hit.rank} · ${about.camera_name}`;
    $("hit-when").textContent = about.timezone === "UTC" ? about.time_utc : `${about.time_local} · ${about.time_utc}`;
    const list = $("hit-provenance-list");
    for (const [name, value] of Object.entries(about.provenance)) {
      list.append(element("dt", {}, name.replaceAll("_", " ")),
        element("dd", {}, Array.isArray(value) ? value.map((v) => v.toFixed(1)).join(", ") : String(value ?? "–")));
    }
    const [frame, clip] = await Promise.all([fetchImage(`${path}/frame`), api(`${path}/clip`)]);
    if (state.hit !== hit) return;
    $("hit-frame").src = frame;
    playClip(clip);
  } catch (err) {
    if (state.hit !== hit) return;
    $("hit-clip-caption").textContent = "clip: not available";
    $("hit-error").textContent = err.message;
    $("hit-error").hidden = false;
  }
}

async function fetchOk(path) {
  const response = await fetch(withCase(path)).catch((err) => { throw new Error(`cannot reach the server (${err.message})`); });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `${response.status} ${response.statusText}`);
  }
  return response;
}

async function fetchImage(path) {
  return URL.createObjectURL(await (await fetchOk(path)).blob());
}

function playClip(clip) {
  let shown = 0;
  const seconds = (clip.frames.length - 1) / clip.fps;
  $("hit-clip-caption").textContent = `clip: ${seconds.toFixed(1)} s around the hit at ${clip.fps} frames/s`;
  const step = () => {
    $("hit-clip").src = clip.frames[shown].src;
    shown = (shown + 1) % clip.frames.length;
  };
  step();
  state.clipTimer = setInterval(step, 1000 / clip.fps);
}

function closeHit() {
  clearInterval(state.clipTimer);
  state.hit = null;
  $("hit-panel").hidden = true;
  $("hit-error").hidden = true;
  for (const id of ["hit-frame", "hit-clip"]) {
    if ($(id).src.startsWith("blob:")) URL.revokeObjectURL($(id).src);
    $(id).removeAttribute("src");
  }
  $("hit-provenance-list").replaceChildren();
}

function queryWithHit() {
  const hit = state.hit;
  closeHit();
  chooseDetection({detection_id: hit.detection_id, camera_id: hit.camera_id, timestamp: hit.timestamp,
    track_id: hit.track_id, thumbnail: hit.thumbnail});
  $("query-panel").scrollIntoView({block: "start"});
}

// ---- the journey: the query and the confirmed hits in time order, on a timeline and (with positions) a map ----

async function openJourney() {
  const params = new URLSearchParams({query: state.searched});
  for (const [id, {mark}] of state.marks) if (mark === "same") params.append("same", id);
  $("journey-panel").hidden = false;
  $("journey-error").hidden = true;
  $("journey-summary").textContent = "following the person…";
  try {
    const journey = await api(`/api/journey?${params}`);
    const cameras = new Set(journey.sightings.map((s) => s.camera_id)).size;
    const flagged = journey.transits.filter((t) => t.flagged).length;
    $("journey-summary").textContent = `${plural(journey.sightings.length, "sighting", "sightings")} on ` +
      `${plural(cameras, "camera", "cameras")}: ${journey.chosen}` + (flagged ? ` · ${flagged} transit(s) flagged` : "");
    $("journey-timeline").src = svgUrl(journey.timeline_svg);
    $("journey-map").hidden = !journey.map_svg;
    if (journey.map_svg) $("journey-map").src = svgUrl(journey.map_svg);
    $("journey-lines").textContent = journey.lines.join("\n");
  } catch (err) {
    $("journey-summary").textContent = "";
    $("journey-error").textContent = err.message;
    $("journey-error").hidden = false;
  }
}

function svgUrl(svg) {
  // An SVG shown as an image does not see the page's styles: it gets the page's font here.
  const styled = svg.replace(/^<svg[^>]*>/, (open) => `${open}<style>text{font-family:system-ui,sans-serif}</style>`);
  return URL.createObjectURL(new Blob([styled], {type: "image/svg+xml"}));
}

function closeJourney() {
  $("journey-panel").hidden = true;
  for (const id of ["journey-timeline", "journey-map"]) {
    if ($(id).src.startsWith("blob:")) URL.revokeObjectURL($(id).src);
    $(id).removeAttribute("src");
  }
  $("journey-lines").textContent = "";
}

// ---- people: the store's global identities, one identity's page, hand merges and splits ----

function identityLink(identityId) {
  const link = element("a", {href: "#", class: "identity", "data-identity-id": identityId,
    title: "open this person's identity page"}, identityId);
  link.addEventListener("click", (event) => { event.preventDefault(); event.stopPropagation(); openIdentity(identityId); });
  return link;
}

async function loadPeoplePage() {
  const params = new URLSearchParams({limit: String(PAGE_SIZE), offset: String(state.peopleOffset)});
  if ($("people-camera").value) params.set("camera", $("people-camera").value);
  try {
    const page = await api(`/api/identities?${params}`);
    $("people-panel").hidden = !page.linked;
    showGridPage("people", page, page.identities.map(personTile), state.peopleOffset, "no people");
  } catch (err) {
    showError(err.message);
  }
}

function personTile(identity) {
  const cameras = identity.cameras.map(cameraName).join(", ");
  const tile = element("button", {type: "button", class: "tile", "data-identity-id": identity.identity_id,
    title: `${identity.identity_id} · ${cameras} · ${identity.span_utc} UTC`});
  tile.append(element("img", {src: identity.thumbnail, alt: identity.identity_id, loading: "lazy"}),
    element("span", {class: "tile-camera", title: cameras}, cameras),
    element("span", {class: "tile-time"}, utc(identity.first_seen).slice(5, 16)),
    element("span", {class: "tile-size"}, plural(identity.tracklets, "tracklet", "tracklets")));
  tile.addEventListener("click", () => openIdentity(identity.identity_id));
  return tile;
}

function identityError(message) {
  $("identity-error").textContent = message;
  $("identity-error").hidden = !message;
}

async function openIdentity(identityId) {
  if (state.hit) closeHit();
  $("identity-panel").hidden = false;
  $("identity-status").textContent = "";
  identityError("");
  try {
    showIdentity(await api(`/api/identities/${encodeURIComponent(identityId)}`));
  } catch (err) {
    identityError(err.message);
  }
}

function showIdentity(identity) {
  state.identity = identity;
  $("identity-title").textContent = `Identity ${identity.identity_id}`;
  $("identity-thumb").src = identity.thumbnail;
  $("identity-summary").textContent = `${plural(identity.tracklets.length, "tracklet", "tracklets")} on ` +
    `${plural(identity.cameras.length, "camera", "cameras")} · ${identity.span_utc} UTC · best tracklet ` +
    `${identity.best_track_id} · linked ${identity.linked_utc} UTC by model ${identity.model_id}`;
  $("identity-cameras").tBodies[0].replaceChildren(...identity.cameras.map((c) => {
    const row = element("tr");
    row.append(element("td", {title: c.camera_id}, cameraName(c.camera_id)), element("td", {}, c.first_utc),
      element("td", {}, c.last_utc));
    return row;
  }));
  $("identity-tracklets").replaceChildren(...identity.tracklets.map(identityTracklet));
  $("identity-split").disabled = true;
  $("identity-history").replaceChildren(...identity.history.map((event) => element("li", {}, historyText(event))));
  loadIdentityJourney(identity);
}

function identityTracklet(tracklet) {
  const tile = element("label", {class: "tile", "data-track-id": tracklet.track_id,
    title: `${tracklet.camera_id} · ${tracklet.span_utc} UTC · track ${tracklet.track_id}`});
  const tick = element("input", {type: "checkbox", value: tracklet.track_id, "aria-label": `split off ${tracklet.track_id}`});
  tick.addEventListener("change", () => {
    tile.classList.toggle("ticked", tick.checked);
    $("identity-split").disabled = !$("identity-tracklets").querySelector("input:checked");
  });
  tile.append(element("img", {src: tracklet.thumbnail, alt: tracklet.track_id, loading: "lazy"}),
    element("span", {class: "tile-camera", title: cameraName(tracklet.camera_id)}, cameraName(tracklet.camera_id)),
    element("span", {class: "tile-time"}, tracklet.span_utc),
    element("span", {class: "tile-size", title: "link confidence"}, `confidence ${tracklet.confidence.toFixed(2)}`), tick);
  return tile;
}

function historyText(event) {
  const who = event.user ? ` by ${event.user}` : "";
  const note = event.note ? `: ${event.note}` : "";
  if (event.by === "hand" && event.change === "merge") return `${event.at_utc} UTC · merged by hand${who}` +
    (event.from ? ` from ${event.from.join(", ")}` : "") + note;
  if (event.by === "hand") return `${event.at_utc} UTC · split by hand${who}` +
    (event.into ? `, part into ${event.into}` : event.from ? ` off ${event.from}` : "") + note;
  const moved = event.joined === undefined ? "" : `, ${event.joined} joined, ${event.left} left`;
  return `${event.at_utc} UTC · ${event.change} by linking run ${String(event.run_id).slice(0, 8)} ` +
    `(${plural(event.tracklets, "tracklet", "tracklets")}${moved})`;
}

async function loadIdentityJourney(identity) {
  const params = new URLSearchParams({query: identity.journey.query});
  identity.journey.same.forEach((track) => params.append("same", track));
  $("identity-journey-summary").textContent = "following the person…";
  try {
    const journey = await api(`/api/journey?${params}`);
    if (state.identity !== identity) return;
    const cameras = new Set(journey.sightings.map((s) => s.camera_id)).size;
    const flagged = journey.transits.filter((t) => t.flagged).length;
    $("identity-journey-summary").textContent = `${plural(journey.sightings.length, "sighting", "sightings")} on ` +
      `${plural(cameras, "camera", "cameras")}` + (flagged ? ` · ${flagged} transit(s) flagged` : "");
    $("identity-journey-timeline").src = svgUrl(journey.timeline_svg);
    $("identity-journey-lines").textContent = journey.lines.join("\n");
  } catch (err) {
    $("identity-journey-summary").textContent = "";
    identityError(err.message);
  }
}

async function editIdentity(path, form, done) {
  identityError("");
  try {
    done(await api(path, {method: "POST", body: form}));
    loadPeoplePage();
  } catch (err) {
    identityError(err.message);
  }
}

function splitIdentity() {
  const identity = state.identity;
  const ticked = [...$("identity-tracklets").querySelectorAll("input:checked")].map((i) => i.value);
  const form = new FormData();
  ticked.forEach((track) => form.append("track_id", track));
  editIdentity(`/api/identities/${encodeURIComponent(identity.identity_id)}/split`, form, ({kept, new: made}) => {
    showIdentity(kept);
    $("identity-status").replaceChildren(`split ${plural(ticked.length, "tracklet", "tracklets")} off into `,
      identityLink(made.identity_id));
  });
}

function mergeIdentity() {
  const other = $("merge-with").value.trim();
  if (!other) { identityError("give the id of the identity to merge into this one"); return; }
  const form = new FormData();
  [state.identity.identity_id, other].forEach((id) => form.append("identity_id", id));
  editIdentity("/api/identities/merge", form, (merged) => {
    showIdentity(merged);
    $("merge-with").value = "";
    $("identity-status").textContent = `merged ${other} into this identity`;
  });
}

function searchIdentity() {
  const identity = state.identity;
  closeIdentity();
  chooseIdentity(identity);
  runSearch();
}

function closeIdentity() {
  $("identity-panel").hidden = true;
  if ($("identity-journey-timeline").src.startsWith("blob:")) URL.revokeObjectURL($("identity-journey-timeline").src);
  $("identity-journey-timeline").removeAttribute("src");
  state.identity = null;
}

// ---- cases: record into one, reopen one, export its evidence bundle ----

function setCase(name) {
  state.case = name.trim();
  $("case-export").disabled = !state.case;
  $("case-status").textContent = state.case ? `searches and marks are recorded in case “${state.case}”` : "";
}

async function loadCases() {
  try {
    const {cases} = await api("/api/cases");
    const chosen = $("case-list").value;
    $("case-list").replaceChildren(element("option", {value: ""}, cases.length ? "cases…" : "no cases yet"),
      ...cases.map((c) => element("option", {value: c.name},
        `${c.name} · ${plural(c.searches, "search", "searches")} · last ${c.last_utc} UTC`)));
    $("case-list").value = cases.some((c) => c.name === chosen) ? chosen : "";
    $("case-open").disabled = !$("case-list").value;
  } catch (err) {
    showError(err.message);
  }
}

async function reopenCase() {
  const name = $("case-list").value;
  if (!name) return;
  showError("");
  try {
    const opened = await api(`/api/case?${new URLSearchParams({case: name})}`);
    $("case-name").value = opened.case;
    setCase(opened.case);
    state.marks = new Map(opened.marks.map((m) => [m.detection_id, {mark: m.mark,
      hit: {...m, thumbnail: `/api/thumbnails/${encodeURIComponent(m.detection_id)}`}}]));
    const query = opened.query;
    if (!query || query.image) {
      state.searched = null;
      showMarks();
      $("case-status").textContent = `reopened case “${opened.case}”: ` +
        (query ? "its last query was an uploaded image: upload it again to search" : "no search yet");
      return;
    }
    restoreFilters(query);
    if (query.identity_id) {
      state.query = {kind: "identity", identityId: query.identity_id};  // the case's own query: its marks stay
      chooseIdentity(await api(`/api/identities/${encodeURIComponent(query.identity_id)}`));
    } else {
      restoreQuery(query);
    }
    $("case-status").textContent = `reopened case “${opened.case}”: its last search, filters and marks`;
    await runSearch();
  } catch (err) {
    showError(err.message);
  }
}

function restoreFilters(query) {
  const cameras = query.cameras;
  document.querySelectorAll('input[name="camera"]').forEach((i) => { i.checked = !cameras || cameras.includes(i.value); });
  document.querySelectorAll('input[name="part"]').forEach((i) => { i.checked = query.parts.includes(i.value); });
  for (const name of ["since", "until"]) $(name).value = query[name] || "";
  $("min-visibility").value = String(query.min_visibility);
  $("min-visibility-value").textContent = Number(query.min_visibility).toFixed(2);
  $("k").value = String(query.k);
  $("rerank").checked = query.rerank;
  $("same-camera").checked = query.same_camera;
  $("detections").checked = query.detections;
  if (!state.info.global_model) $("global-only").checked = query.global_only;
}

function restoreQuery(query) {
  const marks = state.marks;
  if (query.track_id) {
    state.query = {kind: "detection", detectionId: null, cameraId: null, trackId: query.track_id};
    $("query-caption").textContent = `track ${query.track_id} (from the case)`;
    $("tracklet-option").hidden = false;
    $("use-tracklet").checked = true;
    markQueryTile();
    showCrop(`/api/tracklets/${encodeURIComponent(query.track_id)}/thumbnail`, false);
  } else {
    chooseDetection({detection_id: query.detection_id, camera_id: null, timestamp: null, track_id: null,
      thumbnail: `/api/thumbnails/${encodeURIComponent(query.detection_id)}`});
    $("query-caption").textContent = `detection ${query.detection_id} (from the case)`;
  }
  state.marks = marks;
}

async function exportCase() {
  if (!state.case) return;
  showError("");
  $("case-status").textContent = "exporting: drawing every result's frame…";
  try {
    const response = await fetchOk("/api/case/export");
    const name = (response.headers.get("content-disposition") || "").match(/filename="([^"]+)"/)?.[1] || "case.zip";
    const blob = await response.blob();
    const link = element("a", {href: URL.createObjectURL(blob), download: name});
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    $("case-status").textContent = `exported ${name} (${Math.ceil(blob.size / 1024)} KiB): open its index.html; manifest.json lists every file's SHA-256`;
  } catch (err) {
    $("case-status").textContent = "";
    showError(`export failed: ${err.message}`);
  }
}

// ---- wiring ----

function wire() {
  $("pick-camera").addEventListener("change", () => { state.pickOffset = 0; loadPickPage(); });
  $("pick-since").addEventListener("change", () => { state.pickOffset = 0; loadPickPage(); });
  $("hit-close").addEventListener("click", closeHit);
  $("hit-query").addEventListener("click", queryWithHit);
  $("hit-panel").addEventListener("click", (event) => { if (event.target === $("hit-panel")) closeHit(); });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (state.hit) closeHit();
    else if (!$("journey-panel").hidden) closeJourney();
    else closeIdentity();
  });
  for (const id of ["hit-same", "hit-not"]) $(id).addEventListener("click", () => toggleMark(state.hit, $(id).dataset.mark));
  $("search-again").addEventListener("click", runSearch);
  $("journey").addEventListener("click", openJourney);
  $("clear-marks").addEventListener("click", clearMarks);
  $("journey-close").addEventListener("click", closeJourney);
  $("journey-panel").addEventListener("click", (event) => { if (event.target === $("journey-panel")) closeJourney(); });
  $("case-name").addEventListener("change", () => setCase($("case-name").value));
  $("case-list").addEventListener("change", () => { $("case-open").disabled = !$("case-list").value; });
  $("case-open").addEventListener("click", reopenCase);
  $("case-export").addEventListener("click", exportCase);
  $("pick-prev").addEventListener("click", () => { state.pickOffset = Math.max(0, state.pickOffset - PAGE_SIZE); loadPickPage(); });
  $("pick-next").addEventListener("click", () => { state.pickOffset += PAGE_SIZE; loadPickPage(); });
  $("upload").addEventListener("change", (event) => { if (event.target.files.length) chooseUpload(event.target.files[0]); });
  $("query-canvas").addEventListener("click", placeKeypoint);
  $("clear-keypoints").addEventListener("click", clearKeypoints);
  $("min-visibility").addEventListener("input", () => {
    $("min-visibility-value").textContent = Number($("min-visibility").value).toFixed(2);
  });
  $("search").addEventListener("click", runSearch);
  $("people-camera").addEventListener("change", () => { state.peopleOffset = 0; loadPeoplePage(); });
  $("people-prev").addEventListener("click", () => { state.peopleOffset = Math.max(0, state.peopleOffset - PAGE_SIZE); loadPeoplePage(); });
  $("people-next").addEventListener("click", () => { state.peopleOffset += PAGE_SIZE; loadPeoplePage(); });
  $("identity-close").addEventListener("click", closeIdentity);
  $("identity-panel").addEventListener("click", (event) => { if (event.target === $("identity-panel")) closeIdentity(); });
  $("identity-search").addEventListener("click", searchIdentity);
  $("identity-split").addEventListener("click", splitIdentity);
  $("identity-merge").addEventListener("click", mergeIdentity);
}

async function start() {
  wire();
  try {
    await loadInfo();
    await Promise.all([loadPickPage(), loadCases(), loadPeoplePage()]);
  } catch (err) {
    showError(err.message);
  }
}

start();
