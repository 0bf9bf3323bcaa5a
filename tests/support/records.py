"""Records made the way the services make them, for tests that need one without its process."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Any

from threadline.auth.service import hash_key
from threadline.core.crypto import SecretBox
from threadline.core.ids import new_id


def sandbox_values(
    user_id: str | None, secret_key: str, *, status: str = "RUNNING", **extra: Any
) -> tuple[dict[str, Any], str]:
    """Column values of a `process` sandbox with a fresh session key (stored hashed and encrypted, as the
    sandbox service stores it); returns (values, session key)."""
    key = secrets.token_urlsafe(32)
    now = dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {
        "id": new_id(),
        "user_id": user_id,
        "spec_id": "process",
        "backend": "process",
        "status": status,
        "session_key_hash": hash_key(key),
        "session_key_enc": SecretBox(secret_key).encrypt(key),
        "created_at": now,
        "updated_at": now,
        **extra,
    }
    return values, key


def message_event(text: str, at: dt.datetime, event_id: str | None = None) -> dict[str, Any]:
    """An agent MessageEvent, as the agent server delivers it to the events callback."""
    return {
        "id": event_id or str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "source": "agent",
        "parent_id": None,
        "llm_message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
        "kind": "MessageEvent",
    }


def stats_event(cost: float, at: dt.datetime, event_id: str | None = None) -> dict[str, Any]:
    """A `stats` state update with this accumulated cost (and a token count that grows with it)."""
    model = "openai/fake-model"
    usage = {
        "model_name": model,
        "accumulated_cost": cost,
        "max_budget_per_task": None,
        "accumulated_token_usage": {"model": model, "prompt_tokens": int(cost * 64)},
    }
    return {
        "id": event_id or str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "source": "environment",
        "parent_id": None,
        "key": "stats",
        "value": {"usage_to_metrics": {"agent": usage}},
        "kind": "ConversationStateUpdateEvent",
    }
