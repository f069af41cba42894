// The web page of hbdnet serve: submit a scene, follow the jobs, see the bridges on a map.
// Plain JavaScript over the service's own JSON API (the same routes a client uses); no build step.
// The API key lives in this tab's sessionStorage and travels in the X-API-Key header only: images and
// downloads are fetched with it and handed to the page as blob URLs, so it never appears in a URL.
"use strict";

const config = JSON.parse(document.getElementById("hbdnet-config").textContent);
const KEY_HEADER = "X-API-Key";
const KEY_STORE = "hbdnet-api-key";
const ACTIVE = new Set(["accepted", "running"]);
const STATE_WORDS = {
  accepted: "queued", running: "running", successful: "done", failed: "failed", dismissed: "cancelled",
};
const BRIDGE_STYLE = { color: config.colour, weight: 2, fill: true, fillOpacity: 0, className: "bridge" };
const FORMATS = [["gpkg", "GeoPackage"], ["geojson", "GeoJSON"], ["fgb", "FlatGeobuf"], ["qml", "QGIS style (QML)"]];

const $ = (id) => document.getElementById(id);
let map = null;
let mapLayers = null;
let blobUrls = [];
let shownJob = null;
let upload = null;
let pollTimer = null;

// -- talking to the service --------------------------------------------------------------------

class KeyNeeded extends Error {}

function apiKey() { return sessionStorage.getItem(KEY_STORE); }

function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, [KEY_HEADER]: key } : headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: withKey(options.headers) });
  if (response.status === 401) {
    askForKey(apiKey() ? "That API key was refused." : "This server needs an API key.");
    throw new KeyNeeded();
  }
  return response;
}

async function reason(response) {
  try {
    const doc = await response.json();
    return doc.detail || doc.title || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// -- the API key ---------------------------------------------------------------------------------

function askForKey(message) {
  $("key-panel").hidden = false;
  $("key-error").textContent = message || "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key-input").value.trim());
  $("key-input").value = "";
  try {
    const response = await api("jobs?limit=1");
    if (!response.ok) throw new Error(await reason(response));
    $("key-panel").hidden = true;
    $("key-change").hidden = false;
    refreshJobs();
  } catch (error) {
    if (!(error instanceof KeyNeeded)) $("key-error").textContent = error.message;
  }
});

$("key-change").addEventListener("click", () => askForKey(""));

// -- submitting a scene -------------------------------------------------------------------------

const fileInput = $("file-input");
const dropZone = $("drop-zone");

function showFileName() {
  $("file-name").textContent = fileInput.files.length ? fileInput.files[0].name : "";
}

fileInput.addEventListener("change", showFileName);
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("over"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  if (event.dataTransfer.files.length) {
    fileInput.files = event.dataTransfer.files;
    showFileName();
  }
});

function submitError(text) { $("submit-error").textContent = text || ""; }

function options() {
  const opts = { format: $("format-input").value };
  const score = $("score-input").value.trim();
  if (score !== "") opts.score_threshold = score;
  const aoi = $("aoi-input").value.trim();
  if (aoi !== "") opts.aoi = aoi;
  return opts;
}

$("submit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submitError("");
  const file = fileInput.files[0];
  const href = $("href-input").value.trim();
  if (!file && !href) return submitError("Choose or drop a GeoTIFF, or give its URL.");
  if (file) uploadScene(file); else submitHref(href);
});

function uploadScene(file) {
  // XMLHttpRequest, not fetch: it reports upload progress and can be aborted.
  const form = new FormData();
  form.append("file", file, file.name);
  for (const [name, value] of Object.entries(options())) form.append(name, value);
  const xhr = new XMLHttpRequest();
  upload = xhr;
  xhr.open("POST", "jobs");
  const key = apiKey();
  if (key) xhr.setRequestHeader(KEY_HEADER, key);
  $("upload").hidden = false;
  $("submit-button").disabled = true;
  $("upload-progress").value = 0;
  $("upload-text").textContent = `uploading ${file.name}`;
  xhr.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    $("upload-progress").value = event.loaded / event.total;
    $("upload-text").textContent =
      `uploading ${file.name}: ${(event.loaded / 2 ** 20).toFixed(1)} of ${(event.total / 2 ** 20).toFixed(1)} MB`;
  });
  const done = (message) => {
    upload = null;
    $("upload").hidden = true;
    $("submit-button").disabled = false;
    submitError(message);
  };
  xhr.addEventListener("load", () => {
    if (xhr.status === 401) { done(""); askForKey("That API key was refused."); return; }
    if (xhr.status !== 202) {
      let text = `${xhr.status} ${xhr.statusText}`;
      try { text = JSON.parse(xhr.responseText).detail || text; } catch { /* not JSON */ }
      done(text);
      return;
    }
    done("");
    fileInput.value = "";
    showFileName();
    refreshJobs();
  });
  xhr.addEventListener("error", () => done("The upload failed: the server did not answer."));
  xhr.addEventListener("abort", () => done("Upload aborted."));
  xhr.send(form);
}

