// The deepguard dashboard: one page over the documented HTTP/WebSocket API (/docs).
// Flow: upload → options + estimate → job (live over a WebSocket) → result, compare, download.
"use strict";

const $ = (selector) => document.querySelector(selector);
const HISTORY_KEY = "deepguard.jobs";
const LANG_KEY = "deepguard.lang";

const state = {
  lang: "en",
  config: null,
  upload: null,
  job: null,
  socket: null,
  frames: { original: null, protected: null, index: 0 },
  compareMode: "side",
};

// -- words --------------------------------------------------------------------------------

function t(key, vars = {}) {
  const table = window.MESSAGES[state.lang] || window.MESSAGES.en;
  const text = table[key] ?? window.MESSAGES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? vars[name] : `{${name}}`));
}

function pickLanguage() {
  const saved = localStorage.getItem(LANG_KEY);
  if (saved && window.MESSAGES[saved]) return saved;
  const preferred = navigator.languages || [navigator.language || "en"];
  return preferred.some((l) => l.toLowerCase().startsWith("ko")) ? "ko" : "en";
}

function translatePage() {
  document.documentElement.lang = state.lang;
  $("#lang").value = state.lang;
  document.querySelectorAll("[data-i18n]").forEach((node) => {
    node.textContent = t(node.dataset.i18n);
  });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((node) => {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  });
  if (state.config) $("#formats").textContent = t("formats", { mb: state.config.max_upload_mb });
  if (state.config) renderPresets();
  if (state.upload) { renderUploadInfo(); refreshEstimate(); }
  if (state.job) renderJob(state.job);
  renderHistory();
}

function duration(seconds) {
  if (seconds == null) return "?";
  const s = Math.max(1, Math.round(seconds));
  return s < 60 ? t("seconds", { n: s }) : t("minutes", { m: Math.floor(s / 60), s: s % 60 });
}

function bytes(n) {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`;
}

// -- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (error) {
    throw new ApiError(0, "network", String(error));
  }
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new ApiError(response.status, body.code || "generic", detail || response.statusText);
  }
  return body;
}

function showError(error) {
  const box = $("#error");
  if (!error) { box.hidden = true; return; }
  if (error.code === "unauthorized") showLogin();
  const known = `err_${error.code}`;
  const headline = t(known) !== known ? t(known) : t("err_generic");
  box.textContent = error.message && error.message !== headline ? `${headline} (${error.message})` : headline;
  box.hidden = false;
}

// -- views ---------------------------------------------------------------------------------

function show(view) {
  for (const id of ["login-view", "upload-view", "job-view"]) $(`#${id}`).hidden = id !== view;
}

function showLogin() { show("login-view"); }

function route() {
  const match = location.pathname.match(/\/jobs\/([0-9a-f]{32})$/);
  if (match) openJob(match[1]);
  else resetUpload();
}

function navigate(path) {
  history.pushState({}, "", new URL(path, document.baseURI));
  route();
}

// -- upload and options --------------------------------------------------------------------

function resetUpload() {
  closeSocket();
  state.job = null;
  state.upload = null;
  $("#options").hidden = true;
  $("#dropzone").hidden = false;
  $("#file").value = "";
  show("upload-view");
}

function uploadFile(file) {
  showError(null);
  const progress = $("#upload-progress");
  progress.hidden = false;
  progress.value = 0;
  const request = new XMLHttpRequest();
  request.open("POST", `api/uploads?name=${encodeURIComponent(file.name)}`);
  request.setRequestHeader("Content-Type", "application/octet-stream");
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) progress.value = event.loaded / event.total;
  };
  request.onerror = () => { progress.hidden = true; showError(new ApiError(0, "network", "")); };
  request.onload = () => {
    progress.hidden = true;
    let body = {};
    try { body = JSON.parse(request.responseText); } catch { /* keep {} */ }
    if (request.status !== 201) {
      showError(new ApiError(request.status, body.code || "generic", body.detail || ""));
      return;
    }
    state.upload = body;
    $("#dropzone").hidden = true;
    $("#options").hidden = false;
    renderUploadInfo();
    applyPreset(selectedPreset());
  };
  request.send(file);
}

function renderUploadInfo() {
  const u = state.upload;
  const vars = { w: u.width, h: u.height, size: bytes(u.bytes), frames: u.frames,
                 duration: duration(u.duration_s) };
  $("#upload-info").textContent = `${u.name} — ${t(`info_${u.kind}`, vars)}`;
}

