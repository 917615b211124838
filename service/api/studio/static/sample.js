// Sampling: many mixes of the selection with seeded weights, a grid with each image's
// provenance, and a zip of them all.

import * as api from "./api.js";
import { $, element, imageInto, round, saveBlob, shortId, showError } from "./dom.js";
import { trackJob, updateJob } from "./jobs.js";
import { generationFields } from "./mix.js";
import { nameOf, state } from "./state.js";
import { zipStored } from "./zip.js";

export function setUpSample() {
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
