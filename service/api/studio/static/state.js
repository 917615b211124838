// What the page knows: the server's schema and model, the cards, the selection and its
// weights, the jobs it follows; and questions answered from the schema.

import { shortId } from "./dom.js";

export const state = {
  schema: null, // /openapi.json, for what this server offers (methods, /morph, form fields)
  model: null, // the default model's entry of GET /models
  cards: new Map(), // latent id -> card
  selection: [], // latent ids, in the order they were selected (the morph's keyframe order)
  weights: [], // one per selected latent, summing to 1
  jobs: new Map(), // job id -> row
};

export function nameOf(id) {
  return state.cards.get(id)?.name || shortId(id);
}

export function requestSchema(path) {
  const body = state.schema?.paths?.[path]?.post?.requestBody?.content;
  const schema = body?.["application/json"]?.schema || body?.["multipart/form-data"]?.schema;
  return resolve(schema);
}

export function resolve(schema) {
  const ref = schema?.$ref || schema?.allOf?.[0]?.$ref;
  if (!ref) return schema;
  return ref.split("/").slice(1).reduce((node, key) => node?.[key], state.schema);
}

/** The paper's method names, without the short aliases (`fix` = `fix/0`). */
export function canonicalMethods(methods) {
  return methods.filter((method) => method.includes("/") || ["lerp", "slerp"].includes(method));
}