function renderPresets() {
  const box = $("#presets");
  const current = box.querySelector("input:checked")?.value || "balanced";
  box.querySelectorAll("label").forEach((node) => node.remove());
  for (const [name, preset] of Object.entries(state.config.presets)) {
    const label = document.createElement("label");
    label.className = "preset";
    label.innerHTML = `<input type="radio" name="preset" value="${name}">
      <strong></strong><span class="hint"></span>`;
    label.querySelector("strong").textContent = t(`preset_${name}`);
    const help = t(`preset_${name}_help`);
    label.querySelector(".hint").textContent = help !== `preset_${name}_help` ? help : preset.summary;
    label.querySelector("input").checked = name === current;
    box.append(label);
  }
  const detectors = $("#detectors");
  if (!detectors.querySelector("input")) {
    for (const detector of state.config.detectors) {
      const label = document.createElement("label");
      label.className = "check";
      label.title = detector.description;
      label.innerHTML = `<input type="checkbox" value="${detector.name}"> <span></span>`;
      label.querySelector("span").textContent = detector.name;
      label.querySelector("input").disabled = !detector.available;
      detectors.append(label);
    }
  }
}

function selectedPreset() {
  return $("#presets input:checked")?.value || "balanced";
}

function applyPreset(name) {
  const preset = state.config.presets[name];
  $("#epsilon").value = preset.epsilon;
  $("#epsilon-value").textContent = preset.epsilon;
  $("#iterations").value = preset.iterations;
  $("#region").value = preset.region_mode ? "faces" : "whole";
  $("#detectors").querySelectorAll("input").forEach((box) => {
    box.checked = preset.detectors.includes(box.value);
  });
  refreshEstimate();
}

function chosenOptions() {
  const preset = state.config.presets[selectedPreset()];
  const options = { upload_id: state.upload.id, preset: selectedPreset() };
  const detectors = [...$("#detectors").querySelectorAll("input:checked")].map((b) => b.value);
  if (detectors.join() !== preset.detectors.join()) options.detectors = detectors;
  const epsilon = Number($("#epsilon").value);
  if (epsilon !== preset.epsilon) options.epsilon = epsilon;
  const iterations = Number($("#iterations").value);
  if (iterations && iterations !== preset.iterations) options.iterations = iterations;
  const region = $("#region").value === "faces";
  if (region !== preset.region_mode) options.region_mode = region;
  return options;
}

let estimateTimer = null;
function refreshEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(async () => {
    if (!state.upload) return;
    const options = chosenOptions();
    const query = new URLSearchParams(Object.entries(options).map(([k, v]) => [k, String(v)]));
    try {
      const guess = await api(`api/estimate?${query}`);
      $("#estimate").textContent = t("estimate", { time: duration(guess.seconds),
                                                     basis: t(`basis_${guess.basis}`) });
      showError(null);
    } catch (error) {
      $("#estimate").textContent = "";
      showError(error);
    }
  }, 200);
}