$("upload-abort").addEventListener("click", () => { if (upload) upload.abort(); });

async function submitHref(href) {
  const body = { href, ...options() };
  if (body.score_threshold !== undefined) body.score_threshold = Number(body.score_threshold);
  try {
    const response = await api("jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (response.status !== 202) return submitError(await reason(response));
    $("href-input").value = "";
    refreshJobs();
  } catch (error) {
    if (!(error instanceof KeyNeeded)) submitError(error.message);
  }
}

// -- the job list ------------------------------------------------------------------------------

function seconds(text) { return text ? Date.parse(text) / 1000 : null; }

function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function elapsedAndLeft(job) {
  const now = Date.now() / 1000;
  const started = seconds(job.started);
  const estimated = job.timings ? job.timings.estimated : undefined;
  if (job.status === "accepted") return ["", estimated];
  if (job.status === "running" && started !== null) {
    const elapsed = now - started;
    const w = job.windows;
    if (w && w.done > 0) return [elapsed, (elapsed * (w.total - w.done)) / w.done];
    return [elapsed, estimated !== undefined ? estimated - elapsed : undefined];
  }
  const run = job.timings && job.timings.run !== undefined ? job.timings.run
    : started !== null && job.finished ? seconds(job.finished) - started : undefined;
  return [run, undefined];
}

function jobRow(job) {
  const row = element("tr", null, { "data-job": job.jobID, "data-status": job.status });
  row.append(element("td", job.scene || job.jobID));
  row.append(element("td", STATE_WORDS[job.status] || job.status, { class: "state" }));
  const windows = element("td", null, { class: "windows" });
  if (job.windows) {
    const bar = element("progress", null, { max: job.windows.total, value: job.windows.done });
    windows.append(bar, ` ${job.windows.done} / ${job.windows.total}`);
  }
  row.append(windows);
  const [elapsed, left] = elapsedAndLeft(job);
  row.append(element("td", duration(elapsed)), element("td", ACTIVE.has(job.status) ? duration(left) : ""));
  const actions = element("td");
  if (ACTIVE.has(job.status)) {
    const cancel = element("button", "Cancel", { type: "button", class: "cancel" });
    cancel.addEventListener("click", () => cancelJob(job.jobID));
    actions.append(cancel);
  }
  if (job.status === "successful" && !job.expired) {
    const open = element("button", `Map (${job.detections} bridge${job.detections === 1 ? "" : "s"})`,
      { type: "button", class: "open" });
    open.addEventListener("click", () => showResult(job));
    actions.append(open);
  }
  row.append(actions);
  const rows = [row];
  if (job.status === "failed" || job.expired) {
    const why = element("tr", null, { "data-reason-of": job.jobID });
    why.append(element("td"), element("td", job.message || "", { colspan: 5, class: "reason" }));
    rows.push(why);
  }
  return rows;
}

async function refreshJobs() {
  clearTimeout(pollTimer);
  let busy = upload !== null;
  try {
    const response = await api("jobs?limit=50");
    if (!response.ok) throw new Error(await reason(response));
    const { jobs } = await response.json();
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren(...jobs.flatMap(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
    busy = busy || jobs.some((job) => ACTIVE.has(job.status));
  } catch (error) {
    if (error instanceof KeyNeeded) return; // polling resumes once a key is given
    $("jobs-empty").hidden = false;
    $("jobs-empty").textContent = `The job list is not available: ${error.message}`;
  }
  pollTimer = setTimeout(refreshJobs, busy ? 1000 : 5000);
}

async function cancelJob(id) {
  try {
    const response = await api(`jobs/${id}`, { method: "DELETE" });
    if (!response.ok) submitError(await reason(response));
  } catch (error) {
    if (!(error instanceof KeyNeeded)) submitError(error.message);
  }
  if (shownJob === id) $("result-panel").hidden = true;
  refreshJobs();
}

// -- a finished job on the map ------------------------------------------------------------------

function ensureMap() {
  if (map) return;
  map = L.map("map", { maxZoom: 22, zoomSnap: 0.25 });
  if (config.basemap) {
    L.tileLayer(config.basemap, { maxZoom: 22, maxNativeZoom: 19, attribution: config.basemapAttribution || "" })
      .addTo(map);
  }
  mapLayers = L.layerGroup().addTo(map);
}

function number(value, digits) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

function popup(properties) {
  const list = element("dl", null, { class: "popup" });
  for (const [label, value] of [
    ["Score", number(properties.score, 3)],
    ["Length", `${number(properties.length_m, 1)} m`],
    ["Width", `${number(properties.width_m, 1)} m`],
    ["Bearing", `${number(properties.bearing_deg, 1)}°`],
  ]) list.append(element("dt", label), element("dd", value));
  return list;
}

async function blobOf(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await reason(response));
  return response;
}

async function download(job, format) {
  try {
    const response = await blobOf(`jobs/${job.jobID}/results?f=${format}`);
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const link = element("a", null, { href: URL.createObjectURL(await response.blob()) });
    link.download = match ? match[1] : `bridges.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } catch (error) {
    if (!(error instanceof KeyNeeded)) $("result-note").textContent = error.message;
  }
}

async function showResult(job) {
  shownJob = job.jobID;
  $("result-panel").hidden = false;
  $("result-title").textContent = `${job.scene || job.jobID}: ${job.detections} bridge${job.detections === 1 ? "" : "s"}`;
  $("result-note").textContent = "";
  const downloads = $("downloads");
  downloads.replaceChildren(...FORMATS.map(([format, label]) => {
    const button = element("button", label, { type: "button", "data-format": format });
    button.addEventListener("click", () => download(job, format));
    return button;
  }));
  ensureMap();
  mapLayers.clearLayers();
  blobUrls.forEach((url) => URL.revokeObjectURL(url));
  blobUrls = [];
  document.querySelector("#bridges tbody").replaceChildren();
  let frame = null;
  try {
    const doc = await (await blobOf(`jobs/${job.jobID}/quicklook`)).json();
    const [west, south, east, north] = doc.bbox;
    const url = URL.createObjectURL(await (await blobOf(`jobs/${job.jobID}/quicklook.png`)).blob());
    blobUrls.push(url);
    frame = L.latLngBounds([south, west], [north, east]);
    L.imageOverlay(url, frame, { className: "quicklook" }).addTo(mapLayers);
  } catch (error) {
    if (error instanceof KeyNeeded) return;
    $("result-note").textContent = `No picture of the scene: ${error.message}`;
  }
  let bridges;
  try {
    bridges = await (await blobOf(`jobs/${job.jobID}/results?f=geojson`)).json();
  } catch (error) {
    if (error instanceof KeyNeeded) return;
    $("result-note").textContent = `The bridges cannot be drawn: ${error.message}. Download the GeoPackage.`;
    return;
  }
  const layers = [];
  const layer = L.geoJSON(bridges, {
    style: BRIDGE_STYLE,
    onEachFeature: (feature, path) => {
      path.bindPopup(popup(feature.properties));
      layers.push([feature.properties, path]);
    },
  }).addTo(mapLayers);
  const box = frame || (layers.length ? layer.getBounds() : null);
  map.invalidateSize();
  if (box) map.fitBounds(box);
  layers.sort((a, b) => b[0].score - a[0].score);
  document.querySelector("#bridges tbody").replaceChildren(...layers.map(([properties, path], i) => {
    const row = element("tr", null, { "data-rank": i + 1 });
    for (const value of [i + 1, number(properties.score, 3), number(properties.length_m, 1),
      number(properties.width_m, 1), number(properties.bearing_deg, 1)]) row.append(element("td", value));
    row.addEventListener("click", () => {
      map.fitBounds(path.getBounds(), { maxZoom: 19, padding: [40, 40] });
      path.openPopup();
    });
    return row;
  }));
}

// -- start ----------------------------------------------------------------------------------------

$("model-name").textContent = `model ${config.model}`;
if (config.scoreThreshold !== null) $("score-input").value = config.scoreThreshold;
if (config.keyRequired) $("key-change").hidden = false;
if (config.keyRequired && !apiKey()) askForKey("This server needs an API key.");
else refreshJobs();
