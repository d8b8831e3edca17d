// The edit page: a client of the public REST API, like any other. The API key lives in this
// tab's sessionStorage and goes out only as `Authorization: Bearer`; the event stream is
// opened with a short-lived stream token, since EventSource cannot send headers.
import { decodeAudio, drawSpectrogram, drawWaveform, pickRange } from "./audio_view.js";

const KEY_STORAGE = "musicedit.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const MAX_STREAM_FAILURES = 5;
const $ = (id) => document.getElementById(id);

const state = {
  caps: null,
  file: null,           // the File chosen for the next edit
  clip: null,           // its decoded AudioBuffer (for drawing and picking a range)
  sourceJobId: null,    // "Edit this result": the job whose result the next edit starts from
  job: null,            // the job shown
  stream: null,         // {source, jobId, lastId, failures}
  originals: new Map(), // job id -> Blob of its input, for jobs submitted from this tab
  results: new Map(),   // job id -> Blob of its result
  active: "edited",     // which player the A/B switch has on
};

class ApiProblem extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** fetch() on the API with the key; a non-2xx answer raises its problem+json. */
async function api(method, path, { body, headers } = {}) {
  const response = await fetch(path, {
    method, body, headers: { Authorization: `Bearer ${apiKey()}`, ...headers },
  });
  if (!response.ok) {
    let problem;
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText, detail: `HTTP ${response.status}` };
    }
    throw new ApiProblem(response.status, problem);
  }
  return response;
}

function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs HTTPS
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function showError(error, box = $("error")) {
  box.replaceChildren();
  if (error instanceof ApiProblem) {
    const title = document.createElement("strong");
    title.textContent = `${error.problem.title || "Error"} (${error.status}): `;
    box.append(title, document.createTextNode(error.problem.detail || ""));
  } else {
    box.textContent = String(error.message || error);
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function describeInstruction(instruction) {
  const steps = instruction.steps || [instruction];
  return steps.map((step) => `${step.operation} ${step.stem}`
    + (step.engine === "separation" ? " (separator)" : "")).join(", then ");
}

// --- the key ---------------------------------------------------------------------------
$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  await start();
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  closeStream();
  for (const id of ["edit-section", "job-section", "recent-section", "forget-key"]) {
    $(id).hidden = true;
  }
  $("key-status").textContent = "Key forgotten.";
});

async function start() {
  try {
    state.caps = await (await api("GET", "/v1/capabilities")).json();
  } catch (error) {
    if (error instanceof ApiProblem && error.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
    }
    showError(error, $("key-status"));
    return;
  }
  $("key-status").textContent = "Key accepted.";
  $("forget-key").hidden = false;
  applyCapabilities(state.caps);
  $("edit-section").hidden = false;
  $("recent-section").hidden = false;
  await loadRecent();
}