async function startJob(event) {
  event.preventDefault();
  const button = $("#start");
  button.disabled = true;
  try {
    const job = await api("api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(chosenOptions()),
    });
    remember(job.id);
    navigate(`jobs/${job.id}`);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// -- a job: live progress ------------------------------------------------------------------

function closeSocket() {
  if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
}

async function openJob(id) {
  closeSocket();
  show("job-view");
  showError(null);
  $("#result").hidden = true;
  try {
    const job = await api(`api/jobs/${id}`);
    remember(id);
    state.frames = { original: null, protected: null, index: 0 };
    renderJob(job);
    if (!job.final) follow(id);
  } catch (error) {
    showError(error);
  }
}

function follow(id) {
  const url = new URL(`api/jobs/${id}/events`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  state.socket = socket;
  socket.onmessage = (message) => renderJob(JSON.parse(message.data));
  socket.onclose = (event) => {
    state.socket = null;
    if (event.code === 4401) { showError(new ApiError(401, "unauthorized", "")); return; }
    if (event.code === 4404) { showError(new ApiError(404, "job_not_found", "")); return; }
    if (state.job && state.job.id === id && !state.job.final) setTimeout(() => follow(id), 1000);
  };
}

function bar(label, fraction, detail) {
  const row = document.createElement("div");
  row.className = "phase";
  row.innerHTML = `<span class="label"></span><div class="bar"><div></div></div><span class="detail"></span>`;
  row.querySelector(".label").textContent = label;
  row.querySelector(".bar div").style.width = `${Math.round(100 * Math.min(1, fraction))}%`;
  row.querySelector(".detail").textContent = detail;
  return row;
}

function renderJob(job) {
  const wasFinal = state.job && state.job.id === job.id && state.job.final;
  state.job = job;
  $("#job-title").textContent = job.name || job.id;
  $("#job-state").textContent = t(`state_${job.state}`);
  $("#job-state").dataset.state = job.state;
  const progress = job.progress;
  const fraction = job.final ? 1 : progress.fraction || 0;
  $("#overall-bar").style.width = `${Math.round(100 * fraction)}%`;
  $("#progress-panel").hidden = job.final;
  $("#eta").textContent = progress.eta_s != null ? t("eta", { time: duration(progress.eta_s) })
                                                 : t("eta_unknown");
  const phases = $("#phases");
  phases.replaceChildren();
  for (const [name, phase] of Object.entries(progress.phases || {})) {
    const share = phase.total ? phase.done / phase.total : 0;
    phases.append(bar(t(`phase_${name}`), share, `${phase.done} / ${phase.total || "?"}`));
  }
  const detectors = $("#detector-progress");
  detectors.replaceChildren();
  for (const [name, figures] of Object.entries(progress.detectors || {})) {
    const parts = [];
    if (figures.loss_removed_pct != null) parts.push(t("loss_removed", { pct: figures.loss_removed_pct }));
    if (figures.faces_before != null) parts.push(t("faces_found", { found: figures.faces_found, before: figures.faces_before }));
    detectors.append(bar(name, (figures.loss_removed_pct || 0) / 100, parts.join(" · ")));
  }
  $("#job-error").hidden = !job.error || job.state === "done";
  $("#job-error").textContent = job.error || "";
  if (job.state === "done" && job.result) renderResult(job, !wasFinal);
  renderHistory();
}

// -- a job: the result ---------------------------------------------------------------------

function renderResult(job, firstTime) {
  $("#result").hidden = false;
  const result = job.result;
  renderVerdict(result);
  const body = $("#verdict-table tbody");
  body.replaceChildren();
  for (const [name, figures] of Object.entries(result.detectors)) {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td>";
    row.cells[0].textContent = name;
    row.cells[1].textContent = figures.faces_before;
    row.cells[2].textContent = `${figures.faces_after} ${figures.faces_after === 0 ? "✓" : "✗"}`;
    row.cells[2].className = figures.faces_after === 0 ? "ok" : "bad";
    body.append(row);
  }
  renderTools(result.tools || []);
  renderFaces(result.faces || []);
  const figures = [[t("psnr"), result.psnr_db != null ? `${result.psnr_db} dB` : "—"],
                   [t("time"), duration(result.seconds)]];
  const epsilon = describeEpsilon(result.epsilon);
  if (epsilon) figures.push([t("epsilon_used"), epsilon]);
  if (result.kind === "video") {
    figures.push([t("frames"), result.frames], [t("flicker"), result.flicker ?? "—"],
                 [t("realtime"), t("realtime_value", { x: result.realtime_factor })]);
  }
  const list = $("#figures");
  list.replaceChildren();
  for (const [term, value] of figures) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    list.append(dt, dd);
  }
  $("#download-file").href = job.links.download;
  $("#download-report").href = job.links.report;
  $("#qr").src = job.links.qr;
  $("#qr").dataset.url = job.page_url;
  const isVideo = result.kind === "video";
  $("#frame-scrub").hidden = !isVideo;
  $("#player-box").hidden = !isVideo;
  if (firstTime) {
    $("#frame").max = Math.max(0, result.frames - 1);
    $("#frame").value = 0;
    $("#frame-value").textContent = "0";
    if (isVideo) $("#player").src = job.links.protected;
    loadFrames(0);
    setCompareMode(state.compareMode);
  }
}

// The headline speaks of the tools, as the table does: which tools the result is protected
// against, which it is not, and which the chosen detectors do not cover at all. Without tool
// profiles (none enabled), it falls back to the detectors.
function renderVerdict(result) {
  const box = $("#verdict");
  box.replaceChildren();
  const verdict = result.verdict;
  const line = (className, text) => {
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    box.append(p);
    return p;
  };
  if (!verdict || !(result.tools || []).length) {
    box.dataset.state = result.hidden ? "ok" : "partial";
    line("headline", result.hidden ? t("verdict_hidden") : t("verdict_partial"));
    return;
  }
  const judged = verdict.protected.length + verdict.not_protected.length;
  const total = judged + verdict.not_covered.length;
  let state = "ok";
  let headline = t("verdict_tools_all", { n: verdict.protected.length });
  if (!judged) {
    state = "none";
    headline = t("verdict_tools_none");
  } else if (verdict.not_protected.length || verdict.not_covered.length) {
    state = "partial";
    headline = t("verdict_tools_some", { n: verdict.protected.length, total });
  }
  box.dataset.state = state;
  line("headline", headline);
  const groups = [["protected", "verdict_group_protected"],
                  ["not_protected", "verdict_group_not_protected"],
                  ["not_covered", "verdict_group_not_covered"]];
  for (const [key, label] of groups) {
    if (!verdict[key].length) continue;
    const p = line(`group ${key}`, "");
    const name = document.createElement("b");
    name.textContent = `${t(label)}: `;
    p.append(name, verdict[key].join(", "));
  }
}

// "6–12 (3 faces at 12)": the range of ε the faces got, from the report's summary.
function describeEpsilon(summary) {
  if (!summary || summary.min == null) return "";
  let text = summary.min === summary.max ? `${summary.min}` : `${summary.min}–${summary.max}`;
  if (summary.faces > 1 && summary.faces_at_cap) {
    text += ` (${t("faces_at_cap", { n: summary.faces_at_cap, cap: summary.cap })})`;
  }
  return text;
}

// Per face, behind a disclosure: the ε it got, its crop's quality, and per delivery the tools
// that still find it (or how many covered tools it is protected against).
function renderFaces(faces) {
  $("#faces-details").hidden = faces.length === 0;
  const list = $("#faces-list");
  list.replaceChildren();
  for (const face of faces) {
    const item = document.createElement("li");
    const parts = [`ε ${face.epsilon}${face.texture_floor_lifted ? ` (${t("floor_lifted")})` : ""}`,
                   `PSNR ${face.psnr_db != null ? `${face.psnr_db} dB` : "—"}`,
                   `SSIM ${face.ssim}`];
    item.append(parts.join(" · "));
    for (const [chain, entry] of Object.entries(face.deliveries || {})) {
      const detail = document.createElement("span");
      detail.className = "delivery-line";
      detail.dataset.chain = chain;
      if (entry.found_by.length) {
        detail.classList.add("bad");
        detail.textContent = `${t(`delivery_${chain}`)}: ${t("face_found_by", { tools: entry.found_by.join(", ") })}`;
      } else {
        detail.textContent = `${t(`delivery_${chain}`)}: ${t("face_protected", { n: entry.protected_against })}`;
      }
      item.append(detail);
    }
    list.append(item);
  }
}

const TOOL_STATUS_CLASS = { protected: "ok", "not protected": "bad" };

// Which face-swap tools the result is protected against: faces before → after and the verdict.
// Where our detector stands in for the tool's own, the stand-in note is the name's tooltip.
function renderTools(tools) {
  $("#tools-table").hidden = tools.length === 0;
  const body = $("#tools-table tbody");
  body.replaceChildren();
  const count = (n) => (n == null ? "—" : n);
  for (const tool of tools) {
    const row = document.createElement("tr");
    row.dataset.tool = tool.tool;
    row.dataset.status = tool.status;
    row.innerHTML = "<td></td><td></td><td></td><td></td>";
    row.cells[0].textContent = tool.title;
    if (tool.stand_in) row.cells[0].title = t("stand_in", { note: tool.stand_in });
    if (tool.weights && tool.status !== "not covered") {
      const weights = document.createElement("span");
      weights.className = "weights";
      weights.textContent = tool.weights === "own weights" ? t("weights_own") : t("weights_stand_in");
      row.cells[0].append(weights);
    }
    row.cells[1].textContent = `${count(tool.faces_before)} → ${count(tool.faces_after)}`;
    row.cells[1].className = "col-total";
    renderDeliveries(row.cells[2], tool.deliveries || {});
    const status = `tool_${tool.status.replaceAll(" ", "_")}`;
    row.cells[3].textContent = t(status);
    row.cells[3].className = TOOL_STATUS_CLASS[tool.status] || "muted";
    if (tool.status === "not covered") row.cells[3].title = t("tool_not_covered_help");
    body.append(row);
  }
}

// Per delivery (the saved file, a social network's copy...): faces before → after; the faces
// still found and the other detections (a poster, a shirt: not faces) in the tooltip.
function renderDeliveries(cell, deliveries) {
  for (const [chain, tally] of Object.entries(deliveries)) {
    const item = document.createElement("span");
    item.className = "delivery";
    item.dataset.chain = chain;
    item.textContent = `${t(`delivery_${chain}`)} ${tally.faces_before} → ${tally.faces_after}`;
    const notes = [];
    const found = [...new Set(tally.faces_found.flat())].map((index) => index + 1);
    if (found.length) notes.push(t("faces_still_found", { faces: found.join(", ") }));
    if (tally.other_detections) notes.push(t("other_detections", { count: tally.other_detections }));
    item.title = notes.join("; ");
    if (tally.faces_after) item.classList.add("bad");
    cell.append(item);
  }
}

function frameUrl(which, index) {
  return state.job.links.frame.replace("{index}", index).replace("{which}", which);
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new ApiError(410, "expired", url));
    image.src = url;
  });
}

