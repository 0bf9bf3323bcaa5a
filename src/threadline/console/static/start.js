// Start a conversation and show the start task's progress step by step: POST .../stream-start answers a JSON
// array with one element per status the task passes through, written as it happens; it is read as it comes.
import { api, el, showProblem, when } from "./api.js";

const form = document.getElementById("start");
const steps = document.getElementById("steps");
const LABELS = {
  WORKING: "Accepted",
  WAITING_FOR_SANDBOX: "Waiting for a sandbox",
  PREPARING_REPOSITORY: "Preparing the repository",
  RUNNING_SETUP_SCRIPT: "Running the setup script",
  SETTING_UP_GIT_HOOKS: "Setting up git hooks",
  SETTING_UP_SKILLS: "Setting up skills",
  STARTING_CONVERSATION: "Starting the conversation",
  READY: "Ready",
  ERROR: "Failed",
};

// Splits a streamed JSON array into its top-level objects, whatever the chunking.
class ArrayReader {
  constructor(onItem) {
    this.onItem = onItem;
    this.buffer = "";
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.start = -1;
  }

  push(text) {
    const base = this.buffer.length;
    this.buffer += text;
    for (let i = base; i < this.buffer.length; i++) {
      const ch = this.buffer[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === "\\") this.escaped = true;
        else if (ch === '"') this.inString = false;
      } else if (ch === '"') this.inString = true;
      else if (ch === "{") {
        if (this.depth++ === 0) this.start = i;
      } else if (ch === "}" && --this.depth === 0) {
        this.onItem(JSON.parse(this.buffer.slice(this.start, i + 1)));
        this.buffer = this.buffer.slice(i + 1);
        i = -1;
      }
    }
  }
}

function render(task) {
  const history = task.history && task.history.length ? task.history : [{ status: task.status, at: task.updated_at }];
  steps.replaceChildren(
    ...history.map((step, index) => {
      const last = index === history.length - 1;
      const state = step.status === "ERROR" ? "failed" : last && step.status !== "READY" ? "current" : "done";
      return el(
        "li",
        { class: `step ${state}`, dataset: { status: step.status }, "aria-current": last ? "step" : null },
        el("span", { class: "label", text: LABELS[step.status] || step.status }),
        el("time", { datetime: step.at, text: when(step.at) }),
      );
    }),
  );
  if (task.status === "ERROR") {
    showProblem({ message: task.detail || "the start failed" });
  }
  if (task.status === "READY" && task.app_conversation_id) {
    const open = document.getElementById("open");
    open.href = `/conversations/${task.app_conversation_id}`;
    document.getElementById("done").hidden = false;
    open.focus();
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showProblem(null);
  const data = new FormData(form);
  const body = { initial_message: { content: [{ type: "text", text: data.get("message") }], run: true } };
  const repository = data.get("repository").trim();
  const branch = data.get("branch").trim();
  const model = data.get("model").trim();
  if (repository) body.selected_repository = repository;
  if (branch) body.selected_branch = branch;
  if (model) body.llm_model = model;
  const button = form.querySelector("button");
  button.disabled = true;
  document.getElementById("progress").hidden = false;
  document.getElementById("done").hidden = true;
  steps.replaceChildren();
  try {
    const response = await api("/api/v1/app-conversations/stream-start", { method: "POST", body, raw: true });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const items = new ArrayReader(render);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      items.push(value);
    }
  } catch (error) {
    showProblem(error);
  } finally {
    button.disabled = false;
  }
});
