// The conversations list: filters, keyset paging (next_page_id), and live status and cost from the changes
// stream (connected before the list is fetched, so no change falls in between).
import { api, badge, count, el, money, parseTags, showProblem, statusOf, when } from "./api.js";

const list = document.getElementById("list");
const more = document.getElementById("more");
const summary = document.getElementById("summary");
const form = document.getElementById("filters");
const rows = new Map(); // conversation id -> <li>
let nextPage = null;
let generation = 0;

function query(pageId) {
  const data = new FormData(form);
  const params = new URLSearchParams({ limit: "100" });
  const title = data.get("title").trim();
  if (title) params.set("title__contains", title);
  if (data.get("status")) params.set("execution_status__eq", data.get("status"));
  const repository = data.get("repository").trim();
  if (repository) params.set("selected_repository__eq", repository);
  if (data.get("from")) params.set("created_at__gte", `${data.get("from")}T00:00:00`);
  if (data.get("to")) params.set("created_at__lt", `${data.get("to")}T00:00:00`);
  for (const [key, value] of Object.entries(parseTags(data.get("tags")))) params.append("tag", `${key}:${value}`);
  if (pageId) params.set("page_id", pageId);
  return params;
}

function filtered() {
  const data = new FormData(form);
  return [...data.values()].some((value) => String(value).trim() !== "");
}

function fill(row, c) {
  const link = row.querySelector("a.title");
  link.textContent = c.title || "Untitled conversation";
  badge(row.querySelector(".badge"), statusOf(c));
  row.querySelector(".repo").textContent = c.selected_repository
    ? `${c.selected_repository}${c.selected_branch ? ` @ ${c.selected_branch}` : ""}`
    : "no repository";
  const metrics = c.metrics || {};
  const usage = metrics.accumulated_token_usage || {};
  row.querySelector(".cost").textContent = money(metrics.accumulated_cost);
  row.querySelector(".tokens").textContent = `${count((usage.prompt_tokens || 0) + (usage.completion_tokens || 0))} tokens`;
  row.querySelector(".time").textContent = when(c.updated_at);
  row.querySelector(".time").setAttribute("datetime", c.updated_at);
  const tags = row.querySelector(".tags");
  tags.replaceChildren(...Object.entries(c.tags || {}).map(([k, v]) => el("li", { class: "tag", text: `${k}:${v}` })));
}

function row(c) {
  const item = el(
    "li",
    { class: "conv", dataset: { id: c.id } },
    el("a", { class: "title", href: `/conversations/${c.id}` }),
    el(
      "p",
      { class: "meta" },
      el("span", { class: "badge" }),
      el("span", { class: "repo" }),
      el("span", { class: "cost" }),
      el("span", { class: "tokens" }),
      el("time", { class: "time" }),
    ),
    el("ul", { class: "tags", "aria-label": "Tags" }),
  );
  fill(item, c);
  rows.set(c.id, item);
  return item;
}

function describe() {
  summary.textContent = `${rows.size} conversation${rows.size === 1 ? "" : "s"}${nextPage ? " shown, more below" : ""}`;
  if (rows.size === 0) summary.textContent = filtered() ? "No conversation matches." : "No conversations yet: start one.";
}

async function load(append) {
  const mine = ++generation;
  showProblem(null);
  try {
    const page = await api(`/api/v1/app-conversations/search?${query(append ? nextPage : null)}`);
    if (mine !== generation) return;
    if (!append) {
      rows.clear();
      list.replaceChildren();
    }
    const fragment = document.createDocumentFragment();
    for (const c of page.items) if (!rows.has(c.id)) fragment.append(row(c));
    list.append(fragment);
    nextPage = page.next_page_id;
    more.hidden = !nextPage;
    describe();
  } catch (error) {
    showProblem(error);
  }
  if (!append && !document.body.dataset.rendered) {
    // For the browser test: when the first page was on screen, from navigation start (ms).
    requestAnimationFrame(() => {
      document.body.dataset.rendered = performance.now().toFixed(1);
    });
  }
}

function live() {
  const source = new EventSource("/api/v1/app-conversations/stream");
  let opened = false;
  source.onopen = () => {
    if (opened) load(false); // a reconnect: changes may have been missed, fetch the list again
    opened = true;
  };
  const changed = (message) => {
    const c = JSON.parse(message.data);
    const existing = rows.get(c.id);
    if (existing) fill(existing, c);
    else if (message.type === "created" && !filtered()) {
      list.prepend(row(c));
      describe();
    }
  };
  source.addEventListener("created", changed);
  source.addEventListener("updated", changed);
  source.addEventListener("deleted", (message) => {
    const { id } = JSON.parse(message.data);
    rows.get(id)?.remove();
    rows.delete(id);
    describe();
  });
  return new Promise((resolve) => {
    // Fetch the list once the stream is connected (or failed: the list still shows).
    source.addEventListener("open", resolve, { once: true });
    source.addEventListener("error", resolve, { once: true });
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  load(false);
});
form.addEventListener("reset", () => setTimeout(() => load(false)));
more.addEventListener("click", () => load(true));

live().then(() => load(false));