// --- capabilities: what the form offers ---------------------------------------------------
function applyCapabilities(caps) {
  const choice = $("instruction-choice");
  choice.replaceChildren(new Option("(type your own below)", ""));
  for (const example of caps.instruction_examples) choice.add(new Option(example, example));
  const chains = caps.features.chains
    ? " Chain up to 4 steps: “remove the guitar, then add piano”." : "";
  $("instruction-help").textContent = caps.stems.length
    ? `Operations: ${caps.operations.join(", ")}. Stems: ${caps.stems.join(", ")}.${chains}`
    : "No worker is running right now: edits wait in the queue until one starts.";
  const limits = caps.limits;
  $("file-limits").textContent = `${limits.input_formats.join(", ")}; `
    + `${limits.min_duration_seconds}–${limits.max_duration_seconds} s; `
    + `up to ${Math.round(limits.max_upload_bytes / 1048576)} MB.`;
  const format = $("output-format");
  format.replaceChildren(...limits.output_formats.map((name) => new Option(name, name)));
  const fields = $("sampling-fields");
  fields.replaceChildren();
  for (const [name, range] of Object.entries(caps.sampling)) {
    const wrapper = document.createElement("div");
    wrapper.className = "field";
    const label = document.createElement("label");
    label.htmlFor = `param-${name}`;
    const fallback = range.default === null ? "drawn per job" : `default ${range.default}`;
    label.textContent = `${name} (${fallback})`;
    const input = document.createElement("input");
    Object.assign(input, {
      id: `param-${name}`, type: "number", name,
      step: range.type === "integer" ? "1" : "any", title: range.description,
    });
    input.dataset.param = name;
    const low = range.minimum ?? range.exclusive_minimum;
    const high = range.maximum ?? range.exclusive_maximum;
    if (low !== null && low !== undefined) input.min = low;
    if (high !== null && high !== undefined && high < 1e15) input.max = high;
    wrapper.append(label, input);
    fields.append(wrapper);
  }
  const engines = caps.engines || {};
  $("engine-field").hidden = !engines.separation;
  $("engine-help").textContent = Object.entries(engines).map(([name, served]) =>
    `${name}: ${served.operations.join("/")} ${served.stems.join(", ")}`).join(". ");
  $("range-fields").hidden = !caps.features.time_ranges;
  $("output-shape-fields").hidden = !caps.features.output_shape;
}

$("instruction-choice").addEventListener("change", () => {
  if ($("instruction-choice").value) $("instruction").value = $("instruction-choice").value;
});

// --- the clip: pick, drop, draw, range --------------------------------------------------
$("file").addEventListener("change", () => {
  if ($("file").files.length) useClip($("file").files[0]);
});

const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  if (event.dataTransfer.files.length) {
    $("file").files = event.dataTransfer.files;
    useClip(event.dataTransfer.files[0]);
  }
});

async function useClip(blob, sourceJobId = null) {
  state.file = sourceJobId ? null : blob;
  state.sourceJobId = sourceJobId;
  $("source-file").hidden = Boolean(sourceJobId);
  $("source-job").hidden = !sourceJobId;
  $("source-job-id").textContent = sourceJobId || "";
  state.clipBlob = blob;
  setRange(null);
  $("clip-view").hidden = false;
  $("clip-audio").src = URL.createObjectURL(blob);
  try {
    state.clip = await decodeAudio(await blob.arrayBuffer());
    drawClip();
    if (state.caps.features.time_ranges) {
      pickRange($("clip-wave"), state.clip.duration, (range) => setRange(range));
    }
  } catch {
    state.clip = null; // the browser cannot decode it; the server still may
  }
}

function currentRange() {
  const start = parseFloat($("start-seconds").value);
  const end = parseFloat($("end-seconds").value);
  return Number.isFinite(start) && Number.isFinite(end) && end > start ? [start, end] : null;
}

function setRange(range) {
  $("start-seconds").value = range ? range[0] : "";
  $("end-seconds").value = range ? range[1] : "";
  drawClip();
}

function drawClip() {
  if (state.clip) drawWaveform($("clip-wave"), state.clip, currentRange());
}

for (const id of ["start-seconds", "end-seconds"]) $(id).addEventListener("input", drawClip);
$("clear-range").addEventListener("click", () => setRange(null));
$("use-file-instead").addEventListener("click", () => {
  state.sourceJobId = null;
  state.file = null;
  $("source-file").hidden = false;
  $("source-job").hidden = true;
  $("clip-view").hidden = true;
  $("file").value = "";
});

