// The page: one image, one task, one job at a time; everything it shows comes from the API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, job: null, strokes: [], painting: null, follow: null };
const RECENT = "ddnm-recent-jobs";

// ---- API calls: the key (when the API asks for one) is kept for this browser session ----
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem("ddnm-key");
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !options.retried) {
    const entered = window.prompt("This service needs an API key:");
    if (entered) {
      sessionStorage.setItem("ddnm-key", entered.trim());
      return api(path, { ...options, retried: true });
    }
  }
  return response;
}

function showError(detail) {
  // the API's message, next to the field it names ("image: ...", "mask: ...", "spec...")
  for (const id of ["image-error", "mask-error", "spec-error", "error"]) $(id).textContent = "";
  if (!detail) return;
  const field = detail.startsWith("image") ? "image-error"
    : detail.startsWith("mask") ? "mask-error"
    : detail.startsWith("spec") ? "spec-error" : "error";
  $(field).textContent = detail;
}

async function detailOf(response) {
  try { return (await response.json()).detail || `${response.status}`; }
  catch { return `the service answered ${response.status}`; }
}

// ---- the spec, from the controls ----
function spec() {
  const op = $("op").value;
  const chains = {
    sr: [{ op: "downsample", factor: Number($("factor").value), filter: $("filter").value }],
    colorize: [{ op: "grayscale" }],
    inpaint: [{ op: "inpaint" }],
    deblur: [{ op: "blur", kernel: "gaussian", sigma: Number($("blur").value) }],
    denoise: [{ op: "denoise" }],
  };
  const s = op === "old_photo" ? { preset: "old_photo" } : { degradations: chains[op] };
  if (op === "colorize") s.preset = "colorize";
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  if (number("sigma") !== null) s.sigma_y = number("sigma");
  const advanced = $("task").querySelector("details");
  if (advanced.open || number("steps") !== 100) s.steps = number("steps");
  if (advanced.open) {
    s.eta = number("eta");
    s.travel = { length: number("travel-length"), repeat: number("travel-repeat") };
    s.samples = number("samples");
    if (number("seed") !== null) s.seed = number("seed");
  }
  if (op === "old_photo") {
    delete s.travel; delete s.samples;  // the preset's own
  }
  return s;
}

const needsMask = () => ["inpaint", "old_photo"].includes($("op").value);

function showFields() {
  const op = $("op").value;
  $("factor-field").hidden = op !== "sr";
  $("filter-field").hidden = op !== "sr";
  $("blur-field").hidden = op !== "deblur";
  $("tools").hidden = !needsMask() || !state.image;
}

// ---- the image, and its cost before submitting ----
async function load(file) {
  state.file = file;
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onerror = () => { state.image = null; $("submit").disabled = false; estimate(); };
  image.onload = () => {
    state.image = image;
    for (const id of ["photo", "mask"]) { $(id).width = image.width; $(id).height = image.height; }
    $("photo").getContext("2d").drawImage(image, 0, 0);
    state.strokes = [];
    drawMask();
    $("stage").hidden = false;
    $("size").textContent = `${image.width} x ${image.height} pixels`;
    $("submit").disabled = false;
    showFields();
    estimate();
  };
  image.src = url;
}

function form(withMask) {
  const data = new FormData();
  data.append("image", state.file, state.file.name);
  data.append("spec", JSON.stringify(spec()));
  return withMask ? maskBlob().then((blob) => { data.append("mask", blob, "mask.png"); return data; })
    : Promise.resolve(data);
}

async function estimate() {
  if (!state.file) return;
  const response = await api("/restore/estimate", { method: "POST", body: await form(false) });
  if (!response.ok) { showError(await detailOf(response)); $("cost").textContent = ""; return; }
  showError("");
  const e = await response.json();
  const windows = e.plan ? `${e.plan.windows} windows of ${e.plan.window} x ${e.plan.window}` : "one pass";
  $("cost").textContent = `Result ${e.width} x ${e.height}: ${windows}, ` +
    `${e.predicted_evaluations.toLocaleString()} network evaluations (budget ${e.budget.toLocaleString()})`;
}

// ---- the mask: painted strokes over the photo; painted = to restore ----
function drawMask() {
  const canvas = $("mask"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const stroke of state.strokes) {
    if (stroke.kind === "invert") {
      ctx.globalCompositeOperation = "xor";
      ctx.fillStyle = "rgba(255, 0, 80, 0.55)";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      continue;
    }
    ctx.globalCompositeOperation = stroke.kind === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgba(255, 0, 80, 0.55)";
    ctx.lineWidth = stroke.size; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath();
    stroke.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (stroke.points.length === 1) ctx.lineTo(stroke.points[0][0] + 0.01, stroke.points[0][1]);
    ctx.stroke();
  }
  ctx.globalCompositeOperation = "source-over";
}

