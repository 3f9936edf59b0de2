// The niff-serve page: a client of the public REST endpoints only (GET /openapi.json, GET /v1/models,
// GET /v1/models/{name}, its report files, POST /v1/models/{name}:classify). No framework, no build step.
"use strict";

const KEY = "niff-api-key";  // sessionStorage: the key lives as long as the tab
const state = { needsKey: false, model: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const kid of kids.flat()) {
    if (kid !== undefined && kid !== null) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

class Refused extends Error {}  // a 401: the key form is showing, nothing more to say

function authorization() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authorization(), ...(options.headers || {}) } });
  if (response.status === 401) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    if (had) alertUser(`The API key was not accepted: ${await errorOf(response)}`);
    askForKey("This server needs an API key.");
    throw new Refused();
  }
  return response;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function alertUser(message) {
  $("alert").textContent = message || "";
  $("alert").hidden = !message;
}

function askForKey(message) {
  $("key-form").querySelector("label").textContent = `${message} It is kept in this tab only.`;
  $("key-form").hidden = false;
  $("key").value = "";
  $("key").focus();
}

async function start() {
  const document_ = await (await fetch("/openapi.json")).json();
  $("server").textContent = `${document_.info.title} ${document_.info.version}`;
  // The served document declares the bearer scheme only when the server has a key.
  state.needsKey = Boolean(document_.components && document_.components.securitySchemes);
  $("key-button").hidden = !state.needsKey;
  if (state.needsKey && !sessionStorage.getItem(KEY)) {
    askForKey("This server needs an API key.");
    return;
  }
  await loadModels();
}

async function loadModels() {
  const response = await api("/v1/models");
  if (!response.ok) {
    alertUser(`Could not list the models: ${await errorOf(response)}`);
    return;
  }
  const { models } = await response.json();
  const list = $("models");
  list.replaceChildren();
  if (!models.length) list.append(el("li", { class: "muted" }, "No models."));
  for (const model of models) {
    const button = el("button", { type: "button", "data-model": model.name },
      el("strong", {}, model.name), el("br"),
      el("small", {}, [`version ${model.version}`, model.arch, `${model.num_classes} classes`,
        `${model.input_size}×${model.input_size}`, model.ready ? null : "not ready"].filter(Boolean).join(" · ")));
    button.addEventListener("click", () => selectModel(model.name).catch(report));
    list.append(el("li", {}, button));
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = models.find((model) => model.name === wanted) || models[0];
  if (first) await selectModel(first.name);
}

async function selectModel(name) {
  const response = await api(`/v1/models/${encodeURIComponent(name)}`);
  if (!response.ok) {
    alertUser(`Could not read model ${name}: ${await errorOf(response)}`);
    return;
  }
  const detail = await response.json();
  state.model = detail;
  history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  for (const button of document.querySelectorAll("#models button")) {
    button.setAttribute("aria-current", String(button.dataset.model === name));
  }
  $("model").hidden = false;
  $("model-title").textContent = `${detail.name} (version ${detail.version})`;
  $("result").replaceChildren();
  $("preview").hidden = true;
  $("card").replaceChildren(...card(detail));
  await showReport(detail);
}

function rows(pairs) {
  return el("table", {}, pairs.filter(([, value]) => value !== undefined && value !== null)
    .map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, value))));
}

function number(value) {
  const shown = value !== 0 && Math.abs(value) < 1e-3 ? Number(value).toExponential(2) : Number(value).toPrecision(3);
  return el("span", { "data-value": String(value) }, shown);
}

