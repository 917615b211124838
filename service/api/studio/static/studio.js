// LatentMix Studio: upload and invert, mix with weights, sample, morph, follow jobs.
// Plain ES modules, no build step; every request goes to the API that served the page.

import * as api from "./api.js";
import { setUpDropzone, setUpInversionMethods } from "./cards.js";
import { $, showError } from "./dom.js";
import { liveMix, mix, previewDiagnostics, setUpMethods } from "./mix.js";
import { setUpMorph } from "./morph.js";
import { setUpSample } from "./sample.js";
import { state } from "./state.js";
import { centroid, renderWeights, setUpSimplex, toggleSelection, updateSelectionInfo } from "./weights.js";

const RECONNECT_MS = 5000;

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
