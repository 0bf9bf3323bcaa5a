"""Storage of a user's secrets. Values are encrypted with the server's SecretBox and only decrypted for
the owner's sandboxes (the lookup) and for the start of the owner's conversations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.auth.tables import users
from threadline.core.crypto import SecretBox
from threadline.core.errors import Conflict, NotFound
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.secrets.models import (
    MAX_SECRETS_PER_USER,
    SecretCreateRequest,
    SecretInfo,
    SecretList,
    SecretUpdateRequest,
)
from threadline.secrets.tables import user_secrets


@dataclass(frozen=True)
class StoredSecret:
    """A decrypted secret; the value is kept out of repr so it never lands in a log."""

    name: str
    description: str | None
    value: str = field(repr=False)


@dataclass(frozen=True)
class SecretRecord:
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime

    def to_info(self) -> SecretInfo:
        return SecretInfo(
            name=self.name, description=self.description, created_at=self.created_at, updated_at=self.updated_at
        )


_COLUMNS = (user_secrets.c.name, user_secrets.c.description, user_secrets.c.created_at, user_secrets.c.updated_at)


def _missing(name: str) -> NotFound:
    return NotFound(f"secret {name!r} not found")


async def _record(conn: AsyncConnection, *, user_id: str, name: str) -> SecretRecord | None:
    row = (
        await conn.execute(select(*_COLUMNS).where(user_secrets.c.user_id == user_id, user_secrets.c.name == name))
    ).first()
    return SecretRecord(row.name, row.description, row.created_at, row.updated_at) if row is not None else None


async def list_secrets(db: Database, *, user_id: str) -> SecretList:
    async with db.read() as conn:
        rows = (
            await conn.execute(select(*_COLUMNS).where(user_secrets.c.user_id == user_id).order_by(user_secrets.c.name))
        ).all()
    return SecretList(secrets=[SecretRecord(r.name, r.description, r.created_at, r.updated_at).to_info() for r in rows])


async def get_secret(db: Database, *, user_id: str, name: str) -> SecretInfo:
    async with db.read() as conn:
        record = await _record(conn, user_id=user_id, name=name)
    if record is None:
        raise _missing(name)
    return record.to_info()


async def create_secret(db: Database, box: SecretBox, *, user_id: str, request: SecretCreateRequest) -> SecretInfo:
    now = utcnow()
    try:
        async with db.write() as conn:
            if conn.dialect.name == "postgresql":
                # Creates of one user are serialised on their user row, so the limit holds under concurrency.
                await conn.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
            count = (
                await conn.execute(
                    select(func.count()).select_from(user_secrets).where(user_secrets.c.user_id == user_id)
                )
            ).scalar_one()
            if count >= MAX_SECRETS_PER_USER:
                raise Conflict(
                    f"at most {MAX_SECRETS_PER_USER} secrets per user; delete one first", type_slug="secret-limit"
                )
            await conn.execute(
                user_secrets.insert().values(
                    user_id=user_id,
                    name=request.name,
                    description=request.description,
                    value_enc=box.encrypt(request.value),
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError as exc:
        raise Conflict(f"a secret named {request.name!r} exists already", type_slug="secret-exists") from exc
    return SecretInfo(name=request.name, description=request.description, created_at=now, updated_at=now)


async def update_secret(
    db: Database, box: SecretBox, *, user_id: str, name: str, request: SecretUpdateRequest
) -> SecretInfo:
    sent = request.model_fields_set
    changes: dict[str, object] = {}
    if "name" in sent and request.name is not None:
        changes["name"] = request.name
    if "value" in sent and request.value is not None:
        changes["value_enc"] = box.encrypt(request.value)
    if "description" in sent:
        changes["description"] = request.description
    try:
        async with db.write() as conn:
            if changes:
                changes["updated_at"] = utcnow()
                result = await conn.execute(
                    update(user_secrets)
                    .where(user_secrets.c.user_id == user_id, user_secrets.c.name == name)
                    .values(**changes)
                )
                if result.rowcount == 0:
                    raise _missing(name)
            record = await _record(conn, user_id=user_id, name=str(changes.get("name", name)))
    except IntegrityError as exc:
        raise Conflict(f"a secret named {request.name!r} exists already", type_slug="secret-exists") from exc
    if record is None:
        raise _missing(name)
    return record.to_info()


async def delete_secret(db: Database, *, user_id: str, name: str) -> None:
    async with db.write() as conn:
        result = await conn.execute(
            delete(user_secrets).where(user_secrets.c.user_id == user_id, user_secrets.c.name == name)
        )
    if result.rowcount == 0:
        raise _missing(name)


async def stored_secrets(db: Database, box: SecretBox, *, user_id: str) -> list[StoredSecret]:
    """Every secret of the user, decrypted. One the server can no longer decrypt (its secret changed) is
    left out rather than handed to the agent as garbage."""
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(user_secrets.c.name, user_secrets.c.description, user_secrets.c.value_enc)
                .where(user_secrets.c.user_id == user_id)
                .order_by(user_secrets.c.name)
            )
        ).all()
    found: list[StoredSecret] = []
    for row in rows:
        try:
            found.append(StoredSecret(row.name, row.description, box.decrypt(row.value_enc)))
        except ValueError:
            continue
    return found


async def secret_value(db: Database, box: SecretBox, *, user_id: str, name: str) -> str | None:
    async with db.read() as conn:
        encrypted = (
            await conn.execute(
                select(user_secrets.c.value_enc).where(user_secrets.c.user_id == user_id, user_secrets.c.name == name)
            )
        ).scalar_one_or_none()
    if encrypted is None:
        return None
    try:
        return box.decrypt(encrypted)
    except ValueError as exc:
        raise Conflict(
            f"secret {name!r} cannot be decrypted (the server secret changed); set it again",
            type_slug="secret-unreadable",
        ) from exc