async function loadFrames(index) {
  state.frames.index = index;
  try {
    const [original, protectedImage] = await Promise.all(
      [loadImage(frameUrl("original", index)), loadImage(frameUrl("protected", index))]);
    if (state.frames.index !== index) return;  // the user scrubbed on meanwhile
    state.frames.original = pixels(original);
    state.frames.protected = pixels(protectedImage);
    for (const [id, image] of [["side-original", original], ["side-protected", protectedImage],
                               ["slider-original", original], ["slider-protected", protectedImage]]) {
      $(`#${id}`).src = image.src;
    }
    drawHeatmap();
  } catch (error) {
    showError(error);
  }
}

function pixels(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

function drawHeatmap() {
  const { original, protected: protectedPixels } = state.frames;
  if (!original || !protectedPixels) return;
  const canvas = $("#heatmap");
  canvas.width = original.width;
  canvas.height = original.height;
  const context = canvas.getContext("2d");
  const out = context.createImageData(original.width, original.height);
  const gain = Number($("#gain").value);
  const a = original.data, b = protectedPixels.data, o = out.data;
  for (let i = 0; i < a.length; i += 4) {
    const diff = Math.max(Math.abs(a[i] - b[i]), Math.abs(a[i + 1] - b[i + 1]),
                          Math.abs(a[i + 2] - b[i + 2]));
    const v = Math.min(765, diff * gain * 3);  // black → red → yellow → white
    o[i] = Math.min(255, v);
    o[i + 1] = Math.min(255, Math.max(0, v - 255));
    o[i + 2] = Math.max(0, v - 510);
    o[i + 3] = 255;
  }
  context.putImageData(out, 0, 0);
}

function hoverReadout(event) {
  const { original, protected: protectedPixels } = state.frames;
  if (!original) return;
  const canvas = $("#heatmap");
  const box = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - box.left) * canvas.width / box.width);
  const y = Math.floor((event.clientY - box.top) * canvas.height / box.height);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return;
  const i = 4 * (y * canvas.width + x);
  const d = [0, 1, 2].map((c) => protectedPixels.data[i + c] - original.data[i + c]);
  const signed = (v) => (v > 0 ? `+${v}` : `${v}`);
  $("#hover-readout").textContent = t("hover", { x, y, r: signed(d[0]), g: signed(d[1]),
    b: signed(d[2]), max: Math.max(...d.map(Math.abs)) });
  $("#hover-readout").dataset.max = Math.max(...d.map(Math.abs));
}

