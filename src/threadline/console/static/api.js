// The console's one way to the JSON API: same-origin fetch with the session cookie and the CSRF token, and
// every failure turned into the API's problem+json (RFC 9457), which is what the pages show.

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
    this.status = problem.status;
  }
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      const body = await response.json();
      if (body && typeof body === "object" && "status" in body) return body;
    } catch (_) { /* not JSON after all */ }
  }
  return { status: response.status, title: response.statusText, detail: `${response.status} ${response.statusText}` };
}

export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiProblem({ status: 0, title: "Network error", detail: `the server could not be reached (${error.message})` });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (problem.status === 401) {
      // The session ended (signed out elsewhere, expired, or its key revoked).
      location.assign(`/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
    throw new ApiProblem(problem);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

// Show a problem (or clear it with null) in the page's role=alert element.
export function showProblem(error, target = document.getElementById("error")) {
  if (!target) return;
  if (!error) {
    target.hidden = true;
    target.textContent = "";
    return;
  }
  const problem = error instanceof ApiProblem ? error.problem : { title: "Error", detail: String(error.message || error) };
  target.textContent = "";
  const strong = document.createElement("strong");
  strong.textContent = `${problem.title || "Error"}${problem.status ? ` (${problem.status})` : ""}: `;
  target.append(strong, problem.detail || "");
  target.hidden = false;
}

// A stream failed before it began (EventSource only says "error"): ask the same URL for its problem.
export async function streamProblem(url) {
  try {
    await api(url.replace(/\/stream(\?.*)?$/, "/search?limit=1"));
  } catch (error) {
    return error;
  }
  return null;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function money(value) {
  const n = Number(value || 0);
  return n === 0 ? "$0" : n < 0.01 ? `$${n.toFixed(4)}` : `$${n.toFixed(2)}`;
}

export function count(n) {
  return new Intl.NumberFormat().format(n || 0);
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export function when(iso) {
  if (!iso) return "";
  const date = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return Number.isNaN(date.getTime()) ? iso : dateFormat.format(date);
}

// "key:value, key:value" <-> {key: value}
export function parseTags(text) {
  const tags = {};
  for (const part of text.split(",")) {
    const item = part.trim();
    if (!item) continue;
    const at = item.indexOf(":");
    if (at <= 0) throw new ApiProblem({ status: 0, title: "Invalid tags", detail: `"${item}" is not key:value` });
    tags[item.slice(0, at).trim()] = item.slice(at + 1).trim();
  }
  return tags;
}

export function formatTags(tags) {
  return Object.entries(tags || {}).map(([k, v]) => `${k}:${v}`).join(", ");
}

// The status a person wants to see: what the agent does while its sandbox runs, else the sandbox's state.
export function statusOf(conversation) {
  if (conversation.execution_status && conversation.sandbox_status === "RUNNING") return conversation.execution_status;
  if (conversation.execution_status && conversation.sandbox_status === undefined) return conversation.execution_status;
  return (conversation.sandbox_status || "unknown").toLowerCase();
}

export function badge(node, status) {
  node.textContent = status.replaceAll("_", " ");
  node.className = `badge s-${status}`;
}

// Mark the current page in the navigation.
for (const link of document.querySelectorAll("nav .links a")) {
  if (link.getAttribute("href") === location.pathname) link.setAttribute("aria-current", "page");
}