// --- submit -----------------------------------------------------------------------------
$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const form = new FormData();
  if (state.sourceJobId) {
    form.append("source_job_id", state.sourceJobId);
  } else if (state.file) {
    form.append("file", state.file, state.file.name || "clip");
  } else {
    showError(new Error("Choose a clip first (or drop one on the box)."));
    return;
  }
  form.append("instruction", $("instruction").value);
  for (const input of document.querySelectorAll("[data-param]")) {
    if (input.value !== "") form.append(input.dataset.param, input.value);
  }
  form.append("output_format", $("output-format").value);
  if (!$("engine-field").hidden && $("engine").value !== "auto") {
    form.append("engine", $("engine").value);
  }
  const range = currentRange();
  if (state.caps.features.time_ranges && range) {
    form.append("start_seconds", range[0]);
    form.append("end_seconds", range[1]);
  }
  if (state.caps.features.output_shape) {
    if ($("output-sample-rate").value) {
      form.append("output_sample_rate", $("output-sample-rate").value);
    }
    if ($("output-channels").value) form.append("output_channels", $("output-channels").value);
  }
  $("submit").disabled = true;
  try {
    const response = await api("POST", "/v1/edits", {
      body: form, headers: { "Idempotency-Key": newIdempotencyKey() },
    });
    const job = await response.json();
    state.originals.set(job.id, state.clipBlob);
    openJob(job);
    loadRecent();
  } catch (error) {
    showError(error);
  } finally {
    $("submit").disabled = false;
  }
});

// --- a job: live state from its event stream ---------------------------------------------
function openJob(job) {
  state.job = job;
  $("job-section").hidden = false;
  $("results").hidden = true;
  $("job-error").hidden = true;
  $("job-id").textContent = job.id;
  $("job-instruction").textContent = describeInstruction(job.instruction);
  render(job);
  if (TERMINAL.has(job.status)) {
    closeStream();
    finished(job);
  } else {
    follow(job.id);
  }
}

function render(job) {
  if (!state.job || job.id !== state.job.id) return;
  state.job = job;
  $("job-state").textContent = job.status + (job.cancel_requested && !TERMINAL.has(job.status)
    ? " (cancel requested)" : "");
  $("job-queue").textContent = job.queue_position === null ? "–" : String(job.queue_position);
  $("job-progress").value = job.progress.fraction;
  $("job-percent").textContent = `${Math.round(job.progress.fraction * 100)} %`
    + (job.progress.frames_total ? ` (${job.progress.frames_done} of `
      + `${job.progress.frames_total} frames)` : "");
  $("cancel").hidden = TERMINAL.has(job.status);
}

function closeStream() {
  if (state.stream) state.stream.source.close();
  state.stream = null;
}

async function follow(jobId, resumeAfter = null, failures = 0) {
  closeStream();
  let token;
  try {
    token = await (await api("POST", `/v1/edits/${jobId}/events/token`)).json();
  } catch (error) {
    showError(error, $("job-error"));
    return;
  }
  let url = `/v1/edits/${jobId}/events?token=${encodeURIComponent(token.token)}`;
  if (resumeAfter) url += `&resume_after=${encodeURIComponent(resumeAfter)}`;
  const source = new EventSource(url);
  const stream = { source, jobId, lastId: resumeAfter, failures };
  state.stream = stream;
  source.addEventListener("job", (event) => {
    stream.lastId = event.lastEventId;
    stream.failures = 0;
    render(JSON.parse(event.data));
  });
  source.addEventListener("end", (event) => {
    const job = JSON.parse(event.data);
    source.close();
    if (state.stream === stream) state.stream = null;
    render(job);
    if (state.job && state.job.id === job.id) finished(job);
    loadRecent();
  });
  source.addEventListener("error", () => {
    // CONNECTING: the browser reconnects by itself (with Last-Event-ID). CLOSED: refused,
    // e.g. the token expired: reconnect with a new token, resuming after the last event.
    if (source.readyState !== EventSource.CLOSED || state.stream !== stream) return;
    if (stream.failures + 1 >= MAX_STREAM_FAILURES) {
      showError(new Error("Lost the job's event stream; reopen it from the list below."),
        $("job-error"));
      return;
    }
    setTimeout(() => follow(jobId, stream.lastId, stream.failures + 1), 1000);
  });
}

$("cancel").addEventListener("click", async () => {
  try {
    render(await (await api("DELETE", `/v1/edits/${state.job.id}`)).json());
  } catch (error) {
    showError(error, $("job-error"));
  }
});

