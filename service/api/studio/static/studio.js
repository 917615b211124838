// LatentMix Studio: upload and invert, mix with weights, sample, morph, follow jobs.
// Plain ES modules, no build step; every request goes to the API that served the page.

import * as api from "./api.js";
import { latentCanvas, readLatent } from "./latent_preview.js";
import { zipStored } from "./zip.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_METHOD = "nin/chm";
const FALLBACK_METHODS = ["lerp", "slerp", "fix/0", "fix/m", "fix/chm", "nin/0", "nin/m", "nin/chm"];
const LIVE_MIX_DELAY_MS = 400;
const RECONNECT_MS = 5000;

const state = {
  schema: null, // /openapi.json, for what this server offers (methods, /morph, form fields)
  model: null, // the default model's entry of GET /models
  cards: new Map(), // latent id -> card
  selection: [], // latent ids, in the order they were selected (the morph's keyframe order)
  weights: [], // one per selected latent, summing to 1
  jobs: new Map(), // job id -> row
};

// --- small helpers ------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const round = (value, digits = 3) => Number(value).toPrecision(digits).replace(/\.?0+(e|$)/, "$1");
const percent = (weight) => `${Math.round(weight * 100)}%`;
const shortId = (id) => id.slice(0, 8);

function showError(target, error) {
  target.textContent = error ? error.detail || error.message || String(error) : "";
}

function nameOf(id) {
  return state.cards.get(id)?.name || shortId(id);
}

function debounce(fn, delay) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), delay);
  };
}

async function imageInto(img, url, onBlob) {
  const blob = await api.fetchBlob(url);
  img.src = URL.createObjectURL(blob);
  await img.decode().catch(() => {});
  onBlob?.(blob);
  return blob;
}

