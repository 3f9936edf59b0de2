"""API docs that render offline: one self-contained page (no CDN) reading ``/openapi.json``.

FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN, which an air-gapped cluster
cannot reach; this page is small enough to ship inline.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>niff-serve API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1000px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
details{border:1px solid #ddd;border-radius:6px;margin:.5em 0;padding:.4em .8em}
summary{cursor:pointer} code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f8fa;padding:.6em;overflow:auto;border-radius:4px}
.m{display:inline-block;min-width:4.5em;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put{color:#a60}.delete{color:#c22}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
.lock{color:#a60;font-size:12px;margin-left:.5em}
</style></head><body><div id="app">Loading the OpenAPI document…</div>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  kids.flat().forEach(k => node.append(k instanceof Node ? k : document.createTextNode(String(k))));
  return node;
}
function deref(spec, schema, depth) {
  if (!schema || typeof schema !== "object" || depth > 6) return schema;
  if (schema.$ref) {
    const target = schema.$ref.split("/").slice(1).reduce((o, k) => o && o[k], spec);
    return deref(spec, target, depth + 1);
  }
  const out = Array.isArray(schema) ? [] : {};
  for (const [k, v] of Object.entries(schema)) out[k] = deref(spec, v, depth + 1);
  return out;
}
function schemaBlock(spec, schema) {
  return el("pre", {}, JSON.stringify(deref(spec, schema, 0), null, 2));
}
function operation(spec, path, method, op) {
  const body = [];
  if (op.description) body.push(el("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    body.push(el("h4", {}, "Parameters"), el("table", {},
      el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "required"), el("th", {}, "schema"),
         el("th", {}, "description")),
      op.parameters.map(p => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, p.required ? "yes" : "no"), el("td", {}, el("code", {}, JSON.stringify(p.schema || {}))),
        el("td", {}, p.description || "")))));
  }
  if (op.requestBody) {
    body.push(el("h4", {}, "Request body"));
    if (op.requestBody.description) body.push(el("p", {}, op.requestBody.description));
    for (const [type, media] of Object.entries(op.requestBody.content || {}))
      body.push(el("div", {}, el("code", {}, type)), schemaBlock(spec, media.schema || {}));
  }
  body.push(el("h4", {}, "Responses"));
  for (const [code, resp] of Object.entries(op.responses || {})) {
    const media = Object.values(resp.content || {})[0];
    body.push(el("div", {}, el("b", {}, code + " "), resp.description || ""));
    if (media && media.schema) body.push(schemaBlock(spec, media.schema));
  }
  const locked = op.security && op.security.length ? el("span", {class: "lock"}, "bearer token") : "";
  return el("details", {}, el("summary", {}, el("span", {class: "m " + method}, method), " ",
    el("code", {}, path), " — ", op.summary || "", locked), body);
}
function render(spec) {
  const groups = {};
  for (const [path, item] of Object.entries(spec.paths || {}))
    for (const [method, op] of Object.entries(item))
      (groups[(op.tags || ["other"])[0]] ||= []).push(operation(spec, path, method, op));
  const app = document.getElementById("app");
  app.replaceChildren(el("h1", {}, spec.info.title + " "), el("p", {}, "Version " + spec.info.version),
    el("p", {}, spec.info.description || ""), el("p", {}, el("a", {href: "openapi.json"}, "openapi.json")),
    Object.entries(groups).map(([tag, ops]) => [el("h2", {}, tag), ops]),
    el("h2", {}, "Schemas"), Object.entries((spec.components || {}).schemas || {}).map(([name, s]) =>
      el("details", {}, el("summary", {}, el("code", {}, name)), schemaBlock(spec, s))));
}
fetch("openapi.json").then(r => r.json()).then(render).catch(e => {
  document.getElementById("app").textContent = "Cannot load openapi.json: " + e;
});
</script></body></html>
"""


@router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    return HTMLResponse(_PAGE)
