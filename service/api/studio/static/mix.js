// Mixing the selected latents with their weights: one image per mix, its diagnostics and
// warnings when the API gives them.

import * as api from "./api.js";
import { $, debounce, element, imageInto, percent, round, showError } from "./dom.js";
import { trackJob, updateJob } from "./jobs.js";
import { canonicalMethods, nameOf, requestSchema, state } from "./state.js";

const DEFAULT_METHOD = "nin/chm";
const FALLBACK_METHODS = ["lerp", "slerp", "fix/0", "fix/m", "fix/chm", "nin/0", "nin/m", "nin/chm"];
const LIVE_MIX_DELAY_MS = 400;
export function setUpMethods() {
  const select = $("mix-method");
  const current = select.value || DEFAULT_METHOD;
  const methods = requestSchema("/mix")?.properties?.method?.enum || FALLBACK_METHODS;
  const canonical = canonicalMethods(methods);
  select.replaceChildren(...canonical.map((method) => element("option", { value: method, text: method })));
  select.value = canonical.includes(current) ? current : canonical[0];
}

export function generationFields() {
  const body = { method: $("mix-method").value };
  if ($("mix-prompt").value.trim()) body.prompt = $("mix-prompt").value.trim();
  if ($("mix-steps").value) body.steps = Number($("mix-steps").value);
  if ($("mix-guidance").value) body.guidance_scale = Number($("mix-guidance").value);
  return body;
}

/** With POST /mix's `dry_run` (when the server has it), the diagnostics of the mix the
 * weights describe, shown as they change; nothing is queued. */
export const previewDiagnostics = debounce(async () => {
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

export const liveMix = debounce(() => {
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

export async function mix() {
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
