// Morphing (when the server has POST /morph): keyframes in selection order, a form built
// from the endpoint's schema, a frame scrubber with a playing preview, animation downloads.

import * as api from "./api.js";
import { $, element, saveBlob, shortId, showError } from "./dom.js";
import { trackJob, updateJob } from "./jobs.js";
import { canonicalMethods, nameOf, requestSchema, resolve, state } from "./state.js";

const KEYFRAME_FIELDS = ["keyframes", "latents"];
const SKIPPED_MORPH_FIELDS = new Set(["webhook", "model", "dry_run"]);

export function setUpMorph() {
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