function canvasPoint(event) {
  const canvas = $("mask"), box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

function maskBlob() {
  // white = known pixel, black = to restore (painted)
  const painted = $("mask"), out = document.createElement("canvas");
  out.width = painted.width; out.height = painted.height;
  const ctx = out.getContext("2d");
  const src = painted.getContext("2d").getImageData(0, 0, out.width, out.height);
  const dst = ctx.createImageData(out.width, out.height);
  for (let i = 0; i < src.data.length; i += 4) {
    const known = src.data[i + 3] < 40 ? 255 : 0;
    dst.data[i] = dst.data[i + 1] = dst.data[i + 2] = known; dst.data[i + 3] = 255;
  }
  ctx.putImageData(dst, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// ---- a job: submit, follow its events, show its result ----
async function submit() {
  showError("");
  const response = await api("/restore", { method: "POST", body: await form(needsMask()) });
  if (!response.ok) { showError(await detailOf(response)); return; }
  const job = await response.json();
  state.job = job.id;
  remember(job);
  $("submit").disabled = true; $("cancel").hidden = false;
  $("progress").hidden = false; $("result").hidden = true; $("preview").hidden = true;
  $("bar").value = 0; $("status").textContent = "queued";
  follow(job.id);
}

async function follow(jobId) {
  const response = await api(`/jobs/${jobId}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const fields = Object.fromEntries(block.split("\n").filter((l) => !l.startsWith(":"))
        .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 2)]));
      if (fields.event) onEvent(jobId, fields.event, JSON.parse(fields.data));
    }
  }
}

function onEvent(jobId, kind, data) {
  if (jobId !== state.job) return;
  if (kind === "progress") {
    $("bar").value = data.step / data.total;
    const eta = data.eta_s > 0 ? `, about ${Math.ceil(data.eta_s)} s left` : "";
    $("status").textContent = `step ${data.step} of ${data.total}${eta}`;
  } else if (kind === "preview") {
    $("preview").src = `data:image/png;base64,${data.png}`; $("preview").hidden = false;
  } else if (kind === "status") {
    if (!["succeeded", "failed", "canceled", "expired"].includes(data.status)) {
      $("status").textContent = data.status; return;
    }
    ended(jobId, data);
  }
}

async function ended(jobId, data) {
  $("cancel").hidden = true; $("submit").disabled = false;
  $("status").textContent = data.status + (data.error ? `: ${data.error}` : "");
  const job = await (await api(`/jobs/${jobId}`)).json();
  remember(job);
  if (job.status !== "succeeded") return;
  $("bar").value = 1;
  const png = await (await api(job.result_url)).blob();
  const url = URL.createObjectURL(png);
  $("after").src = url; $("download").href = url;
  $("before").src = URL.createObjectURL(state.file);
  $("consistency").textContent = `Consistency ||A x - y|| / ||y||: ${job.consistency.toExponential(2)}`;
  $("result").hidden = false;
}

async function cancel() {
  if (!state.job) return;
  const response = await api(`/jobs/${state.job}`, { method: "DELETE" });
  if (!response.ok) showError(await detailOf(response));
}

// ---- this browser's recent jobs ----
function remember(job) {
  const jobs = JSON.parse(localStorage.getItem(RECENT) || "[]").filter((j) => j.id !== job.id);
  jobs.unshift({ id: job.id, status: job.status, at: job.created_at });
  localStorage.setItem(RECENT, JSON.stringify(jobs.slice(0, 20)));
  listRecent();
}

function listRecent() {
  const jobs = JSON.parse(localStorage.getItem(RECENT) || "[]");
  $("jobs").replaceChildren(...jobs.map((j) => {
    const item = document.createElement("li");
    item.textContent = `${new Date(j.at).toLocaleString()} — ${j.status} — ${j.id.slice(0, 8)}`;
    return item;
  }));
}

// ---- wiring ----
$("file").addEventListener("change", () => $("file").files[0] && load($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) load(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
for (const id of ["op", "factor", "filter", "blur", "sigma", "steps"]) {
  $(id).addEventListener("change", () => { showFields(); estimate(); });
}
const mask = $("mask");
mask.addEventListener("pointerdown", (e) => {
  const tool = document.querySelector("input[name=tool]:checked").value;
  state.painting = { kind: tool, size: Number($("brush-size").value), points: [canvasPoint(e)] };
  state.strokes.push(state.painting);
  mask.setPointerCapture(e.pointerId);
  drawMask();
});
mask.addEventListener("pointermove", (e) => {
  if (!state.painting) return;
  state.painting.points.push(canvasPoint(e)); drawMask();
});
const stop = () => { state.painting = null; };
mask.addEventListener("pointerup", stop); mask.addEventListener("pointercancel", stop);
$("undo").addEventListener("click", () => { state.strokes.pop(); drawMask(); });
$("clear").addEventListener("click", () => { state.strokes = []; drawMask(); });
$("invert").addEventListener("click", () => { state.strokes.push({ kind: "invert" }); drawMask(); });
$("slider").addEventListener("input", () => {
  $("before").style.clipPath = `inset(0 ${100 - Number($("slider").value)}% 0 0)`;
});
$("submit").addEventListener("click", submit);
$("cancel").addEventListener("click", cancel);
showFields();
listRecent();
