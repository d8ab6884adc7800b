// The operator page (GET /console): the key's tasks with live progress, a task's pages with
// their boxes, cancel, share links. Served as a file (the page's CSP allows no inline script);
// every value from the API reaches the page through textContent or an attribute, never as HTML.
// URLs are relative to the page, so it works wherever the API is mounted (nginx, spiped).
"use strict";

const KEY_STORE = "scriptorium.apiKey";
const REFRESH_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const ACTIVE = new Set(["QUEUED", "RUNNING"]);
const WITH_RESULT = new Set(["SUCCEEDED", "TIMED_OUT", "CANCELLED"]);

const state = { admin: false, selected: null, selectedState: null, drawn: null, share: null, timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
  }
}

async function api(path, options = {}) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY_STORE) || "" };
  if (options.json !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
    cache: "no-store",
  });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// --- the key ------------------------------------------------------------------------------------

async function useKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
  try {
    await api("tasks?limit=1");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORE);
    say(error.status === 401 ? "That key was refused." : `Cannot reach the API: ${error.message}`, true);
    return;
  }
  try {
    await api("tasks?limit=1&scope=all");
    state.admin = true;
  } catch (error) {
    state.admin = false;
  }
  showSignedIn();
}

function showSignedIn() {
  $("key-form").hidden = true;
  $("key-state").hidden = false;
  $("key-who").textContent = state.admin ? "Admin key in use." : "Key in use.";
  $("tasks").hidden = false;
  $("admin").hidden = !state.admin;
  say("");
  refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  clearInterval(state.timer);
  for (const id of ["tasks", "admin", "detail", "key-state"]) $(id).hidden = true;
  $("key-form").hidden = false;
  $("task-rows").replaceChildren();
  Object.assign(state, { admin: false, selected: null, selectedState: null, drawn: null, share: null });
}

// --- the task list ------------------------------------------------------------------------------

async function refresh() {
  try {
    const page = await api("tasks?limit=50");
    renderTasks(page);
    if (state.admin) await refreshAdmin();
    // The open task is read again while it may change: active, or seen changed in the list
    // (a finished one's status carries every page: not worth reading each second).
    const listed = page.tasks.find((task) => task.task_id === state.selected);
    const changed = listed && listed.state !== state.selectedState;
    if (state.selected && (changed || ACTIVE.has(state.selectedState))) await refreshDetail();
  } catch (error) {
    if (error.status === 401) {
      forgetKey();
      say("The key is no longer accepted.", true);
    } else {
      say(`Refresh failed: ${error.message}`, true);
    }
  }
}

function progressCell(progress) {
  const bar = el("progress", { max: Math.max(progress.total, 1), value: progress.done + progress.failed });
  const failed = progress.failed ? `, ${progress.failed} failed` : "";
  return el("td", {}, [bar, el("span", { className: "counts", text: ` ${progress.done}/${progress.total}${failed}` })]);
}

function renderTasks(page) {
  const rows = page.tasks.map((task) => {
    const open = el("button", { type: "button", text: "Open", className: "open" });
    open.addEventListener("click", () => select(task.task_id));
    const actions = el("td", {}, [open]);
    if (ACTIVE.has(task.state)) {
      const cancel = el("button", { type: "button", text: "Cancel", className: "cancel" });
      cancel.addEventListener("click", () => cancelTask(task.task_id));
      actions.append(" ", cancel);
    }
    const row = el("tr", { "data-task": task.task_id, "data-state": task.state }, [
      el("td", {}, [el("code", { text: task.task_id.slice(0, 12) })]),
      el("td", { text: task.type }),
      el("td", { text: task.state, className: `state ${task.state.toLowerCase()}` }),
      progressCell(task.progress),
      el("td", { text: task.created_at ? new Date(task.created_at).toLocaleString() : "" }),
      actions,
    ]);
    if (task.task_id === state.selected) row.classList.add("selected");
    return row;
  });
  $("task-rows").replaceChildren(...rows);
  $("task-count").textContent = `${page.total} task(s)`;
}

