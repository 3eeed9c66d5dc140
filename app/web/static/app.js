// The atrous page: sends one image to POST /segment and shows what came back.
// No framework, no build step: fetch + FormData, a <canvas> for the overlay.
// Every URL is relative, so the page works under whatever path a proxy serves it from.

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "atrous.apiKey";
const MAX_CANVAS_SIDE = 2048; // display only: bigger images are drawn scaled down

const state = {
  model: null, // GET /v1/model (or /v1/models/{name}) body, once known
  modelName: null, // the model picked when the server has several; null: its default
  picked: null, // the latest image chosen: {file, bitmap} (bitmap null: not displayable here)
  shown: null, // what the result on screen was computed from: {file, bitmap}
  mask: null, // HTMLImageElement of the shown mask PNG, or null (overlay format)
  urls: [], // object URLs of the shown result, revoked when the next one arrives
  latest: 0, // number of the latest /segment call: answers to older ones are dropped
};

// What to say about an error status; the server's envelope message follows it.
const STATUS_TITLES = {
  400: "The image could not be read.",
  401: "This server needs an API key.",
  404: "Not found.",
  413: "Too large.",
  415: "This file cannot be segmented.",
  422: "The request was refused.",
  429: "Too many requests.",
  500: "The server failed (a bug: its log has the details).",
  502: "The proxy in front of the server failed.",
  503: "The server is not ready or too busy.",
  504: "The server ran out of time for this image.",
};

// ----------------------------------------------------------------------------- requests

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class RequestFailed extends Error {
  constructor(status, code, message, requestId, retryAfter) {
    super(message);
    Object.assign(this, { status, code, requestId, retryAfter });
  }
}

// fetch, turning every failure (network, non-2xx) into a RequestFailed with a message.
async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...init.headers } });
  } catch (error) {
    // Also a key with characters a header cannot carry (fetch throws a TypeError).
    const message = /header|ByteString|ISO-8859-1/i.test(String(error))
      ? "The API key may only contain plain ASCII characters."
      : "Could not reach the server: is it running, and is this page served by it?";
    throw new RequestFailed(0, "network", message, null, null);
  }
  if (response.ok) return response;
  let code = null;
  let message = response.statusText || "error";
  let requestId = response.headers.get("X-Request-ID");
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code ?? null;
      message = body.error.message ?? message;
      requestId = body.request_id ?? requestId;
    }
  } catch {
    // Not our envelope (e.g. a proxy's HTML page): keep the status text.
  }
  const retryAfter = response.headers.get("Retry-After");
  throw new RequestFailed(response.status, code, message, requestId, retryAfter);
}

// ---------------------------------------------------------------------------- messages

// A server message as a sentence: "the request deadline passed" -> "The request deadline passed."
function sentence(text) {
  const trimmed = String(text ?? "").trim();
  if (!trimmed) return "";
  const capitalised = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capitalised) ? capitalised : `${capitalised}.`;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  const parts = [];
  if (error.status === 401) {
    // The server's own text speaks to API clients (headers); say what to do on this page.
    const sent = $("api-key").value.trim() !== "";
    title.textContent = sent ? "The API key was refused." : STATUS_TITLES[401];
    if (sent) parts.push(sentence(error.message));
    parts.push(`${sent ? "Check" : "Enter"} it in the API key field below the options, ` +
      "then press “Segment again”.");
  } else {
    title.textContent = STATUS_TITLES[error.status] ?? (error.status ? `HTTP ${error.status}.` : "");
    parts.push(sentence(error.message));
    if (error.status === 503 && error.retryAfter) parts.push(`Try again in ${error.retryAfter} s.`);
  }
  box.append(title, " ", parts.join(" "));
  const details = [error.status ? `HTTP ${error.status}` : null, error.code,
    error.requestId ? `request id ${error.requestId}` : null].filter(Boolean);
  if (details.length) {
    const small = document.createElement("small");
    small.textContent = ` (${details.join(", ")})`;
    box.append(small);
  }
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
  if (error.status === 401) $("api-key").focus();
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function setStatus(text) {
  $("status").textContent = text;
}

// --------------------------------------------------------------------------- model card

