// Cost per day and per model over the user's conversations, drawn as inline SVG (no chart library).
import { api, el, money, showProblem } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#c2255c", "#5c940d"];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function dayKey(date) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}

async function conversations(since) {
  const all = [];
  let page = null;
  do {
    const params = new URLSearchParams({ limit: "100", include_sub_conversations: "true", created_at__gte: since.toISOString().slice(0, 19) });
    if (page) params.set("page_id", page);
    const result = await api(`/api/v1/app-conversations/search?${params}`);
    all.push(...result.items);
    page = result.next_page_id;
  } while (page);
  return all;
}

function dayChart(days, models, colour) {
  const width = Math.max(320, days.length * 22 + 60);
  const height = 220;
  const top = 10, bottom = 40, left = 50;
  const max = Math.max(...days.map((d) => d.total), 0.0001);
  const step = (width - left - 10) / days.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "days-title", class: "bars" });
  chart.append(svg("title", { id: "days-title" }, "Cost per day, by model"));
  for (const fraction of [0, 0.5, 1]) {
    const y = top + (height - top - bottom) * (1 - fraction);
    chart.append(svg("line", { x1: left, x2: width - 10, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, money(max * fraction)));
  }
  days.forEach((day, index) => {
    let y = height - bottom;
    const x = left + index * step + step * 0.15;
    for (const model of models) {
      const value = day.byModel[model] || 0;
      if (!value) continue;
      const h = ((height - top - bottom) * value) / max;
      y -= h;
      const bar = svg("rect", { x, y, width: Math.max(1, step * 0.7), height: Math.max(0.5, h), fill: colour[model] });
      bar.append(svg("title", {}, `${day.key} · ${model}: ${money(value)}`));
      chart.append(bar);
    }
    if (days.length <= 14 || index % Math.ceil(days.length / 10) === 0) {
      chart.append(svg("text", { x: x + step * 0.35, y: height - bottom + 16, class: "axis", "text-anchor": "middle" }, day.key.slice(5)));
    }
  });
  return chart;
}

function modelChart(totals, colour) {
  const entries = Object.entries(totals).sort((a, b) => b[1] - a[1]);
  const rowHeight = 28;
  const width = 560;
  const height = Math.max(rowHeight, entries.length * rowHeight) + 8;
  const max = Math.max(...entries.map(([, v]) => v), 0.0001);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "models-title", class: "bars models" });
  chart.append(svg("title", { id: "models-title" }, "Cost per model"));
  entries.forEach(([model, value], index) => {
    const y = 4 + index * rowHeight;
    chart.append(svg("text", { x: 0, y: y + 17, class: "label" }, model.length > 28 ? `${model.slice(0, 27)}…` : model));
    chart.append(svg("rect", { x: 200, y: y + 4, height: 18, width: Math.max(1, (280 * value) / max), fill: colour[model] }));
    chart.append(svg("text", { x: 200 + Math.max(1, (280 * value) / max) + 6, y: y + 17, class: "label" }, money(value)));
  });
  return chart;
}

function table(caption, head, rows) {
  return el(
    "table",
    { class: "data" },
    el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c, i) => el(i ? "td" : "th", i ? {} : { scope: "row" }, c))))),
  );
}

async function draw() {
  showProblem(null);
  const span = Number(new FormData(document.getElementById("range")).get("days"));
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const since = new Date(today.getTime() - (span - 1) * 86400000);
  try {
    const items = await conversations(since);
    const days = [];
    const index = new Map();
    for (let d = new Date(since); d <= today; d = new Date(d.getTime() + 86400000)) {
      const day = { key: dayKey(d), total: 0, byModel: {} };
      index.set(day.key, day);
      days.push(day);
    }
    const totals = {};
    for (const c of items) {
      const cost = c.metrics?.accumulated_cost || 0;
      const model = c.llm_model || c.metrics?.model_name || "default";
      const day = index.get(dayKey(new Date(c.created_at.endsWith("Z") ? c.created_at : `${c.created_at}Z`)));
      totals[model] = (totals[model] || 0) + cost;
      if (day) {
        day.total += cost;
        day.byModel[model] = (day.byModel[model] || 0) + cost;
      }
    }
    const models = Object.keys(totals).sort();
    const colour = Object.fromEntries(models.map((m, i) => [m, PALETTE[i % PALETTE.length]]));
    const sum = Object.values(totals).reduce((a, b) => a + b, 0);
    document.getElementById("total").textContent = `${money(sum)} over ${items.length} conversation${items.length === 1 ? "" : "s"} in the last ${span} days`;
    const legend = el("ul", { class: "legend" }, ...models.map((m) => el("li", {}, el("span", { class: "swatch", "data-colour": colour[m] }), m)));
    for (const swatch of legend.querySelectorAll(".swatch")) swatch.style.background = swatch.dataset.colour;
    document.getElementById("chart-days").replaceChildren(
      dayChart(days, models, colour),
      legend,
      el("details", {}, el("summary", { text: "As a table" }), table("Cost per day", ["Day", "Cost"], days.filter((d) => d.total).map((d) => [d.key, money(d.total)]))),
    );
    document.getElementById("chart-models").replaceChildren(
      modelChart(totals, colour),
      el("details", {}, el("summary", { text: "As a table" }), table("Cost per model", ["Model", "Cost"], Object.entries(totals).map(([m, v]) => [m, money(v)]))),
    );
    document.body.dataset.rendered = performance.now().toFixed(1);
  } catch (error) {
    showProblem(error);
  }
}

document.querySelector("#range select").addEventListener("change", draw);
draw();
