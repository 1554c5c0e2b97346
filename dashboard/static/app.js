// The page of `plan serve`: each button posts the form to an endpoint of the HTTP API
// (/api/parallelism/...) and draws what it answers; nothing is computed here but the drawing.
"use strict";
const API = "/api/parallelism/";
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const MEMORY_TERMS = ["weights", "gradients", "optimizer", "activations", "kv_cache", "overhead"];
const TIME_TERMS = ["compute", "tp_comm", "cp_comm", "ep_comm", "dp_comm", "pp_comm", "offload", "bubble", "optimizer", "decode"];
const AXES = {  // objective: [key of the answer's objective, axis label] (dashboard/charts.py's AXES)
  throughput: ["tokens_per_s", "tokens/s"], cost: ["usd_per_million_tokens", "$ per million tokens"],
  memory_headroom: ["memory_headroom_gib", "memory headroom per GPU, GiB"], gpus: ["gpus", "GPUs"],
  simplicity: ["simplicity", "simplicity (parallel dimensions used)"],
};
const TARGETS = ["torchrun", "deepspeed", "accelerate", "megatron", "torchtitan", "slurm", "vllm", "sglang"];
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

async function post(endpoint, body) {
  const response = await fetch(API + endpoint, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) {
    const message = data.error || (data.infeasible && data.infeasible.message) || response.statusText;
    throw new Error(message);
  }
  return data;
}