const CARD_FIELDS = [
  ["Model", (m) => m.name && `${m.name}, version ${m.version}`],
  ["Backbone", (m) => m.backbone],
  ["Output stride", (m) => m.output_stride],
  ["Input size", (m) => `${m.input_size} × ${m.input_size}`],
  ["Head", (m) => m.head],
  ["Classes", (m) => m.num_classes],
  ["Runtime", (m) => m.runtime && [m.runtime, m.runtime_version].filter(Boolean).join(" ")],
  ["Device", (m) => m.device],
  ["Precision", (m) => m.precision],
  ["Computes in", (m) => m.inference_precision &&
    [m.inference_precision, m.inference_precision_reason].filter(Boolean).join(" — ")],
  ["Weights", (m) => m.weights],
  ["Trained", (m) => (m.trained ? "yes" : "no")],
];

// The picked model's URLs (relative); the server's default model without a pick.
function modelPath(leaf) {
  if (state.modelName === null) return leaf === "segment" ? "segment" : "v1/model";
  const base = `v1/models/${encodeURIComponent(state.modelName)}`;
  return leaf === "segment" ? `${base}/segment` : base;
}

// Offers a choice when GET /v1/models lists more than one model with an available version.
async function loadModelList() {
  let models;
  try {
    models = (await (await call("v1/models")).json()).models;
  } catch {
    return; // an older server, or no key yet: the default model is all there is
  }
  const usable = models.filter((m) => m.versions.some((v) => v.state === "available"));
  const picker = $("model-picker");
  if (usable.length < 2 || picker.options.length) return;
  for (const model of usable) {
    const newest = model.versions.find((v) => v.state === "available");
    const option = new Option(`${model.name} (version ${newest.version})` +
      (model.default ? " — default" : ""), model.name, model.default, model.default);
    picker.add(option);
  }
  $("model-choice").hidden = false;
}

async function loadModel() {
  try {
    const response = await call(modelPath("info"));
    state.model = await response.json();
  } catch (error) {
    if (error.status === 503) {
      const seconds = Number(error.retryAfter) || 2;
      $("model-status").textContent = `${error.message}: asking again in ${seconds} s…`;
      setTimeout(loadModel, seconds * 1000);
    } else {
      const keyed = $("api-key").value.trim() !== "";
      $("model-status").textContent = error.status !== 401
        ? `Could not load the model description: ${sentence(error.message)}`
        : keyed ? "The API key was refused: check it in the API key field."
          : "This server needs an API key: enter it in the API key field, then pick an image.";
    }
    return;
  }
  const card = $("model-card");
  card.replaceChildren();
  for (const [name, value] of CARD_FIELDS) {
    const text = value(state.model);
    if (text === undefined || text === null || text === "") continue; // e.g. no runtime yet
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = String(text);
    card.append(dt, dd);
  }
  card.hidden = false;
  $("model-status").hidden = true;
  loadModelList();
  // What the card says when folded.
  const m = state.model;
  $("model-summary").textContent = [m.backbone, m.num_classes && `${m.num_classes} classes`,
    m.runtime, m.trained === false ? "untrained" : null].filter(Boolean).join(" · ");
  const banner = $("untrained");
  banner.hidden = state.model.trained;
  banner.textContent = state.model.trained ? "" : `Untrained weights (${state.model.weights}): ` +
    "this server's masks are meaningless. Serve a trained checkpoint to see real segmentations.";
}

// ----------------------------------------------------------------------- option fields

// Every query parameter of POST /segment in /openapi.json except these gets a form field,
// built from its schema by one of the builders below.
const OWN_FIELDS = new Set(["format"]);