function saveBlob(blob, filename) {
  const link = element("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// --- the server: schema, model, API key ----------------------------------------------------

function requestSchema(path) {
  const body = state.schema?.paths?.[path]?.post?.requestBody?.content;
  const schema = body?.["application/json"]?.schema || body?.["multipart/form-data"]?.schema;
  return resolve(schema);
}

function resolve(schema) {
  const ref = schema?.$ref || schema?.allOf?.[0]?.$ref;
  if (!ref) return schema;
  return ref.split("/").slice(1).reduce((node, key) => node?.[key], state.schema);
}

async function connect() {
  const info = $("server-info");
  try {
    state.schema = await api.getJson("openapi.json");
    const { models } = await api.getJson("models");
    state.model = models.find((model) => model.default) || models[0] || null;
  } catch (error) {
    info.textContent = error.status === 401 ? "This server needs an API key." : `Not connected: ${error.detail}`;
    if (error.status === 0 || error.status >= 500) setTimeout(connect, RECONNECT_MS); // it may come up
    return false;
  }
  const card = state.model?.card;
  info.textContent = state.model
    ? `Model ${state.model.name}` +
      (card ? ` · ${card.family} · ${card.default_size} px` : "") +
      ` · ${state.model.workers} worker${state.model.workers === 1 ? "" : "s"}`
    : "No model configured";
  setUpMethods();
  setUpInversionMethods(card);
  setUpMorph();
  return true;
}

function setUpKeyForm() {
  const form = $("key-form");
  const input = $("api-key");
  if (api.apiKey.get()) form.hidden = false;
  api.onUnauthorized((error) => {
    form.hidden = false;
    showError($("key-error"), error);
    if (!input.value) input.focus();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    api.apiKey.set(input.value.trim());
    input.value = "";
    input.placeholder = api.apiKey.get() ? "key saved for this tab" : "this server needs a key";
    showError($("key-error"), null);
    if (await connect()) $("key-error").textContent = "";
  });
  $("forget-key").addEventListener("click", () => {
    api.apiKey.set("");
    input.placeholder = "this server needs a key";
  });
  if (api.apiKey.get()) input.placeholder = "key saved for this tab";
}

/** The paper's method names, without the short aliases (`fix` = `fix/0`). */
function canonicalMethods(methods) {
  return methods.filter((method) => method.includes("/") || ["lerp", "slerp"].includes(method));
}

function setUpMethods() {
  const select = $("mix-method");
  const current = select.value || DEFAULT_METHOD;
  const methods = requestSchema("/mix")?.properties?.method?.enum || FALLBACK_METHODS;
  const canonical = canonicalMethods(methods);
  select.replaceChildren(...canonical.map((method) => element("option", { value: method, text: method })));
  select.value = canonical.includes(current) ? current : canonical[0];
}

/** The inversion-method picker, when POST /latents takes an `inversion` field. */
function setUpInversionMethods(card) {
  const form = requestSchema("/latents");
  const field = form?.properties?.inversion;
  const methods = field?.enum || field?.anyOf?.find((option) => option.enum)?.enum || card?.inversion_methods;
  if (!field || !methods?.length) return;
  $("upload-method").replaceChildren(
    element("option", { value: "", text: "model default" }),
    ...methods.map((method) => element("option", { value: method, text: method })),
  );
  $("upload-method-label").hidden = false;
}

// --- latents: upload, inversion, cards -----------------------------------------------------

function addFiles(files) {
  showError($("upload-error"), null);
  for (const file of files) upload(newCard(file)).catch(() => {});
}

function newCard(file) {
  const isLatent = file.name.toLowerCase().endsWith(".safetensors");
  const card = { id: null, name: file.name, file, isLatent, status: "uploading", record: null };
  const thumb = isLatent ? element("div", { class: "thumb latent-thumb", text: "latent" }) : element("img", { class: "thumb", alt: file.name });
  if (!isLatent) thumb.src = URL.createObjectURL(file);
  const checkbox = element("input", { type: "checkbox", class: "pick", "aria-label": `Select ${file.name}`, disabled: true });
  const stats = element("dl", { class: "stats" });
  const progress = element("progress", { max: 1, value: 0, "aria-label": `Progress of ${file.name}` });
  const status = element("span", { class: "badge", text: "uploading" });
  const remove = element("button", { type: "button", class: "remove quiet", "aria-label": `Remove ${file.name} from the page`, text: "×" });
  const error = element("p", { class: "error", role: "alert" });
  card.el = element(
    "li",
    { class: "card", "data-status": "uploading" },
    element("label", { class: "thumb-frame" }, checkbox, thumb),
    element("div", { class: "meta" }, element("div", { class: "title" }, element("strong", { text: file.name, title: file.name }), status, remove), progress, error, stats),
  );
  Object.assign(card, { checkbox, thumb, stats, progress, statusEl: status, errorEl: error });
  checkbox.addEventListener("change", () => toggleSelection(card.id, checkbox.checked));
  remove.addEventListener("click", () => removeCard(card));
  $("cards").append(card.el);
  if (isLatent) previewLatent(card);
  return card;
}

async function previewLatent(card) {
  try {
    const canvas = latentCanvas(readLatent(await card.file.arrayBuffer()));
    canvas.className = "thumb";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${card.name}: latent channels 1-3 as RGB`);
    card.thumb.replaceWith(canvas);
    card.thumb = canvas;
  } catch {
    /* the API says what is wrong with the file */
  }
}

function setCardStatus(card, status, progress = null) {
  card.status = status;
  card.el.dataset.status = status;
  card.statusEl.textContent = status;
  card.statusEl.className = `badge ${status}`;
  card.progress.hidden = progress === null;
  if (progress !== null) card.progress.value = progress;
  card.checkbox.disabled = !card.id || status === "failed";
}

async function upload(card) {
  const form = new FormData();
  form.append(card.isLatent ? "latents" : "images", card.file, card.file.name);
  const fields = { prompt: "upload-prompt", size: "upload-size", inversion_steps: "upload-steps", guidance_scale: "upload-guidance", inversion: "upload-method" };
  for (const [name, id] of Object.entries(fields)) {
    if ($(id).value.trim() && !(name === "inversion" && $("upload-method-label").hidden)) form.append(name, $(id).value.trim());
  }
  let created;
  try {
    created = await api.postForm("latents", form, (fraction) => setCardStatus(card, "uploading", fraction));
  } catch (error) {
    $("upload-error").append(element("span", { text: `${card.name}: ${error.detail}` }), element("br"));
    card.el.remove();
    throw error;
  }
  const entry = created.latents[0];
  const existing = state.cards.get(entry.id);
  if (existing) {
    card.el.remove(); // the same latent again: its card is already here
    existing.el.classList.add("flash");
    setTimeout(() => existing.el.classList.remove("flash"), 1200);
    return;
  }
  card.id = entry.id;
  card.el.dataset.latentId = entry.id;
  state.cards.set(entry.id, card);
  if (created.job) trackJob(created.job, `invert ${card.name}`);
  if (entry.status === "pending") {
    setCardStatus(card, "inverting", 0);
    try {
      await api.watchJob(entry.job, (job) => {
        setCardStatus(card, "inverting", job.progress.total ? job.progress.done / job.progress.total : 0);
        updateJob(job);
      });
    } catch (error) {
      showError(card.errorEl, error);
    }
  }
  await refreshRecord(card);
}

async function refreshRecord(card) {
  try {
    card.record = await api.getJson(`latents/${card.id}`);
  } catch (error) {
    setCardStatus(card, "failed");
    showError(card.errorEl, error);
    return;
  }
  if (card.record.status === "failed") {
    setCardStatus(card, "failed");
    card.errorEl.textContent = card.record.error || "inversion failed";
    return;
  }
  setCardStatus(card, card.record.status);
  renderStats(card);
  updateSelectionInfo();
}

/** Fields of a latent record that name a reconstruction error (issue 13's records), wherever
 * the record keeps them. */
function reconstructionErrors(record) {
  const found = [];
  const visit = (node, path) => {
    for (const [key, value] of Object.entries(node || {})) {
      if (key.includes("reconstruction") && (typeof value === "number" || typeof value === "object")) found.push([key, value]);
      else if (key === "diagnostics" && typeof value === "object") visit(value, `${path}${key}.`);
    }
  };
  visit(record, "");
  return found;
}

function renderStats(card) {
  const record = card.record;
  const rows = [];
  const method = record.inversion || record.settings?.method || (record.source === "upload" ? "uploaded" : state.model?.card?.inversion_methods?.[0]);
  if (method) rows.push(["method", method]);
  if (record.settings?.steps) rows.push(["steps", record.settings.steps]);
  if (record.shape) rows.push(["shape", record.shape.join("×")]);
  if (record.norm !== null && record.norm !== undefined) {
    const dims = (record.shape || []).reduce((product, side) => product * side, 1);
    rows.push(["norm", `${round(record.norm, 4)} (√d = ${round(Math.sqrt(dims), 4)})`]);
  }
  for (const [key, value] of reconstructionErrors(record)) {
    const text = typeof value === "number" ? round(value) : Object.entries(value).map(([name, number]) => `${name} ${round(number)}`).join(", ");
    rows.push([key.replaceAll("_", " "), text]);
  }
  const children = rows.flatMap(([term, value]) => [element("dt", { text: term }), element("dd", { text: String(value) })]);
  if (record.channel_means?.length) {
    children.push(element("dt", { text: "channel means" }), element("dd", {}, meansChart(record.channel_means)));
  }
  card.stats.replaceChildren(...children);
}

/** One bar per channel mean, up from the middle line when positive, down when negative. */
function meansChart(means) {
  const scale = Math.max(1e-12, ...means.map(Math.abs));
  const bars = means.map((mean) =>
    element("span", {
      class: mean >= 0 ? "bar up" : "bar down",
      style: `height: ${Math.round((Math.abs(mean) / scale) * 50)}%`,
      title: round(mean),
    }),
  );
  const values = means.map((mean) => round(mean, 2)).join(", ");
  return element("span", { class: "means", role: "img", "aria-label": `channel means ${values}`, title: values }, ...bars);
}

function removeCard(card) {
  card.el.remove();
  if (card.id) {
    state.cards.delete(card.id);
    toggleSelection(card.id, false);
  }
}

// --- selection and weights -----------------------------------------------------------------

function toggleSelection(id, selected) {
  const index = state.selection.indexOf(id);
  if (selected && index < 0) state.selection.push(id);
  if (!selected && index >= 0) state.selection.splice(index, 1);
  const card = state.cards.get(id);
  if (card) {
    card.checkbox.checked = selected;
    card.el.classList.toggle("selected", selected);
  }
  centroid();
  updateSelectionInfo();
}

function updateSelectionInfo() {
  const count = state.selection.length;
  $("selection-info").textContent = count ? `${count} selected` : "Select 2 or more latents to mix.";
  $("mix-button").disabled = count < 1;
  $("sample-button").disabled = count < 2;
  $("morph-button").disabled = count < 2;
  $("morph-keyframes").textContent = count ? state.selection.map(nameOf).join(" → ") : "none";
}

function centroid() {
  const count = state.selection.length;
  state.weights = state.selection.map(() => 1 / count);
  renderWeights();
}

/** Set weight `index` to `value` and scale the others so that all sum to 1. */
function setWeight(index, value) {
  const weights = state.weights;
  const target = Math.min(1, Math.max(0, value));
  const others = weights.reduce((sum, weight, i) => (i === index ? sum : sum + weight), 0);
  const rest = 1 - target;
  state.weights = weights.map((weight, i) => {
    if (i === index) return target;
    return others > 0 ? (weight * rest) / others : rest / (weights.length - 1);
  });
}

function renderWeights() {
  const box = $("weights");
  const rows = state.selection.map((id, index) => {
    const slider = element("input", {
      type: "range", min: 0, max: 1, step: 0.01, value: state.weights[index], id: `weight-${index}`,
      "aria-valuetext": percent(state.weights[index]),
    });
    const output = element("output", { for: `weight-${index}`, text: percent(state.weights[index]) });
    slider.addEventListener("input", () => {
      setWeight(index, Number(slider.value));
      updateWeightControls();
    });
    slider.addEventListener("change", () => liveMix());
    return element("div", { class: "weight" }, element("label", { for: `weight-${index}`, text: nameOf(id), title: nameOf(id) }), slider, output);
  });
  box.replaceChildren(...rows);
  if (!rows.length) box.append(element("p", { class: "muted", text: "No latents selected." }));
  updateWeightControls();
}

function updateWeightControls() {
  state.weights.forEach((weight, index) => {
    const slider = $(`weight-${index}`);
    slider.value = weight;
    slider.setAttribute("aria-valuetext", percent(weight));
    slider.nextElementSibling.textContent = percent(weight);
  });
  const simplex = $("simplex"); // an SVG element: no `hidden` property, the attribute works
  const three = state.selection.length === 3;
  simplex.toggleAttribute("hidden", !three);
  if (three) {
    const [x, y] = simplexPoint(state.weights);
    $("simplex-point").setAttribute("cx", x);
    $("simplex-point").setAttribute("cy", y);
    ["simplex-a", "simplex-b", "simplex-c"].forEach((id, index) => ($(id).textContent = `${nameOf(state.selection[index]).slice(0, 18)} ${percent(state.weights[index])}`));
    simplex.setAttribute("aria-valuetext", state.weights.map(percent).join(", "));
  }
  previewDiagnostics();
}

// The triangle picker: vertices A (top), B (bottom left), C (bottom right); a point is the
// weights' barycentric combination of the vertices.
const VERTICES = [[100, 0], [0, 173.2], [200, 173.2]];

function simplexPoint(weights) {
  return [0, 1].map((axis) => weights.reduce((sum, weight, i) => sum + weight * VERTICES[i][axis], 0));
}

function barycentric([x, y]) {
  const [[ax, ay], [bx, by], [cx, cy]] = VERTICES;
  const area = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy);
  const a = ((by - cy) * (x - cx) + (cx - bx) * (y - cy)) / area;
  const b = ((cy - ay) * (x - cx) + (ax - cx) * (y - cy)) / area;
  const clamped = [a, b, 1 - a - b].map((weight) => Math.max(0, weight));
  const sum = clamped.reduce((total, weight) => total + weight, 0);
  return clamped.map((weight) => weight / sum);
}

function setUpSimplex() {
  const svg = $("simplex");
  const pick = (event) => {
    const box = svg.getBoundingClientRect();
    const view = svg.viewBox.baseVal;
    const x = view.x + ((event.clientX - box.left) / box.width) * view.width;
    const y = view.y + ((event.clientY - box.top) / box.height) * view.height;
    state.weights = barycentric([x, y]);
    updateWeightControls();
  };
  svg.addEventListener("pointerdown", (event) => {
    svg.setPointerCapture(event.pointerId);
    pick(event);
  });
  svg.addEventListener("pointermove", (event) => svg.hasPointerCapture(event.pointerId) && pick(event));
  svg.addEventListener("pointerup", () => liveMix());
  svg.addEventListener("keydown", (event) => {
    const moves = { ArrowUp: [0, -5], ArrowDown: [0, 5], ArrowLeft: [-5, 0], ArrowRight: [5, 0] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const [x, y] = simplexPoint(state.weights);
    state.weights = barycentric([x + move[0], y + move[1]]);
    updateWeightControls();
    liveMix();
  });
}

// --- mixing --------------------------------------------------------------------------------

function generationFields() {
  const body = { method: $("mix-method").value };
  if ($("mix-prompt").value.trim()) body.prompt = $("mix-prompt").value.trim();
  if ($("mix-steps").value) body.steps = Number($("mix-steps").value);
  if ($("mix-guidance").value) body.guidance_scale = Number($("mix-guidance").value);
  return body;
}

/** With POST /mix's `dry_run` (when the server has it), the diagnostics of the mix the
 * weights describe, shown as they change; nothing is queued. */
const previewDiagnostics = debounce(async () => {
  const box = $("mix-diagnostics");
  const ready = state.selection.length >= 2 && state.selection.every((id) => state.cards.get(id)?.status === "ready");
  if (!requestSchema("/mix")?.properties?.dry_run || !ready) {
    box.replaceChildren();
    return;
  }
  const body = { latents: [...state.selection], weights: [...state.weights], method: $("mix-method").value, dry_run: true };
  try {
    const answer = await api.postJson("mix", body);
    const diagnostics = answer.rows?.[0]?.diagnostics;
    box.replaceChildren(
      element("span", { text: `This mix: ${diagnosticsLine(diagnostics)}` }),
      ...(diagnostics?.warnings || []).map((text) => element("span", { class: "warning", text })),
    );
  } catch (error) {
    box.replaceChildren(element("span", { class: "error", text: error.detail }));
  }
}, 250);

const liveMix = debounce(() => {
  if ($("mix-live").checked && state.selection.length >= 2) mix();
}, LIVE_MIX_DELAY_MS);

/** One line of a mix's degeneracy figures (Landolsi & Kahl, Sec. 4.2), when the API gives
 * them: the norm against the inputs' interpolated norm, the channel-mean amplification and
 * the effective number of inputs. */
function diagnosticsLine(diagnostics) {
  if (!diagnostics) return "";
  const parts = [];
  if (diagnostics.norm !== undefined) parts.push(`‖z‖ ${round(diagnostics.norm)}`);
  if (diagnostics.norm_ratio !== undefined) parts.push(`norm ratio ${round(diagnostics.norm_ratio)}`);
  if (diagnostics.bias_amplification !== null && diagnostics.bias_amplification !== undefined) {
    parts.push(`mean bias ×${round(diagnostics.bias_amplification)}`);
  }
  if (diagnostics.k_eff !== undefined) parts.push(`k_eff ${round(diagnostics.k_eff)}`);
  return parts.join(" · ");
}

/** Warnings of the API's mix diagnostics, wherever the answer carries them. */
function warningsOf(job) {
  const result = job?.result || {};
  const images = result.images || [];
  const lists = [job?.warnings, result.warnings, result.diagnostics?.warnings, ...images.map((image) => [image.warnings, image.diagnostics?.warnings])];
  const texts = lists.flat(2).filter(Boolean).map((warning) => (typeof warning === "string" ? warning : warning.message || warning.detail || JSON.stringify(warning)));
  return [...new Set(texts)];
}

async function mix() {
  const latents = [...state.selection];
  const weights = [...state.weights];
  const body = { latents, weights, ...generationFields() };
  showError($("mix-error"), null);
  let job;
  try {
    job = await api.postJson("mix", body);
  } catch (error) {
    showError($("mix-error"), error);
    return;
  }
  trackJob(job, `mix ${latents.map(nameOf).join(" + ")}`);
  const img = element("img", { class: "result-image", alt: `Mix of ${latents.map((id, i) => `${nameOf(id)} ${percent(weights[i])}`).join(", ")}` });
  const status = element("span", { class: `badge ${job.status}`, text: job.status });
  const warnings = element("ul", { class: "warnings", role: "status" });
  const figures = element("p", { class: "diagnostics" });
  const caption = element("figcaption", {}, element("span", { class: "recipe", text: `${body.method} · ${latents.map((id, i) => `${nameOf(id)} ${percent(weights[i])}`).join(" · ")}` }), status);
  const item = element("li", { class: "result", "data-job": job.id }, element("figure", {}, element("div", { class: "frame" }, img), caption), figures, warnings);
  $("mix-results").prepend(item);
  const showWarnings = (source) => warnings.replaceChildren(...warningsOf(source).map((text) => element("li", { text })));
  showWarnings(job);
  const url = job.planned?.[0]?.url;
  let loaded = false;
  const final = await api.watchJob(job.id, async (update) => {
    updateJob(update);
    status.textContent = update.status;
    status.className = `badge ${update.status}`;
    showWarnings(update);
    const image = update.result?.images?.[0];
    figures.textContent = diagnosticsLine(image?.diagnostics);
    if (image && !loaded) {
      loaded = true;
      await imageInto(img, image.url || url).catch((error) => showError($("mix-error"), error));
    }
  }).catch((error) => showError($("mix-error"), error));
  if (final?.status === "failed") warnings.append(element("li", { class: "error", text: final.error || "the job failed" }));
}

// --- sampling ------------------------------------------------------------------------------

function setUpSample() {
  const scheme = $("sample-scheme");
  scheme.addEventListener("change", () => {
    $("sample-alpha-label").hidden = scheme.value !== "dirichlet";
    $("sample-k-label").hidden = scheme.value !== "subset";
  });
  $("sample-button").addEventListener("click", sample);
  $("sample-zip").addEventListener("click", () => state.lastSample?.download());
}

async function sample() {
  const latents = [...state.selection];
  const spec = { count: Number($("sample-count").value), scheme: $("sample-scheme").value, seed: Number($("sample-seed").value) };
  if (spec.scheme === "dirichlet") spec.alpha = Number($("sample-alpha").value);
  if (spec.scheme === "subset" && $("sample-k").value) spec.k = Number($("sample-k").value);
  const body = { latents, sample: spec, ...generationFields() };
  showError($("sample-error"), null);
  let job;
  try {
    job = await api.postJson("mix", body);
  } catch (error) {
    showError($("sample-error"), error);
    return;
  }
  trackJob(job, `sample ${spec.count} (${spec.scheme})`);
  const blobs = new Map();
  const tiles = new Map();
  const describe = (planned, index) => [
    `#${index + 1} · ${spec.scheme}${spec.scheme === "dirichlet" ? ` α=${spec.alpha}` : ""} · seed ${spec.seed} · ${body.method}`,
    ...planned.weights.map((weight, i) => `${nameOf(latents[i])}: ${round(weight, 3)}`).filter((line) => !line.endsWith(": 0")),
  ];
  const grid = (job.planned || []).map((planned, index) => {
    const lines = describe(planned, index);
    const img = element("img", { alt: lines.join("; ") });
    const tile = element("li", { class: "tile", tabindex: 0, title: lines.join("\n"), "data-image": planned.id }, img, element("div", { class: "provenance" }, ...lines.map((line) => element("span", { text: line }))));
    tiles.set(planned.id, img);
    return tile;
  });
  $("sample-grid").replaceChildren(...grid);
  const provenance = { job: job.id, ...body, latents: latents.map((id) => ({ id, name: nameOf(id) })), images: job.planned };
  state.lastSample = {
    async download() {
      const files = [];
      for (const [index, planned] of job.planned.entries()) {
        const blob = blobs.get(planned.id);
        if (blob) files.push({ name: `${String(index + 1).padStart(3, "0")}-${planned.id}.png`, bytes: new Uint8Array(await blob.arrayBuffer()) });
      }
      files.push({ name: "provenance.json", bytes: new TextEncoder().encode(JSON.stringify(provenance, null, 2)) });
      saveBlob(zipStored(files), `latentmix-sample-${shortId(job.id)}.zip`);
    },
  };
  $("sample-zip").disabled = true;
  await api.watchJob(job.id, async (update) => {
    updateJob(update);
    for (const image of update.result?.images || []) {
      if (blobs.has(image.id) || !tiles.has(image.id)) continue;
      blobs.set(image.id, null);
      imageInto(tiles.get(image.id), image.url, (blob) => {
        blobs.set(image.id, blob);
        $("sample-zip").disabled = false;
      }).catch((error) => showError($("sample-error"), error));
    }
    if (update.status === "failed") showError($("sample-error"), { detail: update.error || "the job failed" });
  }).catch((error) => showError($("sample-error"), error));
}

// --- morphing (when the server has POST /morph) --------------------------------------------

const KEYFRAME_FIELDS = ["keyframes", "latents"];
const SKIPPED_MORPH_FIELDS = new Set(["webhook", "model", "dry_run"]);

function setUpMorph() {
  const schema = requestSchema("/morph");
  const panel = $("morph-panel");
  panel.hidden = !schema?.properties;
  if (panel.hidden || state.morphFields) return;
  state.morphFields = [];
  for (const [name, property] of Object.entries(schema.properties)) {
    if (KEYFRAME_FIELDS.includes(name) || SKIPPED_MORPH_FIELDS.has(name)) continue;
    const control = morphControl(name, resolve(property.anyOf?.find((option) => option.type !== "null") || property), property);
    if (!control) continue;
    state.morphFields.push({ name, control });
    const label = element("label", { title: property.description || "" }, property.title || name.replaceAll("_", " "), control);
    if (control.type === "checkbox") label.className = "check";
    $("morph-fields").append(label);
  }
  $("morph-button").addEventListener("click", morph);
  setUpPlayer();
}

const MORPH_FRAMES = 9; // `frames` has no default in the schema: a short morph to start with

function morphControl(name, type, property) {
  const fallback = property.default ?? (name === "frames" ? MORPH_FRAMES : undefined);
  if (type?.enum) {
    const values = name === "method" ? canonicalMethods(type.enum) : type.enum;
    const options = values.map((value) => element("option", { value, text: value, selected: value === fallback }));
    return element("select", { "data-kind": "string" }, ...(fallback === undefined ? [element("option", { value: "", text: "default" })] : []), ...options);
  }
  if (type?.type === "boolean") return element("input", { type: "checkbox", checked: fallback === true, "data-kind": "boolean" });
  if (type?.type === "integer" || type?.type === "number") {
    const value = name === "frames" ? fallback : undefined;
    return element("input", { type: "number", value, min: type.minimum ?? type.exclusiveMinimum, max: type.maximum, step: type.type === "integer" ? 1 : "any", placeholder: fallback ?? "default", "data-kind": type.type });
  }
  if (type?.type === "string") return element("input", { type: "text", placeholder: fallback ?? "default", "data-kind": "string" });
  return null;
}

function morphBody() {
  const schema = requestSchema("/morph");
  const keyField = KEYFRAME_FIELDS.find((name) => schema.properties[name]) || "latents";
  const body = { [keyField]: [...state.selection] };
  for (const { name, control } of state.morphFields) {
    const kind = control.dataset.kind;
    if (kind === "boolean") body[name] = control.checked;
    else if (control.value !== "") body[name] = kind === "string" ? control.value : Number(control.value);
  }
  return body;
}

const ANIMATION_PATH = "/jobs/{job_id}/animation.{fmt}";

/** The animations of a finished job: GET /jobs/{id}/animation.{fmt} when the server has it,
 * else every URL in the result that ends in an animation format. */
function animationLinks(job) {
  const route = state.schema?.paths?.[ANIMATION_PATH]?.get;
  if (route) {
    const fmt = route.parameters?.find((parameter) => parameter.name === "fmt")?.schema;
    return (fmt?.enum || ["webp", "gif", "mp4"]).map((format) => [format, api.apiUrl(`jobs/${job.id}/animation.${format}`)]);
  }
  return urlsInResult(job.result);
}

function urlsInResult(result) {
  const links = [];
  const visit = (node, key) => {
    if (typeof node === "string" && /^https?:.*\.(webp|gif|mp4)(\?|$)/i.test(node)) links.push([key, node]);
    else if (node && typeof node === "object") for (const [name, value] of Object.entries(node)) visit(value, Array.isArray(node) ? key : name);
  };
  visit(result, "file");
  return links;
}

async function morph() {
  showError($("morph-error"), null);
  let job;
  try {
    job = await api.postJson("morph", morphBody());
  } catch (error) {
    showError($("morph-error"), error);
    return;
  }
  trackJob(job, `morph ${state.selection.map(nameOf).join(" → ")}`);
  const frames = [];
  const loading = new Set();
  $("morph-player").hidden = false;
  const final = await api.watchJob(job.id, async (update) => {
    updateJob(update);
    const images = update.result?.images || update.result?.frames || [];
    images.forEach((image, index) => {
      const id = image.id || index;
      if (loading.has(id)) return;
      loading.add(id);
      api.fetchBlob(image.url || image).then((blob) => {
        frames[index] = URL.createObjectURL(blob);
        setFrames(frames);
      }).catch((error) => showError($("morph-error"), error));
    });
  }).catch((error) => showError($("morph-error"), error));
  if (!final) return;
  if (final.status === "failed") showError($("morph-error"), { detail: final.error || "the job failed" });
  $("morph-downloads").replaceChildren(
    ...(final.status === "succeeded" ? animationLinks(final) : []).map(([name, url]) => {
      const extension = url.split("?")[0].split(".").pop() || name;
      return element("button", { type: "button", text: `Download ${extension.toUpperCase()}`, onclick: async () => {
        try {
          saveBlob(await api.fetchBlob(url), `latentmix-morph-${shortId(job.id)}.${extension}`);
        } catch (error) {
          showError($("morph-error"), error);
        }
      } });
    }),
  );
}

const player = { frames: [], timer: null };

function setFrames(frames) {
  player.frames = frames;
  $("morph-scrubber").max = Math.max(0, frames.length - 1);
  showFrame(Number($("morph-scrubber").value));
}

function showFrame(index) {
  const url = player.frames[index];
  if (url) $("morph-frame").src = url;
  $("morph-scrubber").value = index;
  $("morph-frame-number").textContent = `${index + 1} / ${player.frames.length}`;
}

function setUpPlayer() {
  $("morph-scrubber").addEventListener("input", (event) => showFrame(Number(event.target.value)));
  $("morph-play").addEventListener("click", () => {
    if (player.timer) {
      clearInterval(player.timer);
      player.timer = null;
      $("morph-play").textContent = "Play";
      return;
    }
    $("morph-play").textContent = "Pause";
    player.timer = setInterval(() => {
      const count = player.frames.length;
      if (count) showFrame((Number($("morph-scrubber").value) + 1) % count);
    }, 125);
  });
}

// --- jobs ----------------------------------------------------------------------------------

function trackJob(job, label) {
  if (state.jobs.has(job.id)) return updateJob(job);
  const progress = element("progress", { max: 1, value: 0, "aria-label": `Progress of ${label}` });
  const count = element("span", { class: "count" });
  const status = element("span", { class: "badge" });
  const cancel = element("button", { type: "button", class: "quiet", "aria-label": `Cancel ${label}`, text: "Cancel" });
  const row = element(
    "tr",
    { "data-job": job.id },
    element("td", {}, element("span", { class: "job-label", text: label, title: label }), element("code", { text: shortId(job.id) })),
    element("td", {}, status),
    element("td", {}, progress, count),
    element("td", {}, cancel),
  );
  cancel.addEventListener("click", async () => {
    showError($("jobs-error"), null);
    try {
      updateJob(await api.postJson(`jobs/${job.id}/cancel`, {}));
    } catch (error) {
      showError($("jobs-error"), error);
    }
  });
  state.jobs.set(job.id, { row, progress, count, status, cancel });
  $("jobs").prepend(row);
  $("jobs-empty").hidden = true;
  updateJob(job);
}

function updateJob(job) {
  const entry = state.jobs.get(job.id);
  if (!entry) return;
  const { done, total } = job.progress;
  entry.row.dataset.status = job.status;
  entry.status.textContent = job.status;
  entry.status.className = `badge ${job.status}`;
  const succeeded = job.status === "succeeded"; // a job with nothing left to do counts none
  entry.progress.max = Math.max(total, 1);
  entry.progress.value = succeeded ? Math.max(total, 1) : done;
  entry.count.textContent = total ? `${done}/${total}` : "";
  entry.cancel.disabled = api.isTerminal(job.status);
  if (job.error && job.status === "failed") entry.status.title = job.error;
}

// --- start ---------------------------------------------------------------------------------

function setUpDropzone() {
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
}

function start() {
  setUpKeyForm();
  setUpDropzone();
  setUpSimplex();
  setUpSample();
  $("select-all").addEventListener("click", () => {
    for (const item of $("cards").children) {
      const card = state.cards.get(item.dataset.latentId); // in the page's order
      if (card && card.status !== "failed") toggleSelection(card.id, true);
    }
  });
  $("select-none").addEventListener("click", () => [...state.selection].forEach((id) => toggleSelection(id, false)));
  $("centroid").addEventListener("click", () => {
    centroid();
    liveMix();
  });
  $("mix-button").addEventListener("click", mix);
  $("mix-method").addEventListener("change", () => previewDiagnostics());
  renderWeights();
  updateSelectionInfo();
  connect();
}

start();