function question() {
  const pasted = $("config").value.trim();
  return {model_ref: pasted || $("model").value, cluster_ref: $("cluster").value, nodes: Number($("nodes").value),
          kind: $("kind").value, seq_len: Number($("seq_len").value), global_batch: Number($("global_batch").value)};
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function element(tag, attributes, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
}

function stackedBar(svg, legend, terms, values, unit, limit) {
  svg.replaceChildren();
  legend.replaceChildren();
  const total = terms.reduce((sum, t) => sum + (values[t] || 0), 0);
  const scale = 780 / Math.max(total, limit || 0);
  let x = 10;
  terms.forEach((term, i) => {
    const value = values[term] || 0;
    if (value <= 0) return;
    const rect = element("rect", {x, y: 10, width: value * scale, height: 40, fill: COLOURS[i % COLOURS.length], "data-term": term}, svg);
    element("title", {}, rect).textContent = `${term.replace("_", " ")}: ${value.toFixed(2)} ${unit}`;
    const item = document.createElement("li");
    item.innerHTML = `<span style="background:${COLOURS[i % COLOURS.length]}"></span>${term.replace("_", " ")} ${value.toFixed(2)} ${unit}`;
    legend.appendChild(item);
    x += value * scale;
  });
  if (limit) element("line", {x1: 10 + limit * scale, x2: 10 + limit * scale, y1: 2, y2: 58, stroke: "black", "stroke-dasharray": "4 3"}, svg);
}

function describe(plan) {
  const parts = ["tp", "pp", "dp", "cp", "ep"].map((k) => `${k} ${plan[k]}`);
  return `${parts.join(" · ")}, micro-batch ${plan.micro_batch_size}, ${plan.sharding}, recompute ${plan.recompute}, ${plan.precision}`;
}

function showSolution(solution) {
  const e = solution.estimate, o = solution.objective;
  $("result").hidden = false;
  $("headline").textContent = `${describe(solution.plan)} on ${solution.gpus} GPUs${solution.optimal ? " (proved optimal)" : ""}`;
  $("figures").textContent = `${Math.round(o.tokens_per_s).toLocaleString()} tokens/s · step ${e.step_time_s.toFixed(3)} s · ` +
    `MFU ${(100 * e.mfu).toFixed(1)}% · ${o.usd_per_hour ? "$" + o.usd_per_million_tokens.toFixed(3) + " per million tokens" : "no price"}`;
  const gib = Object.fromEntries(MEMORY_TERMS.map((t) => [t, e.memory[t] / 2 ** 30]));
  stackedBar($("memory"), $("memory-legend"), MEMORY_TERMS, gib, "GiB", e.memory.usable / 2 ** 30);
  stackedBar($("time"), $("time-legend"), TIME_TERMS, e.time, "s");
  $("why").replaceChildren(...(solution.explanation || []).map((line) => Object.assign(document.createElement("li"), {textContent: line})));
}

function showFront(front, objectives) {
  const svg = $("scatter");
  svg.replaceChildren();
  $("pareto").hidden = false;
  const [[xKey, xLabel], [yKey, yLabel], third] = objectives.map((o) => AXES[o]);
  const xs = front.map((s) => s.objective[xKey]), ys = front.map((s) => s.objective[yKey]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const px = (x) => 60 + 720 * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const py = (y) => 380 - 340 * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const levels = third ? [...new Set(front.map((s) => s.objective[third[0]]))].sort((a, b) => a - b) : [];
  element("line", {x1: 60, x2: 780, y1: 390, y2: 390, stroke: "#888"}, svg);
  element("line", {x1: 50, x2: 50, y1: 30, y2: 390, stroke: "#888"}, svg);
  element("text", {x: 420, y: 415, "text-anchor": "middle"}, svg).textContent = `${xLabel} (${figure(x0)} – ${figure(x1)})`;
  element("text", {x: 15, y: 20}, svg).textContent = `${yLabel} (${figure(y0)} – ${figure(y1)})` +
    (third ? `; colour and label: ${third[1]}` : "");
  front.forEach((solution, i) => {
    const level = third ? solution.objective[third[0]] : null;
    const colour = third ? COLOURS[levels.indexOf(level) % COLOURS.length] : COLOURS[0];
    const point = element("circle", {cx: px(xs[i]), cy: py(ys[i]), r: 6, class: "point", fill: colour, "data-index": i}, svg);
    element("title", {}, point).textContent = `${i + 1}: ${describe(solution.plan)}`;
    const left = px(xs[i]) > 700;  // a label at the right edge goes on the point's left
    if (third) element("text", {x: px(xs[i]) + (left ? -9 : 9), y: py(ys[i]) + 4, "font-size": 12, class: "level",
                                "text-anchor": left ? "end" : "start"}, svg).textContent = `${figure(level)} ${third[1]}`;
    point.addEventListener("click", () => {
      svg.querySelectorAll("circle.point").forEach((c) => c.classList.remove("chosen"));
      point.classList.add("chosen");
      showSolution(solution);
    });
  });
}

function figure(value) {
  if (Number.isInteger(value) || Math.abs(value) >= 100) return Math.round(value).toLocaleString();
  return value.toFixed(Math.abs(value) >= 10 ? 1 : 2);
}

function download(name, content) {
  const link = Object.assign(document.createElement("a"), {href: URL.createObjectURL(new Blob([content], {type: "text/plain"})), download: name, textContent: name});
  const item = document.createElement("li");
  item.appendChild(link);
  $("file-list").appendChild(item);
  return link;
}

async function run(label, action) {
  status(`${label}…`);
  try {
    await action();
    status(`${label}: done`);
  } catch (error) {
    status(error.message, true);
  }
}

async function init() {
  const presets = await post("presets", {});
  $("model").replaceChildren(...presets.models.map((m) => new Option(m.display_name || m.name, m.name)));
  $("cluster").replaceChildren(...presets.clusters.map((c) => new Option(c.name, c.name)));
  $("model").value = "llama-3.1-70b";
  $("cluster").value = "dgx-h100";
  $("target").replaceChildren(...TARGETS.map((t) => new Option(t, t)));
  $("question").addEventListener("submit", (event) => {
    event.preventDefault();
    run("solving", async () => showSolution(await post("recommend", question())));
  });
  $("front").addEventListener("click", () => run("searching the frontier", async () => {
    const objectives = $("objectives").value;
    const front = await post("pareto", {...question(), objectives});
    showFront(front, objectives.split(","));
    showSolution(front[0]);
  }));
  $("launch").addEventListener("click", () => run("writing launch files", async () => {
    const answer = await post("launch", {...question(), target: $("target").value});
    $("files").hidden = false;
    $("file-list").replaceChildren();
    for (const [name, content] of Object.entries(answer.files)) download(name, content).click();
  }));
  status("ready");
}

init().catch((error) => status(error.message, true));
