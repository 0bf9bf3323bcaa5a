// One conversation, for its owner (manage it, message the agent) or, in shared mode, for anyone while it is
// public. Its events come from the events stream: stored ones first, then each as it is stored.
import { api, badge, count, el, formatTags, money, parseTags, showProblem, statusOf, streamProblem } from "./api.js";
import { Timeline } from "./timeline.js";

const main = document.getElementById("main");
const id = main.dataset.conversationId;
const shared = main.dataset.mode === "shared";
const $ = (name) => document.getElementById(name);
const timeline = new Timeline($("timeline"));
let current = null;

for (const node of document.querySelectorAll(shared ? "[data-owner]" : "[data-shared]")) node.remove();

function show(c) {
  current = c;
  const title = c.title || "Untitled conversation";
  $("title").textContent = title;
  document.title = `${title} · Threadline`;
  badge($("status"), statusOf(c));
  $("repository").textContent = c.selected_repository ? `${c.selected_repository}${c.selected_branch ? ` @ ${c.selected_branch}` : ""}` : "none";
  const metrics = c.metrics || {};
  const usage = metrics.accumulated_token_usage || {};
  $("cost").textContent = money(metrics.accumulated_cost);
  $("tokens").textContent = `${count(usage.prompt_tokens)} in · ${count(usage.completion_tokens)} out`;
  $("model").textContent = c.llm_model || metrics.model_name || "default";
  if (shared) return;
  const form = $("edit");
  if (document.activeElement?.form !== form) {
    form.elements.title.value = c.title || "";
    form.elements.tags.value = formatTags(c.tags);
  }
  const isPublic = c.public === true;
  $("share").textContent = isPublic ? "Make private" : "Make public";
  $("share").setAttribute("aria-pressed", String(isPublic));
  $("share-link").hidden = !isPublic;
  const url = `${location.origin}/shared/${c.id}`;
  $("share-url").href = url;
  $("share-url").textContent = url;
  const running = c.sandbox_status === "RUNNING" || c.sandbox_status === "STARTING";
  $("pause").disabled = !running;
  $("resume").disabled = c.sandbox_status !== "PAUSED";
}

async function refresh() {
  try {
    if (shared) {
      const [c] = await api(`/api/v1/shared-conversations?ids=${id}`);
      if (!c) throw Object.assign(new Error(), { problem: null });
      show(c);
    } else {
      show(await api(`/api/v1/app-conversations/${id}`));
    }
  } catch (error) {
    if (shared && !error.problem) {
      // What the API answers for a conversation that is not public: its shared events search's 404.
      showProblem(await streamProblem(`/api/v1/shared-conversations/${id}/events/stream`));
    } else showProblem(error);
  }
}

function follow() {
  const url = shared ? `/api/v1/shared-conversations/${id}/events/stream` : `/api/v1/conversation/${id}/events/stream`;
  const source = new EventSource(url);
  const state = $("stream-state");
  source.onopen = () => {
    state.textContent = "Live";
    state.dataset.state = "live";
  };
  source.onmessage = (message) => timeline.add(JSON.parse(message.data));
  source.onerror = async () => {
    state.dataset.state = "reconnecting";
    state.textContent = "Reconnecting…";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (not found, no longer public, too many streams): show why, in the API's words.
      state.textContent = "Not following";
      state.dataset.state = "closed";
      const problem = await streamProblem(url);
      if (problem) showProblem(problem);
    }
  };
}

function changes() {
  const source = new EventSource("/api/v1/app-conversations/stream");
  source.addEventListener("updated", (message) => {
    const c = JSON.parse(message.data);
    if (c.id === id) show(c);
  });
  source.addEventListener("deleted", (message) => {
    if (JSON.parse(message.data).id === id) {
      $("notice").textContent = "This conversation was deleted.";
      source.close();
    }
  });
}

async function act(button, work, done) {
  showProblem(null);
  button.disabled = true;
  try {
    await work();
    if (done) $("notice").textContent = done;
  } catch (error) {
    showProblem(error);
  } finally {
    button.disabled = false;
  }
}

function manage() {
  $("edit").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    act(form.querySelector("button"), async () => {
      const wanted = parseTags(form.elements.tags.value);
      const tags = { ...wanted };
      for (const key of Object.keys(current.tags || {})) if (!(key in wanted)) tags[key] = null;
      const title = form.elements.title.value.trim();
      show(await api(`/api/v1/app-conversations/${id}`, { method: "PATCH", body: { title: title || null, tags } }));
    }, "Saved.");
  });
  $("share").addEventListener("click", (event) =>
    act(event.target, async () => {
      show(await api(`/api/v1/app-conversations/${id}`, { method: "PATCH", body: { public: !(current.public === true) } }));
    }, null),
  );
  $("pause").addEventListener("click", (event) =>
    act(event.target, async () => {
      await api(`/api/v1/sandboxes/${current.sandbox_id}/pause`, { method: "POST" });
      await refresh();
    }, "Paused."),
  );
  $("resume").addEventListener("click", (event) =>
    act(event.target, async () => {
      await api(`/api/v1/sandboxes/${current.sandbox_id}/resume`, { method: "POST" });
      await refresh();
    }, "Resumed."),
  );
  $("delete").addEventListener("click", (event) => {
    if (!confirm("Delete this conversation and its events? This cannot be undone.")) return;
    act(event.target, async () => {
      await api(`/api/v1/app-conversations/${id}`, { method: "DELETE" });
      location.assign("/conversations");
    }, null);
  });
  $("send").addEventListener("submit", (event) => {
    event.preventDefault();
    const box = $("message");
    const text = box.value.trim();
    if (!text) return;
    act(event.target.querySelector("button"), async () => {
      await api(`/api/v1/app-conversations/${id}/send-message`, {
        method: "POST",
        body: { content: [{ type: "text", text }], run: true },
      });
      box.value = "";
    }, "Message sent.");
  });
}

if (!shared) {
  manage();
  changes();
}
refresh();
follow();