function setCompareMode(mode) {
  state.compareMode = mode;
  for (const name of ["side", "slider", "heatmap"]) {
    $(`#view-${name}`).hidden = name !== mode;
  }
  document.querySelectorAll(".tabs button").forEach((button) => {
    button.setAttribute("aria-selected", String(button.dataset.mode === mode));
  });
}

function moveSlider() {
  const position = Number($("#slider-pos").value);
  $("#slider-protected").style.clipPath = `inset(0 0 0 ${position}%)`;
  document.querySelector(".slider-line").style.left = `${position}%`;
}

// -- history (kept by this browser: job IDs are not listed to anybody else) ------------------

function remembered() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch { return []; }
}

function remember(id) {
  const ids = [id, ...remembered().filter((other) => other !== id)].slice(0, 50);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(ids));
}

function forget(id) {
  localStorage.setItem(HISTORY_KEY, JSON.stringify(remembered().filter((o) => o !== id)));
}

let historyJobs = [];
async function loadHistory() {
  const ids = remembered();
  if (!ids.length) { historyJobs = []; renderHistory(); return; }
  try {
    historyJobs = await api(`api/jobs?ids=${ids.join(",")}`);
    const known = new Set(historyJobs.map((job) => job.id));
    ids.filter((id) => !known.has(id)).forEach(forget);
  } catch (error) {
    showError(error);
  }
  renderHistory();
}

