// The jobs the page started: status, progress and a Cancel button each.

import * as api from "./api.js";
import { $, element, shortId, showError } from "./dom.js";
import { state } from "./state.js";

export function trackJob(job, label) {
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

export function updateJob(job) {
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
