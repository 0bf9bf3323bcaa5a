"""HTTP routes of /api/v1/sandboxes and /api/v1/sandbox-specs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from threadline.auth.dependencies import current_user, starting_user
from threadline.auth.service import User
from threadline.core.errors import Invalid, NotFound
from threadline.core.ids import MalformedId, id_list_schema, parse_id
from threadline.core.wire import PAGE_ID_SCHEMA, PAGE_ID_TITLE, Success
from threadline.idempotency.service import Idempotent, idempotency
from threadline.sandboxes.dependencies import Sandboxes
from threadline.sandboxes.models import SandboxInfo, SandboxPage, SandboxSpecInfo, SandboxSpecInfoPage

router = APIRouter(tags=["Sandbox"])
MAX_BATCH = 100


async def sandbox_id_path(sandbox_id: Annotated[str, Path()]) -> str:
    try:
        return parse_id(sandbox_id)
    except MalformedId as exc:
        raise NotFound(f"sandbox {sandbox_id!r} not found") from exc


def _ids(values: list[str]) -> list[str]:
    if len(values) > MAX_BATCH:
        raise Invalid("id", f"at most {MAX_BATCH} ids per request", location="query")
    parsed = []
    for value in values:
        try:
            parsed.append(parse_id(value))
        except MalformedId as exc:
            raise Invalid("id", f"{value!r} is not a valid id", location="query", input=value) from exc
    return parsed


@router.get("/api/v1/sandboxes/search", response_model=SandboxPage)
async def search_sandboxes(
    service: Sandboxes,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[int, Query(gt=0, le=100)] = 100,
    user: User = Depends(current_user),
) -> SandboxPage:
    return await service.search(user_id=user.id, limit=limit, page_id=page_id)


@router.get("/api/v1/sandboxes", response_model=list[SandboxInfo | None])
async def batch_get_sandboxes(
    service: Sandboxes,
    id: Annotated[list[str], Query(json_schema_extra=id_list_schema(MAX_BATCH))],
    user: User = Depends(current_user),
) -> list[SandboxInfo | None]:
    return await service.batch_get(user_id=user.id, ids=_ids(id))


@router.post("/api/v1/sandboxes", response_model=SandboxInfo, responses={404: {}, 409: {}, 422: {}, 429: {}})
async def start_sandbox(
    service: Sandboxes,
    sandbox_spec_id: str | None = None,
    user: User = Depends(starting_user),
    idempotent: Idempotent = Depends(idempotency),
) -> Response:
    async def create() -> SandboxInfo:
        return service.to_info(await service.create(user_id=user.id, spec_id=sandbox_spec_id))

    result = await idempotent.run(user.id, None, create)
    return result.response()


@router.post("/api/v1/sandboxes/{sandbox_id}/pause", response_model=Success, responses={404: {}})
async def pause_sandbox(
    service: Sandboxes,
    sandbox_id: str = Depends(sandbox_id_path),
    user: User = Depends(current_user),
) -> Success:
    await service.pause(user_id=user.id, sandbox_id=sandbox_id)
    return Success()


@router.post("/api/v1/sandboxes/{sandbox_id}/resume", response_model=Success, responses={404: {}, 429: {}})
async def resume_sandbox(
    service: Sandboxes,
    sandbox_id: str = Depends(sandbox_id_path),
    user: User = Depends(current_user),
) -> Success:
    await service.resume(user_id=user.id, sandbox_id=sandbox_id)
    return Success()


@router.delete("/api/v1/sandboxes/{sandbox_id}", response_model=Success, responses={404: {}})
async def delete_sandbox(
    service: Sandboxes,
    sandbox_id: str = Depends(sandbox_id_path),
    user: User = Depends(current_user),
) -> Success:
    # The id is taken from the path (upstream also demands it as a query parameter; it is ignored here).
    await service.delete(user_id=user.id, sandbox_id=sandbox_id)
    return Success()


@router.delete("/api/v1/sandboxes", response_model=Success, responses={404: {}})
async def delete_sandbox_by_query(
    service: Sandboxes,
    sandbox_id: Annotated[str, Query(description="The sandbox to delete (the form upstream clients send)")],
    user: User = Depends(current_user),
) -> Success:
    """The same as `DELETE /api/v1/sandboxes/{sandbox_id}`, with the id in the query, as the upstream route
    is really shaped (the OpenHands SDK's cloud workspace cleans up this way)."""
    await service.delete(user_id=user.id, sandbox_id=await sandbox_id_path(sandbox_id))
    return Success()


@router.get("/api/v1/sandbox-specs/search", response_model=SandboxSpecInfoPage)
async def search_sandbox_specs(
    service: Sandboxes,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[int, Query(gt=0, le=100)] = 100,
    _user: User = Depends(current_user),
) -> SandboxSpecInfoPage:
    return SandboxSpecInfoPage(items=service.specs()[:limit], next_page_id=None)


@router.get("/api/v1/sandbox-specs", response_model=list[SandboxSpecInfo | None])
async def batch_get_sandbox_specs(
    service: Sandboxes,
    id: Annotated[list[str], Query(json_schema_extra={"maxItems": MAX_BATCH})],
    _user: User = Depends(current_user),
) -> list[SandboxSpecInfo | None]:
    if len(id) > MAX_BATCH:
        raise Invalid("id", f"at most {MAX_BATCH} ids per request", location="query")
    specs = {s.id: s for s in service.specs()}
    return [specs.get(i) for i in id]