function card(detail) {
  const niff = detail.niff;
  const p = niff.preprocessing;
  const parts = [
    rows([
      ["architecture", `${niff.arch || niff.builder}`],
      ["classes", detail.num_classes],
      ["input", `${niff.input.dtype} [N, ${niff.input.shape.join(", ")}]`],
      ["served by", `${detail.backend} on ${detail.device}, batches of up to ${detail.max_batch_size}, `
        + `${detail.max_batch_delay_ms} ms batch delay`],
      ["exported", niff.created],
      ["checkpoint", niff.checkpoint && el("code", {}, `${niff.checkpoint.file} sha256 ${niff.checkpoint.sha256}`)],
    ]),
    el("h4", {}, "Preprocessing"),
    rows([
      ["resize, then center crop", `shorter side to ${p.resize} (${p.interpolation}), crop ${p.input_size}×${p.input_size} `
        + `(crop_pct ${p.crop_pct})`],
      ["mean", p.mean.map((v) => Number(v).toFixed(4)).join(", ")],
      ["std", p.std.map((v) => Number(v).toFixed(4)).join(", ")],
    ]),
  ];
  if (niff.parity) {
    const override = niff.parity.tolerance_override;
    const set = override ? `, set by --parity-tolerance; the default is ${override.default_tolerance}` : "";
    parts.push(el("h4", {}, `Parity with eager PyTorch (tolerance ${niff.parity.tolerance}${set}, `
      + `${niff.parity.passed ? "passed" : "failed"})`));
    parts.push(el("table", { id: "parity" },
      el("tr", {}, ["candidate", "inputs", "max abs error", "relative error", "top-1 agreement"].map((h) => el("th", {}, h))),
      niff.parity.rows.map((row) => el("tr", {}, el("td", {}, row.candidate), el("td", {}, row.inputs),
        el("td", {}, number(row.max_abs)), el("td", {}, number(row.rel_err)),
        el("td", {}, `${(100 * row.top1_agreement).toFixed(2)} %`)))));
  }
  if (niff.compact) parts.push(el("h4", {}, "Compact export"), el("pre", {}, JSON.stringify(niff.compact, null, 2)));
  parts.push(el("h4", {}, "Artifacts"), el("table", {},
    el("tr", {}, ["format", "file", "lowering", "sha256"].map((h) => el("th", {}, h))),
    Object.entries(niff.artifacts).map(([kind, artifact]) => el("tr", {}, el("td", {}, kind), el("td", {}, artifact.path),
      el("td", {}, `${artifact.lowering || ""}${artifact.fp16 ? ", fp16" : ""}${artifact.tuning ? ", tuned" : ""}`),
      el("td", {}, el("code", {}, artifact.sha256))))));
  const tuned = Object.entries(niff.artifacts).filter(([, artifact]) => artifact.spectral_layers);
  for (const [kind, artifact] of tuned) {
    parts.push(el("details", {}, el("summary", {}, `${kind}: ${artifact.spectral_layers.length} spectral layers`),
      el("pre", {}, JSON.stringify(artifact.spectral_layers, null, 2))));
  }
  if (niff.versions) parts.push(el("p", { class: "muted" }, Object.entries(niff.versions).map(([k, v]) => `${k} ${v}`).join(" · ")));
  return parts;
}

async function showReport(detail) {
  const files = (detail.niff.report && detail.niff.report.files) || {};
  const figures = $("figures");
  figures.replaceChildren();
  $("report").hidden = !Object.keys(files).length;
  for (const name of Object.keys(files)) {
    const path = `/v1/models/${encodeURIComponent(detail.name)}/report/${name}`;
    const response = await api(path);
    if (!response.ok) {
      figures.append(el("p", { class: "error" }, `${name}: ${await errorOf(response)}`));
      continue;
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    if (name.endsWith(".png")) {
      figures.append(el("figure", {}, el("img", { src: url, alt: name }), el("figcaption", { class: "muted" }, name)));
    } else {
      figures.append(el("p", {}, el("a", { href: url, download: name }, name)));
    }
  }
}

async function classify(file) {
  const model = state.model;
  if (!model || !file) return;
  alertUser("");
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const result = $("result");
  result.replaceChildren(el("p", { class: "muted" }, `Classifying ${file.name || "the image"}…`));
  const topK = Math.min(5, model.num_classes);
  const response = await api(`/v1/models/${encodeURIComponent(model.name)}:classify?top_k=${topK}`, {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!response.ok) {
    preview.hidden = true;
    result.replaceChildren(el("p", { class: "error" }, `Could not classify ${file.name || "the image"}: ${await errorOf(response)}`));
    return;
  }
  const answer = await response.json();
  const t = answer.timing;
  result.replaceChildren(
    el("div", { id: "top" }, answer.predictions[0].top_k.map(bar)),
    el("p", { class: "timing" }, `preprocess ${t.preprocess_ms.toFixed(1)} ms · queue ${t.queue_ms.toFixed(1)} ms · `
      + `inference ${t.inference_ms.toFixed(1)} ms (batch of ${t.batch_size}) · total ${t.total_ms.toFixed(1)} ms`));
}

function bar(score) {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${(100 * score.probability).toFixed(1)}%`;  // CSSOM: allowed by the page's CSP
  return el("div", { class: "bar" }, el("span", { class: "label" }, score.label), el("span", { class: "track" }, fill),
    el("span", { class: "value" }, `${(100 * score.probability).toFixed(1)} %`));
}

function report(error) {
  if (!(error instanceof Refused)) alertUser(`Something went wrong: ${error.message || error}`);
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => classify(event.target.files[0]).catch(report));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(event.dataTransfer.files[0]).catch(report);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((entry) => entry.kind === "file");
    if (item) classify(item.getAsFile()).catch(report);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key-form").hidden = true;
    alertUser("");
    loadModels().catch(report);
  });
  $("key-button").addEventListener("click", () => askForKey("Enter this server's API key."));
}

wire();
start().catch(report);
