// Small helpers of the page: elements, numbers, errors, images and downloads.

import * as api from "./api.js";

export const $ = (id) => document.getElementById(id);

export function element(tag, attributes = {}, ...children) {
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

export const round = (value, digits = 3) => Number(value).toPrecision(digits).replace(/\.?0+(e|$)/, "$1");
export const percent = (weight) => `${Math.round(weight * 100)}%`;
export const shortId = (id) => id.slice(0, 8);

export function showError(target, error) {
  target.textContent = error ? error.detail || error.message || String(error) : "";
}

export function debounce(fn, delay) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), delay);
  };
}

export async function imageInto(img, url, onBlob) {
  const blob = await api.fetchBlob(url);
  img.src = URL.createObjectURL(blob);
  await img.decode().catch(() => {});
  onBlob?.(blob);
  return blob;
}

export function saveBlob(blob, filename) {
  const link = element("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}
