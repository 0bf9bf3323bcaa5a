"""HTTP routes of the secrets: /api/v1/secrets for their owner (values write-only), and the lookup an
agent server inside a sandbox makes with that sandbox's session key. Thin: parse, call the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.core.context import Context
from threadline.core.errors import Conflict, NotFound, Unauthorized
from threadline.core.wire import Success, parse_without_echo
from threadline.sandboxes.dependencies import Sandboxes
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus
from threadline.secrets import service
from threadline.secrets.models import (
    NAME_PATTERN,
    SecretCreateRequest,
    SecretInfo,
    SecretList,
    SecretNameItem,
    SecretNamesResponse,
    SecretUpdateRequest,
)

router = APIRouter(tags=["Secrets"])

# Bodies are parsed by hand (parse_without_echo) so a 422 never echoes a value; the schemas are published.
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SecretCreateRequest.model_json_schema()}},
    }
}
_UPDATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SecretUpdateRequest.model_json_schema()}},
    }
}
SecretNamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="The secret's name")]


@router.get("/api/v1/secrets", response_model=SecretList)
async def list_secrets(ctx: Context, user: User = Depends(current_user)) -> SecretList:
    """The caller's secrets: names, descriptions and times. Values are never returned."""
    return await service.list_secrets(ctx.db, user_id=user.id)


@router.post(
    "/api/v1/secrets",
    status_code=201,
    response_model=SecretInfo,
    responses={409: {}, 422: {}},
    openapi_extra=_CREATE_BODY,
)
async def create_secret(request: Request, ctx: Context, user: User = Depends(current_user)) -> SecretInfo:
    """Store a secret, encrypted. Every conversation the caller starts afterwards gets it as a secret its
    agent can use (e.g. `GITHUB_TOKEN` in a command); a start request's `secrets` override it by name.
    409 when the name exists or the caller has 100 secrets."""
    body = parse_without_echo(SecretCreateRequest, await request.body())
    return await service.create_secret(ctx.db, ctx.box, user_id=user.id, request=body)


@router.get("/api/v1/secrets/{name}", response_model=SecretInfo, responses={404: {}})
async def get_secret(name: SecretNamePath, ctx: Context, user: User = Depends(current_user)) -> SecretInfo:
    return await service.get_secret(ctx.db, user_id=user.id, name=name)


@router.patch(
    "/api/v1/secrets/{name}",
    response_model=SecretInfo,
    responses={404: {}, 409: {}, 422: {}},
    openapi_extra=_UPDATE_BODY,
)
async def update_secret(
    ctx: Context,
    request: Request,
    name: SecretNamePath,
    user: User = Depends(current_user),
) -> SecretInfo:
    """Change the value, the description (null clears it) or the name. Running agents look secrets up
    when they use them, so a new value takes effect there too."""
    body = parse_without_echo(SecretUpdateRequest, await request.body())
    return await service.update_secret(ctx.db, ctx.box, user_id=user.id, name=name, request=body)


@router.delete("/api/v1/secrets/{name}", response_model=Success, responses={404: {}})
async def delete_secret(name: SecretNamePath, ctx: Context, user: User = Depends(current_user)) -> Success:
    await service.delete_secret(ctx.db, user_id=user.id, name=name)
    return Success()


# -- the sandbox side ----------------------------------------------------------------------------


async def _sandbox_owner(sandboxes: SandboxService, sandbox_id: str, x_session_api_key: str | None) -> str:
    """The owner of the sandbox whose session key this is: 401 without a valid key of this sandbox (upstream
    answers 403 for another sandbox's key; 401 tells no sandbox apart), 409 when it is not RUNNING."""
    row = await sandboxes.by_session_key(x_session_api_key) if x_session_api_key else None
    if row is None:
        raise Unauthorized("a valid X-Session-API-Key of a sandbox is required")
    if row.id != sandbox_id:
        raise Unauthorized("a valid X-Session-API-Key of this sandbox is required")
    status = sandboxes.effective_status(row)
    if status is not SandboxStatus.RUNNING:
        raise Conflict(f"the sandbox is {status.value}, not RUNNING: it has no agent to look secrets up for")
    if row.user_id is None:
        raise Unauthorized("the sandbox has no owner yet")
    owner: str = row.user_id
    return owner


@router.get(
    "/api/v1/sandboxes/{sandbox_id}/settings/secrets", response_model=SecretNamesResponse, responses={401: {}, 409: {}}
)
async def list_sandbox_secret_names(
    sandboxes: Sandboxes,
    ctx: Context,
    sandbox_id: str,
    x_session_api_key: Annotated[str | None, Header()] = None,
) -> SecretNamesResponse:
    """For the agent server inside the sandbox (its session key): the names of the owner's secrets."""
    owner = await _sandbox_owner(sandboxes, sandbox_id, x_session_api_key)
    listed = await service.list_secrets(ctx.db, user_id=owner)
    return SecretNamesResponse(secrets=[SecretNameItem(name=s.name, description=s.description) for s in listed.secrets])


@router.get(
    "/api/v1/sandboxes/{sandbox_id}/settings/secrets/{name}",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: {}, 404: {}, 409: {}},
)
async def get_sandbox_secret_value(
    sandboxes: Sandboxes,
    ctx: Context,
    sandbox_id: str,
    name: str,
    x_session_api_key: Annotated[str | None, Header()] = None,
) -> Response:
    """For the agent server inside the sandbox (its session key): one secret's value, as plain text,
    read when the agent uses it (so an updated value takes effect at once)."""
    owner = await _sandbox_owner(sandboxes, sandbox_id, x_session_api_key)
    value = await service.secret_value(ctx.db, ctx.box, user_id=owner, name=name)
    if value is None:
        raise NotFound(f"secret {name!r} not found")
    return Response(content=value, media_type="text/plain", headers={"Cache-Control": "no-store"})
