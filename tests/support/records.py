"""Records made the way the services make them, for tests that need one without its process."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from threadline.auth.service import hash_key
from threadline.crypto import SecretBox
from threadline.ids import new_id


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
