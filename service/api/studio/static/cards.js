// Latents: files dropped or picked are uploaded (inverted when they are images) and shown as
// cards with their diagnostics.

import * as api from "./api.js";
import { $, element, round, showError } from "./dom.js";
import { trackJob, updateJob } from "./jobs.js";
import { latentCanvas, readLatent } from "./latent_preview.js";
import { requestSchema, state } from "./state.js";
import { toggleSelection, updateSelectionInfo } from "./weights.js";

export function addFiles(files) {
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
  let inverted = null;
  if (entry.status === "pending") {
    setCardStatus(card, "inverting", 0);
    try {
      inverted = await api.watchJob(entry.job, (job) => {
        setCardStatus(card, "inverting", job.progress.total ? job.progress.done / job.progress.total : 0);
        updateJob(job);
      });
    } catch (error) {
      showError(card.errorEl, error);
    }
  }
  await refreshRecord(card);
  await showMeasuredSample(card, inverted);
}

/** The job's sampled round trip is measured after it, on the background queue: when this
 * card's latent is the sample, its error shows once that measurement is done. */
async function showMeasuredSample(card, inverted) {
  const sample = inverted?.result?.reconstruction;
  if (!sample?.job || !sample.measured.includes(card.id)) return;
  try {
    await api.watchJob(sample.job, () => {});
  } catch (error) {
    return; // the latent is there; only its error is missing
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

/** `pixel_psnr_db` -> "pixel psnr", with the unit on the value ("70.8 dB"). */
function figureName(name) {
  return name.replace(/_db$/, "").replaceAll("_", " ");
}

function figureValue(name, value) {
  if (value === null || value === undefined) return name.endsWith("_db") ? "∞ (identical)" : "–";
  return name.endsWith("_db") ? `${round(value)} dB` : round(value);
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
    const figures = typeof value === "number" ? [[key, value]] : Object.entries(value || {});
    rows.push(...figures.map(([name, number]) => [figureName(name), figureValue(name, number)]));
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

/** The inversion-method picker, when POST /latents takes an `inversion` field. */
export function setUpInversionMethods(card) {
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

export function setUpDropzone() {
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