function resolveSchema(schema, spec) {
  let s = schema ?? {};
  for (let guard = 0; guard < 8; guard += 1) {
    if (s.$ref) {
      const target = s.$ref.replace(/^#\//, "").split("/").reduce((o, k) => o?.[k], spec);
      s = { ...target, ...s, $ref: undefined };
    } else if (s.anyOf || s.oneOf) {
      const options = (s.anyOf ?? s.oneOf).filter((o) => o.type !== "null");
      s = { ...options[0], ...s, anyOf: undefined, oneOf: undefined };
    } else if (s.allOf && s.allOf.length === 1) {
      s = { ...s.allOf[0], ...s, allOf: undefined };
    } else {
      break;
    }
  }
  return s;
}

function optionField(param, schema) {
  const id = `option-${param.name}`;
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = param.name.replaceAll("_", " ");
  let input;
  if (schema.enum) {
    input = document.createElement("select");
    if (schema.default === undefined) input.append(new Option("(default)", ""));
    for (const value of schema.enum) input.append(new Option(String(value), String(value)));
    if (schema.default !== undefined) input.value = String(schema.default);
  } else if (schema.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = schema.default === true;
    wrapper.classList.add("checkbox");
  } else {
    input = document.createElement("input");
    if (schema.type === "integer" || schema.type === "number") {
      input.type = "number";
      input.step = schema.type === "integer" ? "1" : "any";
      if (schema.minimum !== undefined) input.min = schema.minimum;
      if (schema.maximum !== undefined) input.max = schema.maximum;
    } else {
      input.type = "text";
      if (schema.type === "array") input.placeholder = "comma-separated";
    }
    if (schema.default !== undefined && schema.default !== null) {
      input.value = Array.isArray(schema.default) ? schema.default.join(",") : schema.default;
    }
  }
  input.id = id;
  input.dataset.param = param.name;
  input.dataset.kind = schema.type === "array" ? "array" : (schema.type ?? "string");
  const help = param.description ?? schema.description;
  wrapper.append(label, input);
  if (help) {
    const hint = document.createElement("p");
    hint.className = "muted";
    hint.id = `${id}-hint`;
    hint.textContent = help;
    input.setAttribute("aria-describedby", hint.id);
    wrapper.append(hint);
  }
  return wrapper;
}

async function loadOptions() {
  let spec;
  try {
    spec = await (await call("openapi.json")).json();
  } catch {
    return; // no schema (disabled behind a proxy?): the format field is still there
  }
  const params = spec?.paths?.["/segment"]?.post?.parameters ?? [];
  const fields = params
    .filter((p) => p.in === "query" && !OWN_FIELDS.has(p.name))
    .map((p) => optionField(p, resolveSchema(p.schema, spec)));
  $("extra-options").replaceChildren(...fields);
}

// The query string: format plus every extra option the user set (empty fields are left out,
// so the server's defaults apply).
function queryString() {
  const query = new URLSearchParams({ format: $("format").value });
  for (const input of $("extra-options").querySelectorAll("[data-param]")) {
    const name = input.dataset.param;
    if (input.type === "checkbox") {
      query.append(name, input.checked ? "true" : "false");
    } else if (input.dataset.kind === "array") {
      for (const part of input.value.split(",").map((s) => s.trim()).filter(Boolean)) {
        query.append(name, part);
      }
    } else if (input.value.trim() !== "") {
      query.append(name, input.value.trim());
    }
  }
  return query;
}

// ----------------------------------------------------------------------------- results

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the mask could not be displayed"));
    image.src = url;
  });
}

function fitCanvas(canvas, width, height) {
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(width, height));
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  return canvas.getContext("2d");
}

function drawInput() {
  const { bitmap } = state.shown;
  const canvas = $("input-canvas");
  const note = $("input-note");
  canvas.hidden = !bitmap;
  note.hidden = Boolean(bitmap);
  note.textContent = bitmap ? "" : "This browser cannot display this file's format.";
  if (bitmap) {
    fitCanvas(canvas, bitmap.width, bitmap.height).drawImage(bitmap, 0, 0, canvas.width,
      canvas.height);
  }
}

function drawOverlay() {
  if (!state.mask) return;
  const { bitmap } = state.shown;
  const canvas = $("overlay-canvas");
  const context = fitCanvas(canvas, state.mask.naturalWidth, state.mask.naturalHeight);
  if (bitmap) context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  context.globalAlpha = bitmap ? Number($("opacity").value) / 100 : 1;
  context.imageSmoothingEnabled = false; // class ids: nearest neighbour, never blended edges
  context.drawImage(state.mask, 0, 0, canvas.width, canvas.height);
  context.globalAlpha = 1;
  context.imageSmoothingEnabled = true;
}

