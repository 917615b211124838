// The selection and its weights: sliders that stay normalised, and the triangle picker for
// three inputs.

import { $, element, percent } from "./dom.js";
import { liveMix, previewDiagnostics } from "./mix.js";
import { nameOf, state } from "./state.js";

export function toggleSelection(id, selected) {
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

export function updateSelectionInfo() {
  const count = state.selection.length;
  $("selection-info").textContent = count ? `${count} selected` : "Select 2 or more latents to mix.";
  $("mix-button").disabled = count < 1;
  $("sample-button").disabled = count < 2;
  $("morph-button").disabled = count < 2;
  $("morph-keyframes").textContent = count ? state.selection.map(nameOf).join(" → ") : "none";
}

export function centroid() {
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

export function renderWeights() {
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

export function setUpSimplex() {
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
