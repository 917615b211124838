// The LatentMix API as the Studio calls it: the bearer key from session storage on every
// request, problem+json `detail` texts as errors, job long-polls, images as blobs.

const KEY_STORAGE = "latentmix.apiKey";
export const API_ROOT = new URL("./", window.location.href); // the page is served at <root>/studio

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status; // 0: the API could not be reached
    this.detail = detail;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY_STORAGE, key) : sessionStorage.removeItem(KEY_STORAGE)),
};

const unauthorizedListeners = [];
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), API_ROOT).href;
}

function authHeaders(headers = {}) {
  const key = apiKey.get();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** The `detail` of a problem+json body (FastAPI's list form joined), else the status text. */
export function problemDetail(status, body, statusText) {
  let detail = body && body.detail;
  if (Array.isArray(detail)) {
    detail = detail.map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg}`).join("; ");
  }
  return detail || body?.title || `${status} ${statusText || "error"}`;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON: the status line says it */
  }
  const error = new ApiError(response.status, problemDetail(response.status, body, response.statusText));
  if (response.status === 401) unauthorizedListeners.forEach((listener) => listener(error));
  return error;
}

function unreachable(cause) {
  return new ApiError(0, `the API at ${API_ROOT.origin} could not be reached (${cause.message})`);
}

/** fetch() against the API with the key; non-2xx answers throw ApiError(status, detail). */
export async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path.startsWith("http") ? path : apiUrl(path), init);
  } catch (cause) {
    if (cause.name === "AbortError") throw cause;
    throw unreachable(cause);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export const getJson = async (path, options) => (await request(path, options)).json();
export const postJson = async (path, json) => (await request(path, { method: "POST", json })).json();

/** POST multipart form data with upload progress (fetch has none): resolves to the JSON. */
export function postForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    const key = apiKey.get();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    xhr.onerror = () => reject(unreachable(new Error("network error")));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const error = new ApiError(xhr.status, problemDetail(xhr.status, body, xhr.statusText));
      if (xhr.status === 401) unauthorizedListeners.forEach((listener) => listener(error));
      reject(error);
    };
    xhr.send(form);
  });
}

/** An API image (or any file) as a Blob; the key goes along, S3 redirects are followed. */
export async function fetchBlob(url) {
  return (await request(url)).blob();
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
export const isTerminal = (status) => TERMINAL.has(status);

/** Long-poll GET /jobs/{id} until it ends, calling onUpdate(job) with each new state (new
 * progress or images). Resolves to the final job. */
export async function watchJob(jobId, onUpdate, { waitS = 5 } = {}) {
  let seen = -1;
  let last = "";
  for (;;) {
    const query = seen >= 0 ? `?wait=${waitS}&seen=${seen}` : "";
    let job;
    try {
      job = await getJson(`jobs/${jobId}${query}`);
    } catch (error) {
      if (error.status === 0 || error.status >= 500) {
        await new Promise((resolve) => setTimeout(resolve, 2000)); // the API comes back
        continue;
      }
      throw error;
    }
    const images = job.result?.images?.length || 0;
    const state = `${job.status}/${job.progress.done}/${images}`;
    if (state !== last) onUpdate(job);
    last = state;
    seen = images;
    if (isTerminal(job.status)) return job;
  }
}