// The VOC palette (same bit spreading as the server's model.labels.voc_colormap), for when
// /v1/model could not be read.
function vocColor(id) {
  const rgb = [0, 0, 0];
  for (let shift = 7, c = id; shift >= 0; shift -= 1, c >>= 3) {
    for (let channel = 0; channel < 3; channel += 1) rgb[channel] |= ((c >> channel) & 1) << shift;
  }
  return rgb;
}

function classColor(id) {
  const known = state.model?.classes?.find((c) => c.id === id);
  return known ? known.color : vocColor(id);
}

// Classes of a palette PNG (format=png): count its colours and name them from /v1/model.
function classesFromMask(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const counts = new Map();
  for (let i = 0; i < pixels.length; i += 4) {
    const key = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const total = canvas.width * canvas.height;
  const classes = state.model?.classes ?? [];
  return [...counts].map(([key, count]) => {
    const rgb = [key >> 16, (key >> 8) & 255, key & 255];
    const match = classes.find((c) => c.color.every((v, i) => v === rgb[i]));
    return { id: match ? match.id : -1, label: match ? match.label : `rgb(${rgb})`,
      pixels: count, fraction: count / total, color: rgb };
  });
}

function showLegend(classes, note) {
  const body = $("legend").tBodies[0];
  body.replaceChildren();
  $("legend-note").hidden = !note;
  $("legend-note").textContent = note ?? "";
  $("legend").hidden = Boolean(note);
  const sorted = [...classes].sort((a, b) => b.fraction - a.fraction);
  for (const item of sorted) {
    const row = body.insertRow();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = item.color ?? classColor(item.id);
    swatch.style.backgroundColor = `rgb(${r} ${g} ${b})`;
    const name = document.createElement("th");
    name.scope = "row";
    name.append(swatch, item.label);
    row.append(name);
    row.insertCell().textContent = `${(item.fraction * 100).toFixed(1)}%`;
    row.insertCell().textContent = item.pixels.toLocaleString("en");
  }
}

function showTimings(header, roundTripMs) {
  const parts = [];
  for (const metric of (header ?? "").split(",")) {
    const [name, ...params] = metric.split(";").map((s) => s.trim());
    const dur = params.find((p) => p.toLowerCase().startsWith("dur="));
    if (name && dur) parts.push(`${name} ${Number(dur.slice(4)).toFixed(1)} ms`);
  }
  parts.push(`round trip ${roundTripMs.toFixed(0)} ms`);
  $("timings").textContent = parts.join(" · ");
}

function baseName() {
  const name = state.shown?.file.name || "pasted";
  return name.replace(/\.[^.]*$/, "") || "image";
}

// Reads a successful /segment answer; the caller shows it with showResult.
async function readResult(response, format, roundTripMs) {
  const result = { format, roundTripMs, timing: response.headers.get("Server-Timing"),
    classes: null, maskBlob: null, blob: null };
  if (format === "json") {
    const body = await response.json();
    const bytes = Uint8Array.from(atob(body.mask_png), (c) => c.charCodeAt(0));
    result.maskBlob = new Blob([bytes], { type: "image/png" });
    result.classes = body.classes;
  } else {
    result.blob = await response.blob();
    if (format === "png") result.maskBlob = result.blob;
  }
  return result;
}

// Shows a result unless a newer call started meanwhile; says whether it did.
async function showResult(result, picked, number) {
  const { format, maskBlob } = result;
  const maskUrl = maskBlob ? URL.createObjectURL(maskBlob) : null;
  const mask = maskUrl ? await loadImage(maskUrl) : null;
  if (number !== state.latest) {
    if (maskUrl) URL.revokeObjectURL(maskUrl);
    return false;
  }
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
  if (maskUrl) state.urls.push(maskUrl);
  const download = result.blob ? objectUrl(result.blob) : maskUrl;
  state.mask = mask;
  state.shown = picked;

  drawInput();
  const overlayImage = $("overlay-image");
  $("mask-image").hidden = !state.mask;
  $("mask-note").hidden = Boolean(state.mask);
  $("mask-note").textContent = state.mask ? "" : "The overlay format returns no separate mask.";
  $("overlay-canvas").hidden = !state.mask;
  overlayImage.hidden = Boolean(state.mask);
  $("opacity-field").hidden = !state.mask || !picked.bitmap;
  if (state.mask) {
    $("mask-image").src = state.mask.src;
    drawOverlay();
    showLegend(result.classes ?? classesFromMask(state.mask));
  } else {
    overlayImage.src = download;
    showLegend([], "The overlay format has no class list: choose json or png for one.");
  }
  showTimings(result.timing, result.roundTripMs);
  const link = $("download");
  link.href = download;
  const png = format !== "overlay";
  link.download = `${baseName()}-${png ? "mask.png" : "overlay.jpg"}`;
  link.textContent = png ? "Download the mask (PNG)" : "Download the overlay (JPEG)";
  $("placeholder").hidden = true;
  $("results").hidden = false;
  // One column (a phone): bring the result up if it starts below the middle of the screen.
  // Side by side it is already at the top, and the page must not jump.
  const top = $("results").getBoundingClientRect().top;
  if (top > window.innerHeight / 2) $("results").scrollIntoView({ block: "start" });
  return true;
}

// ------------------------------------------------------------------------------- flow

async function segment() {
  const picked = state.picked;
  if (!picked) return;
  const number = ++state.latest; // a newer call (another image, new options) wins
  $("segment-form").setAttribute("aria-busy", "true");
  clearError();
  setStatus("Segmenting…");
  const format = $("format").value;
  const body = new FormData();
  body.append("image", picked.file, picked.file.name || "pasted.png");
  const started = performance.now();
  let result = null;
  let failure = null;
  try {
    const response = await call(`${modelPath("segment")}?${queryString()}`,
      { method: "POST", body });
    result = await readResult(response, format, performance.now() - started);
  } catch (error) {
    failure = error instanceof RequestFailed ? error
      : new RequestFailed(0, null, String(error.message ?? error), null, null);
  }
  if (number !== state.latest) return; // superseded while it ran
  try {
    if (result && !(await showResult(result, picked, number))) return;
  } catch (error) {
    failure = new RequestFailed(0, null, String(error.message ?? error), null, null);
  }
  $("segment-form").removeAttribute("aria-busy");
  $("run").disabled = false;
  if (failure) {
    setStatus("");
    showError(failure);
  } else {
    setStatus("Done.");
    if (!state.model) loadModel(); // e.g. the key was missing when the page opened
  }
}

async function useFile(file) {
  if (!file) return;
  let bitmap = null;
  try {
    bitmap = await createImageBitmap(file); // applies the EXIF orientation, as the server does
  } catch {
    // Not an image to this browser (TIFF, or not an image at all): the server will say.
  }
  state.picked = { file, bitmap };
  // The input keeps no value, so that picking the same file again (after an error, a new
  // key or new options) is a change and segments again; the name is shown here instead.
  $("image-file").value = "";
  $("picked").textContent = file.name ? `Picked: ${file.name}` : "Picked: a pasted image";
  $("picked").hidden = false;
  await segment();
}

function firstFile(list) {
  return [...(list ?? [])].find((f) => f.kind === undefined || f.kind === "file");
}

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  key.addEventListener("change", () => {
    const value = key.value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
    if (!state.model) loadModel();
  });

  $("image-file").addEventListener("change", (event) => useFile(event.target.files[0]));
  $("model-picker").addEventListener("change", (event) => {
    const option = event.target.selectedOptions[0];
    state.modelName = option.defaultSelected ? null : option.value;
    state.model = null;
    loadModel(); // its classes and card; the next image goes to it
  });
  $("segment-form").addEventListener("submit", (event) => {
    event.preventDefault();
    segment();
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").value = `${$("opacity").value}%`;
    drawOverlay();
  });

  // Drop anywhere: without this, a file dropped beside the zone would navigate away.
  const zone = $("drop-zone");
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) zone.classList.remove("dragging");
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useFile(firstFile(event.dataTransfer?.files));
  });
  // Paste an image (a screenshot, a copied file); pasting text into a field stays untouched.
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items ?? [])].find((i) => i.kind === "file");
    if (!item) return;
    event.preventDefault();
    useFile(item.getAsFile());
  });

  loadModel();
  loadOptions();
}

init();