async function refreshAdmin() {
  const response = await fetch("readyz", { cache: "no-store" });
  const ready = await response.json();
  $("readiness").textContent = response.ok ? "ready" : (ready.error && ready.error.message) || "not ready";
  $("queue-depth").textContent = response.ok ? String(ready.queued) : "-";
  $("running-count").textContent = response.ok ? String(ready.running) : "-";
  const workers = (ready.workers || []).map((worker) =>
    el("tr", {}, [
      el("td", { text: `${worker.name || ""} ${worker.role || "worker"} ${worker.pid}` }),
      el("td", { text: (worker.models || []).join(", ") }),
      el("td", { text: Object.values(worker.backends || {}).join(", ") }),
      el("td", { text: worker.started_at ? new Date(worker.started_at * 1000).toLocaleString() : "" }),
    ]),
  );
  $("workers").replaceChildren(...workers);
}

async function cancelTask(taskId) {
  try {
    await api(`terminate/${encodeURIComponent(taskId)}`, { method: "DELETE" });
    say(`Cancelling ${taskId.slice(0, 12)}.`);
    refresh();
  } catch (error) {
    say(`Cancel failed: ${error.message}`, true);
  }
}

// --- one task -----------------------------------------------------------------------------------

function select(taskId) {
  Object.assign(state, { selected: taskId, selectedState: null, drawn: null, share: null });
  $("detail").hidden = false;
  $("detail-id").textContent = taskId;
  $("pages").replaceChildren();
  $("share").hidden = true;
  refreshDetail();
}

async function refreshDetail() {
  const taskId = state.selected;
  const status = await api(`status/${encodeURIComponent(taskId)}`);
  if (taskId !== state.selected) return;
  state.selectedState = status.state;
  const { done, failed, total } = status.progress;
  $("detail-state").textContent = status.state;
  $("detail").setAttribute("data-state", status.state);
  const bar = $("detail-progress");
  bar.max = Math.max(total, 1);
  bar.value = done + failed;
  $("detail-counts").textContent = `${done + failed}/${total} pages${failed ? `, ${failed} failed` : ""}`;
  $("detail-error").textContent = status.error ? `${status.error.code}: ${status.error.message}` : "";
  renderActions(status);
  if (status.result && state.drawn !== taskId) {
    state.drawn = taskId;
    renderPages(status.result.items || []);
  }
}

function renderActions(status) {
  let actions = $("detail-actions");
  if (!actions) {
    actions = el("p", { id: "detail-actions" });
    $("detail-error").after(actions);
  }
  const buttons = [];
  if (ACTIVE.has(status.state)) {
    const cancel = el("button", { type: "button", text: "Cancel", className: "cancel" });
    cancel.addEventListener("click", () => cancelTask(status.task_id));
    buttons.push(cancel);
  }
  if (WITH_RESULT.has(status.state)) {
    const share = el("button", { type: "button", text: "Share / open in viewer", id: "share-button" });
    share.addEventListener("click", () => createShare(status.task_id));
    const json = el("a", { text: "Result JSON", href: `result/${encodeURIComponent(status.task_id)}`, id: "result-link" });
    json.addEventListener("click", (event) => {
      event.preventDefault();
      downloadResult(status.task_id);
    });
    buttons.push(share, " ", json);
  }
  actions.replaceChildren(...buttons);
}

async function downloadResult(taskId) {
  const body = await api(`result/${encodeURIComponent(taskId)}`);
  const blob = new Blob([JSON.stringify(body, null, 2)], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `${taskId}.json` });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// A vectorize primitive as SVG path data (as model/outputs/vector.py writes it): a line M L, a
// circle two half-circle arcs, an arc M A by increasing angle (y down: sweep-flag 1).
function primitivePath(p) {
  if (p.kind === "line") return `M${p.p0[0]},${p.p0[1]} L${p.p1[0]},${p.p1[1]}`;
  const [cx, cy] = p.center;
  const r = p.radius;
  if (p.kind === "circle") return `M${cx - r},${cy} A${r},${r} 0 1 1 ${cx + r},${cy} A${r},${r} 0 1 1 ${cx - r},${cy}`;
  const at = (deg) => [cx + r * Math.cos((deg * Math.PI) / 180), cy + r * Math.sin((deg * Math.PI) / 180)];
  const span = (((p.end_deg - p.start_deg) % 360) + 360) % 360;
  const [x0, y0] = at(p.start_deg);
  const [x1, y1] = at(p.end_deg);
  return `M${x0},${y0} A${r},${r} 0 ${span > 180 ? 1 : 0} 1 ${x1},${y1}`;
}