// --- results: players, waveforms, spectrograms, A/B, download -------------------------------
async function finished(job) {
  if (job.status === "failed") {
    $("job-error").textContent = job.error || "The edit failed.";
    $("job-error").hidden = false;
  }
  if (job.status !== "succeeded") return;
  let blob = state.results.get(job.id);
  try {
    if (!blob) {
      // with S3 storage this follows a redirect to a presigned URL (the key is not sent on)
      blob = await (await api("GET", `/v1/edits/${job.id}/audio`)).blob();
      state.results.set(job.id, blob);
    }
  } catch (error) {
    showError(error, $("job-error"));
    return;
  }
  if (!state.job || state.job.id !== job.id) return;
  const edited = URL.createObjectURL(blob);
  $("edited-audio").src = edited;
  $("download").href = edited;
  $("download").download = `edited-${job.id}.${job.output_format}`;
  const original = state.originals.get(job.id);
  $("original-audio").hidden = !original;
  $("original-missing").hidden = Boolean(original);
  $("original-audio").src = original ? URL.createObjectURL(original) : "";
  $("edit-again").hidden = !state.caps.features.source_jobs;
  setActive("edited");
  $("results").hidden = false;
  await drawAudio(blob, "edited");
  if (original) {
    await drawAudio(original, "original");
  } else {
    for (const kind of ["wave", "spec"]) {
      const canvas = $(`original-${kind}`);
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    }
  }
  $("results").dataset.drawn = job.id;
}

async function drawAudio(blob, name) {
  try {
    const buffer = await decodeAudio(await blob.arrayBuffer());
    drawWaveform($(`${name}-wave`), buffer);
    drawSpectrogram($(`${name}-spec`), buffer);
  } catch {
    // not decodable by this browser: the player may still play it
  }
}

function player(name) {
  return $(`${name}-audio`);
}

function setActive(name) {
  state.active = name;
  const edited = name === "edited";
  $("ab-switch").setAttribute("aria-pressed", String(edited));
  $("ab-switch").textContent = edited
    ? "Listening to B (edited): switch to A" : "Listening to A (original): switch to B";
  $("edited-view").classList.toggle("active", edited);
  $("original-view").classList.toggle("active", !edited);
}

$("ab-switch").addEventListener("click", () => {
  const from = player(state.active);
  const toName = state.active === "edited" ? "original" : "edited";
  const to = player(toName);
  if (toName === "original" && $("original-audio").hidden) return;
  const playing = !from.paused;
  const time = from.currentTime;
  from.pause();
  to.currentTime = Number.isFinite(to.duration) ? Math.min(time, to.duration) : time;
  setActive(toName);
  if (playing) to.play();
});

for (const name of ["original", "edited"]) {
  player(name).addEventListener("play", () => {
    const other = player(name === "edited" ? "original" : "edited");
    if (!other.paused) other.pause();
    setActive(name);
  });
}

$("edit-again").addEventListener("click", () => {
  const job = state.job;
  useClip(state.results.get(job.id), job.id);
  $("instruction").focus();
});

// --- recent jobs -------------------------------------------------------------------------
async function loadRecent() {
  let page;
  try {
    page = await (await api("GET", "/v1/edits?limit=10")).json();
  } catch (error) {
    showError(error);
    return;
  }
  const list = $("recent");
  list.replaceChildren();
  for (const job of page.items) {
    const item = document.createElement("li");
    const when = new Date(job.timings.created_at * 1000).toLocaleTimeString();
    const text = document.createElement("span");
    text.textContent = `${when} · ${describeInstruction(job.instruction)} · ${job.status}`;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.setAttribute("aria-label", `Open job ${job.id} (${describeInstruction(job.instruction)})`);
    open.dataset.jobId = job.id;
    open.addEventListener("click", () => openJob(job));
    item.append(text, open);
    list.append(item);
  }
}

$("refresh-recent").addEventListener("click", loadRecent);

if (apiKey()) start();