function renderHistory() {
  const list = $("#history-list");
  list.replaceChildren();
  const jobs = historyJobs.map((job) => (state.job && job.id === state.job.id ? state.job : job));
  $("#history-empty").hidden = jobs.length > 0;
  for (const job of jobs) {
    const item = document.createElement("li");
    item.dataset.id = job.id;
    item.innerHTML = `<a></a><span class="state"></span><button type="button" class="link"></button>`;
    const link = item.querySelector("a");
    link.textContent = job.name || job.id;
    link.href = `jobs/${job.id}`;
    link.onclick = (event) => { event.preventDefault(); navigate(`jobs/${job.id}`); };
    item.querySelector(".state").textContent = t(`state_${job.state}`);
    item.querySelector(".state").dataset.state = job.state;
    const remove = item.querySelector("button");
    remove.textContent = t("delete");
    remove.onclick = () => deleteJob(job.id);
    list.append(item);
  }
}

async function deleteJob(id) {
  if (!confirm(t("confirm_delete"))) return;
  try {
    await api(`api/jobs/${id}`, { method: "DELETE" });
    forget(id);
    historyJobs = historyJobs.filter((job) => job.id !== id);
    if (state.job && state.job.id === id) navigate("./");
    renderHistory();
  } catch (error) {
    showError(error);
  }
}

// -- start ---------------------------------------------------------------------------------

function wire() {
  $("#lang").onchange = () => {
    state.lang = $("#lang").value;
    localStorage.setItem(LANG_KEY, state.lang);
    translatePage();
  };
  $("#history-toggle").onclick = () => {
    $("#history").hidden = !$("#history").hidden;
    if (!$("#history").hidden) loadHistory();
  };
  const zone = $("#dropzone");
  zone.ondragover = (event) => { event.preventDefault(); zone.classList.add("over"); };
  zone.ondragleave = () => zone.classList.remove("over");
  zone.ondrop = (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) uploadFile(event.dataTransfer.files[0]);
  };
  $("#file").onchange = () => { if ($("#file").files.length) uploadFile($("#file").files[0]); };
  $("#presets").onchange = () => applyPreset(selectedPreset());
  $("#epsilon").oninput = () => { $("#epsilon-value").textContent = $("#epsilon").value; refreshEstimate(); };
  for (const id of ["#iterations", "#region", "#detectors"]) $(id).onchange = refreshEstimate;
  $("#options").onsubmit = startJob;
  $("#discard").onclick = resetUpload;
  $("#new-job").onclick = () => navigate("./");
  document.querySelectorAll(".tabs button").forEach((button) => {
    button.onclick = () => setCompareMode(button.dataset.mode);
  });
  $("#slider-pos").oninput = moveSlider;
  $("#gain").onchange = drawHeatmap;
  $("#heatmap").onmousemove = hoverReadout;
  let scrubTimer = null;
  $("#frame").oninput = () => {
    $("#frame-value").textContent = $("#frame").value;
    clearTimeout(scrubTimer);
    scrubTimer = setTimeout(() => loadFrames(Number($("#frame").value)), 150);
  };
  $("#login-form").onsubmit = async (event) => {
    event.preventDefault();
    try {
      await api("api/session", { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify({ token: $("#token").value }) });
      showError(null);
      route();
    } catch (error) {
      showError(error);
    }
  };
  window.onpopstate = route;
}

async function main() {
  state.lang = pickLanguage();
  wire();
  try {
    state.config = await api("api/config");
  } catch (error) {
    showError(error);
    return;
  }
  translatePage();
  moveSlider();
  route();
  document.body.dataset.ready = "true";
}

main();
