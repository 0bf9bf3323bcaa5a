"""Per-user LLM settings, merged over the server-wide defaults of `Settings`.

Precedence, per field: the start request's override (model only) > the user's own value > the server
default. One exception guards the server's key: the server-wide API key is used only with the
server-wide base URL. A user who points `llm_base_url` elsewhere without a key of their own gets no
key, rather than having the server's key sent to a URL of their choosing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.config import Settings
from threadline.core.crypto import SecretBox
from threadline.core.errors import Conflict
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.settings.models import LLMSettings, SettingSource, SettingsUpdateRequest
from threadline.settings.tables import user_settings


@dataclass(frozen=True)
class LLMConfig:
    """The LLM a conversation should use. `api_key` is kept out of repr so it never lands in logs."""

    model: str | None
    base_url: str | None
    api_key: str | None = field(repr=False)
    input_cost_per_token: float | None
    output_cost_per_token: float | None


@dataclass(frozen=True)
class _Merged:
    model: str | None
    model_source: SettingSource | None
    base_url: str | None
    base_url_source: SettingSource | None
    # The user's encrypted key, the server's plaintext key, or nothing.
    user_key_enc: str | None
    server_key: str | None

    @property
    def key_source(self) -> SettingSource | None:
        if self.user_key_enc is not None:
            return SettingSource.user
        if self.server_key is not None:
            return SettingSource.server
        return None


def _pick(own: str | None, default: str | None) -> tuple[str | None, SettingSource | None]:
    if own is not None:
        return own, SettingSource.user
    if default:
        return default, SettingSource.server
    return None, None


@dataclass(frozen=True, slots=True)
class UserSettingsRecord:
    """A user's own settings as stored (None: not set, the server's apply)."""

    user_id: str
    llm_model: str | None
    llm_base_url: str | None
    llm_api_key_enc: str | None
    updated_at: datetime


def _merge(settings: Settings, row: UserSettingsRecord | None) -> _Merged:
    model, model_source = _pick(row.llm_model if row else None, settings.llm_model)
    base_url, base_url_source = _pick(row.llm_base_url if row else None, settings.llm_base_url)
    key_enc = row.llm_api_key_enc if row else None
    server_base_url = settings.llm_base_url or None
    server_key = settings.llm_api_key or None
    if base_url != server_base_url:
        server_key = None
    return _Merged(model, model_source, base_url, base_url_source, key_enc, server_key)


def _view(merged: _Merged) -> LLMSettings:
    return LLMSettings(
        llm_model=merged.model,
        llm_base_url=merged.base_url,
        llm_api_key_set=merged.key_source is not None,
        llm_model_source=merged.model_source,
        llm_base_url_source=merged.base_url_source,
        llm_api_key_source=merged.key_source,
    )


async def _row(conn: AsyncConnection, user_id: str) -> UserSettingsRecord | None:
    row = (await conn.execute(select(user_settings).where(user_settings.c.user_id == user_id))).first()
    return UserSettingsRecord(**row._mapping) if row is not None else None


async def get_settings(db: Database, settings: Settings, user_id: str) -> LLMSettings:
    async with db.read() as conn:
        row = await _row(conn, user_id)
    return _view(_merge(settings, row))


async def update_settings(
    db: Database, settings: Settings, user_id: str, request: SettingsUpdateRequest
) -> LLMSettings:
    """Apply the fields sent (null clears the user's value); absent fields keep what is stored."""
    sent = request.model_fields_set
    changes: dict[str, Any] = {}
    if "llm_model" in sent:
        changes["llm_model"] = request.llm_model
    if "llm_base_url" in sent:
        changes["llm_base_url"] = request.llm_base_url
    if "llm_api_key" in sent:
        key = request.llm_api_key
        changes["llm_api_key_enc"] = SecretBox(settings.resolved_secret_key).encrypt(key) if key is not None else None
    async with db.write() as conn:
        if changes:
            changes["updated_at"] = utcnow()
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            # An upsert: two first-time updates racing for one user cannot collide on the primary key.
            statement = (
                insert(user_settings)
                .values(user_id=user_id, **changes)
                .on_conflict_do_update(index_elements=["user_id"], set_=changes)
            )
            await conn.execute(statement)
        row = await _row(conn, user_id)
    return _view(_merge(settings, row))


async def effective_llm(
    db: Database, settings: Settings, user_id: str, *, model_override: str | None = None
) -> LLMConfig:
    """The LLM to start a conversation with: request override > user settings > server defaults.

    Raises Conflict when the user's stored key cannot be decrypted (the server secret changed): better
    to ask them to set it again than to silently run on another key.
    """
    async with db.read() as conn:
        row = await _row(conn, user_id)
    merged = _merge(settings, row)
    api_key = merged.server_key
    if merged.user_key_enc is not None:
        try:
            api_key = SecretBox(settings.resolved_secret_key).decrypt(merged.user_key_enc)
        except ValueError as exc:
            raise Conflict(
                "your stored LLM API key cannot be decrypted (the server secret changed); "
                "set it again with POST /api/v1/settings",
                type_slug="llm-key-unreadable",
            ) from exc
    return LLMConfig(
        model=model_override or merged.model,
        base_url=merged.base_url,
        api_key=api_key,
        input_cost_per_token=settings.llm_input_cost_per_token,
        output_cost_per_token=settings.llm_output_cost_per_token,
    )
