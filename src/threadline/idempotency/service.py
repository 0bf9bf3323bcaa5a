"""Idempotency-Key: a retried create/start request returns the first one's result and starts nothing new.

A key belongs to one user. The first request with it inserts an `in_flight` row (primary key
user_id + key); that insert is the lock, across processes too: whoever loses the race finds the row.
When the handler is done the row holds its status and the exact response text (encrypted: a response
may carry a sandbox's session key), replayed for the key's lifetime. A retry meanwhile gets 409, a
reuse with another request 422. A 5xx, an unexpected exception or a 429 (a "try later" answer) releases
the key so the client may retry; other 4xx are kept.

An in-flight row expires after `idempotency_lock_seconds` (its process is taken for dead), a finished one
`idempotency_ttl_seconds` after it was created; expired rows are purged when met and periodically.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.responses import JSONResponse, Response

from threadline.config import Settings
from threadline.core.context import Context
from threadline.core.crypto import SecretBox
from threadline.core.errors import PROBLEM_JSON, Problem, problem_response
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.idempotency.tables import idempotency_keys as records

log = logging.getLogger("threadline.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
IN_FLIGHT = "in_flight"
DONE = "done"
PURGE_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class Result:
    """What the request answered: status and the exact JSON text; `replayed` when it came from the store."""

    status: int
    body: str
    replayed: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def headers(self) -> dict[str, str]:
        return {REPLAYED_HEADER: "true"} if self.replayed else {}

    def response(self) -> Response:
        media_type = PROBLEM_JSON if self.status >= 400 else "application/json"
        return Response(self.body, status_code=self.status, media_type=media_type, headers=self.headers)


@dataclass(frozen=True)
class _Claim:
    user_id: str
    key: str
    created_at: datetime


class IdempotencyService:
    def __init__(self, db: Database, settings: Settings, box: SecretBox) -> None:
        self.db = db
        self.box = box
        self.secret = settings.resolved_secret_key.encode()
        self.ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
        self.lock = timedelta(seconds=settings.idempotency_lock_seconds)
        self.purge_interval = min(PURGE_INTERVAL_SECONDS, settings.idempotency_ttl_seconds)
        self._last_purge = float("-inf")

    def fingerprint(self, request: Any) -> str:
        """A keyed hash of the request (never the request itself: start requests carry secrets)."""
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    async def run(
        self,
        user_id: str,
        key: str | None,
        operation: str,
        request: Any,
        action: Callable[[], Awaitable[BaseModel]],
    ) -> Result:
        """Run `action` once per (user, key): later calls with the same key get its stored result.

        Without a key the action simply runs and its Problems propagate. With one, a 4xx Problem (not
        429) is the stored result too; a 5xx, a 429 or any other exception frees the key and propagates.
        """
        if key is None:
            return _render(await action())
        found = await self._claim(user_id, key, operation, self.fingerprint(request))
        if isinstance(found, Result):
            return found
        try:
            result = _render(await action())
        except Problem as exc:
            if exc.status >= 500 or exc.status == 429:
                await self._release(found)
                raise
            rendered = problem_response(
                exc.status, exc.detail, title=exc.title, type_slug=exc.type_slug, **exc.extra
            ).body
            result = Result(exc.status, bytes(rendered).decode())
        except BaseException:
            await self._release(found)
            raise
        await self._finish(found, result)
        return result

    # -- the record ------------------------------------------------------------------------------

    def _insert(self) -> Any:
        return sqlite_insert(records) if self.db.is_sqlite else pg_insert(records)

    async def _claim(self, user_id: str, key: str, operation: str, request_hash: str) -> _Claim | Result:
        await self._maybe_purge()
        for _ in range(5):
            now = utcnow()
            async with self.db.write() as conn:
                # An expired record does not hold the key any more.
                await conn.execute(
                    delete(records).where(
                        records.c.user_id == user_id, records.c.key == key, records.c.expires_at <= now
                    )
                )
                inserted = await conn.execute(
                    self._insert()
                    .values(
                        user_id=user_id,
                        key=key,
                        operation=operation,
                        request_hash=request_hash,
                        state=IN_FLIGHT,
                        response_status=None,
                        response_body=None,
                        created_at=now,
                        expires_at=now + self.lock,
                    )
                    .on_conflict_do_nothing(index_elements=[records.c.user_id, records.c.key])
                )
                if inserted.rowcount == 1:
                    return _Claim(user_id, key, now)
                # Lost the race (or a retry): the row is there, committed, whoever wrote it.
                row = (
                    await conn.execute(select(records).where(records.c.user_id == user_id, records.c.key == key))
                ).first()
            if row is None:
                continue  # released between our insert and our read: try to take it again
            if row.operation != operation or row.request_hash != request_hash:
                raise Problem(
                    f"this {HEADER} was already used with a different request ({row.operation}); "
                    "use a new key for a new request",
                    status=422,
                    type_slug="idempotency-key-reused",
                )
            if row.state == IN_FLIGHT:
                raise Problem(
                    f"a request with this {HEADER} is still being processed; retry when it has finished",
                    status=409,
                    type_slug="idempotency-key-in-flight",
                    headers={"Retry-After": "1"},
                )
            return Result(row.response_status, self.box.decrypt(row.response_body), replayed=True)
        raise Problem(f"this {HEADER} is contended; retry", status=409, type_slug="idempotency-key-in-flight")

    async def _finish(self, claim: _Claim, result: Result) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(records)
                .where(
                    records.c.user_id == claim.user_id,
                    records.c.key == claim.key,
                    records.c.created_at == claim.created_at,
                    records.c.state == IN_FLIGHT,
                )
                .values(
                    state=DONE,
                    response_status=result.status,
                    response_body=self.box.encrypt(result.body),
                    expires_at=claim.created_at + self.ttl,
                )
            )

    async def _release(self, claim: _Claim) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    delete(records).where(
                        records.c.user_id == claim.user_id,
                        records.c.key == claim.key,
                        records.c.created_at == claim.created_at,
                        records.c.state == IN_FLIGHT,
                    )
                )
        except Exception:  # the original error matters more; the key frees itself when its lock expires
            log.exception("could not release idempotency key of user %s", claim.user_id)

    async def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < self.purge_interval:
            return
        self._last_purge = now
        await self.purge_expired()

    async def purge_expired(self) -> int:
        async with self.db.write() as conn:
            result = await conn.execute(delete(records).where(records.c.expires_at <= utcnow()))
        return int(result.rowcount or 0)


def _render(model: BaseModel) -> Result:
    # Rendered the way JSONResponse renders, so a replay is byte for byte the first answer.
    body = JSONResponse(model.model_dump(mode="json", by_alias=True)).body
    return Result(200, bytes(body).decode())


@dataclass(frozen=True)
class Idempotent:
    """What a route holds: this request's key (if any) and operation, bound to the service."""

    service: IdempotencyService
    key: str | None
    operation: str
    params: dict[str, Any]

    async def run(self, user_id: str, body: BaseModel | None, action: Callable[[], Awaitable[BaseModel]]) -> Result:
        request = {"params": self.params, "body": body.model_dump(mode="json") if body is not None else None}
        return await self.service.run(user_id, self.key, self.operation, request, action)


async def idempotency(
    ctx: Context,
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            description="Makes a retry safe: the same key and request return the first result; scoped per user.",
        ),
    ] = None,
) -> Idempotent:
    """FastAPI dependency for routes that create or start something."""
    route = request.scope.get("route")
    operation = f"{request.method} {getattr(route, 'path', request.url.path)}"
    params = {"path": dict(request.path_params), "query": sorted(request.query_params.multi_items())}
    service: IdempotencyService = request.app.state.idempotency
    return Idempotent(service, key, operation, params)