// A page: its image (when it has a URL) under an SVG of its boxes, both stretched over the box
// coordinates' space (the canvas for IIIF pages, else the image's pixels).
function pageFigure(item) {
  const width = item.canvas_width || item.width || 1;
  const height = item.canvas_height || item.height || 1;
  const frame = el("div", { className: "thumb" });
  frame.style.aspectRatio = `${width} / ${height}`;
  const source = item.image_url || (/^https?:/.test(item.source || "") ? item.source : null);
  if (source) frame.append(el("img", { src: source, alt: "", loading: "lazy", referrerPolicy: "no-referrer" }));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const detection of item.detections || []) {
    const [x, y, w, h] = detection.xywh;
    const rect = document.createElementNS(SVG, "rect");
    for (const [name, value] of Object.entries({ x, y, width: w, height: h })) rect.setAttribute(name, value);
    rect.setAttribute("class", "box");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${detection.label} ${detection.confidence.toFixed(2)}`;
    rect.append(title);
    svg.append(rect);
  }
  for (const primitive of item.primitives || []) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", primitivePath(primitive));
    path.setAttribute("class", `primitive ${primitive.kind}`);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${primitive.kind} ${primitive.confidence.toFixed(2)}`;
    path.append(title);
    svg.append(path);
  }
  frame.append(svg);
  const vectors = Array.isArray(item.primitives);
  const count = vectors ? item.primitives.length : (item.detections || []).length;
  const unit = vectors ? (count === 1 ? "primitive" : "primitives") : (count === 1 ? "box" : "boxes");
  const caption = item.status === "ok"
    ? `${item.label || item.source || ""} · ${count} ${unit}`
    : `${item.label || item.source || ""} · failed: ${(item.error && item.error.code) || ""}`;
  return el("figure", { "data-index": String(item.index), "data-status": item.status || "" }, [
    frame,
    el("figcaption", { text: caption }),
  ]);
}

function renderPages(items) {
  const sorted = [...items].sort((a, b) => a.index - b.index);
  $("pages").replaceChildren(...sorted.map(pageFigure));
}

// --- sharing ------------------------------------------------------------------------------------

function shareEntry(label, url) {
  const input = el("input", { type: "text", value: url, readOnly: true, className: "share-url" });
  input.addEventListener("focus", () => input.select());
  const entry = el("li", {}, [el("span", { text: `${label}: ` }), input]);
  const template = document.body.dataset.viewerUrl;
  if (template && label.startsWith("Manifest")) {
    const viewer = template.replace("{manifest}", encodeURIComponent(url));
    entry.append(" ", el("a", { text: "Open in viewer", href: viewer, target: "_blank", rel: "noopener noreferrer", className: "viewer-link" }));
  }
  return entry;
}

async function createShare(taskId) {
  try {
    const share = await api(`result/${encodeURIComponent(taskId)}/shares`, { method: "POST", json: {} });
    state.share = share;
    const entries = [shareEntry("Result JSON", share.result_url)];
    for (const manifest of share.manifests) {
      const name = manifest.label || `#${manifest.index}`;
      if (manifest.manifest_url) entries.push(shareEntry(`Manifest ${name}`, manifest.manifest_url));
      entries.push(shareEntry(`Annotations ${name}`, manifest.annotations_url));
    }
    $("share-urls").replaceChildren(...entries);
    $("share-expires").textContent = new Date(share.expires_at).toLocaleString();
    $("share").hidden = false;
  } catch (error) {
    say(`Sharing failed: ${error.message}`, true);
  }
}

async function revokeShare() {
  const share = state.share;
  if (!share) return;
  try {
    await api(`result/${encodeURIComponent(share.task_id)}/shares/${share.share_id}`, { method: "DELETE" });
    state.share = null;
    $("share").hidden = true;
    say("Share link revoked.");
  } catch (error) {
    say(`Revoking failed: ${error.message}`, true);
  }
}

// --- start --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    input.value = "";
    if (key) useKey(key);
  });
  $("forget-key").addEventListener("click", forgetKey);
  $("revoke-share").addEventListener("click", revokeShare);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) useKey(key);
});
