"""Users and API keys. Keys are random tokens with a recognisable prefix, stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from threadline.auth.tables import api_keys, auth_epoch, users
from threadline.core.errors import Conflict, NotFound, Problem
from threadline.core.ids import new_id
from threadline.db.engine import Database
from threadline.db.types import utcnow

KEY_PREFIX = "tl_"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class User:
    id: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    user_id: str
    user_name: str
    label: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough; no salt or KDF needed.
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _user(row: object) -> User:
    return User(id=row.id, name=row.name, is_admin=row.is_admin, created_at=row.created_at)  # type: ignore[attr-defined]


async def create_user(db: Database, name: str, *, is_admin: bool = False) -> User:
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS:
        raise Problem("user names are 1-128 characters of letters, digits, '.', '_', '-', '@'", status=422)
    user = User(id=new_id(), name=name, is_admin=is_admin, created_at=utcnow())
    try:
        async with db.write() as conn:
            await conn.execute(
                users.insert().values(id=user.id, name=user.name, is_admin=user.is_admin, created_at=user.created_at)
            )
    except IntegrityError as exc:
        raise Conflict(f"a user named {name!r} already exists") from exc
    return user


async def get_user_by_name(db: Database, name: str) -> User:
    async with db.read() as conn:
        row = (await conn.execute(select(users).where(users.c.name == name))).first()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return _user(row)


async def count_users(db: Database) -> int:
    async with db.read() as conn:
        rows = (await conn.execute(select(users.c.id).limit(1))).all()
    return len(rows)


async def create_key(db: Database, user_id: str, label: str | None = None) -> tuple[ApiKeyInfo, str]:
    """Create a key; returns its record and the key itself, which is never retrievable again."""
    key = generate_key()
    now = utcnow()
    key_id = new_id()
    async with db.write() as conn:
        row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        if row is None:
            raise NotFound("no such user")
        await conn.execute(
            api_keys.insert().values(
                id=key_id,
                user_id=user_id,
                label=label,
                prefix=key[: len(KEY_PREFIX) + 6],
                key_hash=hash_key(key),
                created_at=now,
                revoked_at=None,
            )
        )
    info = ApiKeyInfo(
        id=key_id,
        user_id=user_id,
        user_name=row.name,
        label=label,
        prefix=key[: len(KEY_PREFIX) + 6],
        created_at=now,
        revoked_at=None,
    )
    return info, key


async def list_keys(db: Database) -> list[ApiKeyInfo]:
    query = (
        select(api_keys, users.c.name.label("user_name"))
        .join(users, users.c.id == api_keys.c.user_id)
        .order_by(api_keys.c.created_at)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [
        ApiKeyInfo(
            id=r.id,
            user_id=r.user_id,
            user_name=r.user_name,
            label=r.label,
            prefix=r.prefix,
            created_at=r.created_at,
            revoked_at=r.revoked_at,
        )
        for r in rows
    ]


async def revoke_key(db: Database, key_id: str) -> str:
    """Revoke by id, or by a unique beginning of one (4 characters or more, as `keys list` may show it cut
    with a trailing "…"); returns the whole id."""
    key_id = key_id.strip().rstrip("…").lower()
    async with db.write() as conn:
        if len(key_id) != 32 and len(key_id) >= 4:
            found = (
                await conn.execute(select(api_keys.c.id).where(api_keys.c.id.startswith(key_id, autoescape=True)))
            ).all()
            if len(found) > 1:
                raise Conflict(f"{key_id!r} is the beginning of {len(found)} key ids; give more of it")
            if found:
                key_id = found[0].id
        result = await conn.execute(
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
        if result.rowcount == 0:
            exists = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
            if exists is None:
                raise NotFound(f"no API key with id {key_id!r}")
    return key_id


async def revoke_own_key(db: Database, *, user_id: str, key_id: str) -> None:
    """Revoke one of the user's own keys by its whole id; another user's key is as missing as no key."""
    async with db.write() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.revoked_at).where(api_keys.c.id == key_id.lower(), api_keys.c.user_id == user_id)
            )
        ).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        if row.revoked_at is None:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id.lower()).values(revoked_at=utcnow()))


async def authenticate(db: Database, key: str) -> User | None:
    """The user a live key belongs to, or None for an unknown or revoked key."""
    found = await authenticate_key(db, key)
    return found[0] if found else None


async def authenticate_key(db: Database, key: str) -> tuple[User, str] | None:
    """The user a live key belongs to and the key's id (rate limits are per key), or None. Reads the
    database; servers ask `auth.cache.KeyCache` instead, which calls `read_key` only on a miss."""
    digest = key_digest(key)
    if digest is None:
        return None
    found, _ = await read_key(db, digest)
    return found


def key_digest(key: str) -> str | None:
    """The hash a key is looked up by; None for what cannot be a key at all."""
    if not key.startswith(KEY_PREFIX) or len(key) > 256:
        return None
    return hash_key(key)


async def read_key(db: Database, digest: str) -> tuple[tuple[User, str] | None, int]:
    """The live key with this hash (its user and id) or None, and the auth epoch, read in one transaction:
    what was read is true as of that epoch."""
    query = (
        select(users, api_keys.c.id.label("key_id"), api_keys.c.key_hash, api_keys.c.revoked_at)
        .join(api_keys, api_keys.c.user_id == users.c.id)
        .where(api_keys.c.key_hash == digest)
    )
    async with db.read() as conn:
        epoch = int((await conn.execute(select(auth_epoch.c.epoch).where(auth_epoch.c.id == 1))).scalar_one())
        row = (await conn.execute(query)).first()
    if row is None or row.revoked_at is not None:
        return None, epoch
    # The lookup went by hash; compare again in constant time so timing says nothing about the key.
    if not hmac.compare_digest(row.key_hash, digest):
        return None, epoch
    return (_user(row), row.key_id), epoch


async def read_epoch(db: Database) -> int:
    """The auth epoch: it goes up with every change to users or API keys (migration 0011's triggers)."""
    async with db.read() as conn:
        return int((await conn.execute(select(auth_epoch.c.epoch).where(auth_epoch.c.id == 1))).scalar_one())
