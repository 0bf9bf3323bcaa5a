// Events as people read them: messages, actions with their command, their output, errors. Everything is
// set as text (never as HTML): an event's content cannot become markup.
import { el, when } from "./api.js";

function texts(content) {
  if (!content) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => (typeof part === "string" ? part : part?.text || "")).filter(Boolean).join("\n");
  return content.text || "";
}

function clip(text, max = 20000) {
  return text.length > max ? `${text.slice(0, max)}\n… (${text.length - max} more characters)` : text;
}

function item(event, kind, label, ...body) {
  return el(
    "li",
    { class: `ev ${kind}`, dataset: { eventId: event.id, kind: event.kind || "" } },
    el("p", { class: "ev-head" }, el("span", { class: "who", text: label }), el("time", { datetime: event.timestamp || "", text: when(event.timestamp) })),
    ...body,
  );
}

function actionBody(action, event) {
  const parts = [];
  const thought = texts(event.thought);
  if (thought) parts.push(el("p", { class: "thought", text: thought }));
  if (action.command !== undefined) parts.push(el("pre", { class: "cmd", text: `$ ${action.command}` }));
  else if (action.kind === "FinishAction" || action.message !== undefined) parts.push(el("p", { class: "text", text: action.message || "" }));
  else if (action.path !== undefined) parts.push(el("pre", { class: "cmd", text: `${action.command || action.kind} ${action.path}` }));
  else if (action.thought !== undefined) parts.push(el("p", { class: "thought", text: action.thought }));
  else {
    const { kind, ...rest } = action;
    parts.push(el("pre", { class: "cmd", text: clip(JSON.stringify(rest, null, 2), 2000) }));
  }
  return parts;
}

export function renderEvent(event) {
  switch (event.kind) {
    case "MessageEvent": {
      const message = event.llm_message || {};
      const role = message.role || event.source;
      const who = role === "user" ? "You" : role === "assistant" || event.source === "agent" ? "Agent" : role;
      return item(event, `msg ${role === "user" ? "user" : "agent"}`, who, el("p", { class: "text", text: clip(texts(message.content)) }));
    }
    case "ActionEvent": {
      const action = event.action || {};
      const name = event.tool_name || action.kind || "action";
      return item(event, "action", `Agent · ${name}`, ...actionBody(action, event));
    }
    case "ObservationEvent":
    case "UserRejectObservation": {
      const observation = event.observation || {};
      const output = texts(observation.content) || texts(observation.output) || event.rejection_reason || "";
      const failed = observation.is_error || (observation.exit_code !== undefined && observation.exit_code !== null && observation.exit_code !== 0 && observation.exit_code !== -1);
      const head = `Output · ${event.tool_name || observation.kind || ""}${observation.exit_code !== undefined && observation.exit_code !== null ? ` · exit ${observation.exit_code}` : ""}`;
      return item(event, failed ? "output error" : "output", head, el("pre", { class: "out", text: clip(output) }));
    }
    case "AgentErrorEvent":
    case "ConversationErrorEvent": {
      const text = [event.code, event.detail || event.error].filter(Boolean).join(": ");
      return item(event, "error", "Error", el("p", { class: "text", text: text || "the agent reported an error" }));
    }
    case "ConversationStateUpdateEvent":
      if (event.key === "execution_status" && event.value) {
        return item(event, "state", `Status: ${String(event.value).replaceAll("_", " ")}`);
      }
      return null;
    case "PauseEvent":
      return item(event, "state", "Paused");
    case "SystemPromptEvent":
    case "TokenEvent":
    case "Condensation":
    case "CondensationRequest":
      return null;
    default:
      return item(event, "other", event.kind || "event");
  }
}

// A timeline that keeps each event once (a reconnect may repeat one) and notes when each was shown.
export class Timeline {
  constructor(list) {
    this.list = list;
    this.seen = new Set();
  }

  add(event) {
    if (!event.id || this.seen.has(event.id)) return;
    this.seen.add(event.id);
    const node = renderEvent(event);
    if (!node) return;
    // For the browser test: when this event reached the page (ms since the epoch).
    node.dataset.shownAt = (performance.timeOrigin + performance.now()).toFixed(1);
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    this.list.append(node);
    if (atBottom && this.seen.size > 1) node.scrollIntoView({ block: "end" });
  }
}
