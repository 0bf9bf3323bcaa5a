"""The web console's pages: sign in and out, the conversations list, one conversation, starting one, costs, and
the shared view of a public conversation. Pages are small HTML shells; their JS modules call the JSON API with
the session cookie (`auth.sessions`). None of these routes is in the OpenAPI document."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Header, Request
from starlette.responses import RedirectResponse, Response

from threadline.auth.cache import KeyCache
from threadline.auth.dependencies import anonymous_client, console_sessions, session_user
from threadline.auth.service import User, key_digest
from threadline.auth.sessions import SESSION_COOKIE
from threadline.console.pages import Viewer, asset_response, not_found, render
from threadline.conversations.service import require_owned
from threadline.core.context import Context
from threadline.core.errors import NotFound, Problem
from threadline.core.ids import MalformedId, parse_id

router = APIRouter(include_in_schema=False)

# Binds the sign-in form to the browser that loaded it (login CSRF): a double-submitted nonce, SameSite=Strict.
SIGN_IN_COOKIE = "threadline_sign_in"
MAX_FORM_BYTES = 8192


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _next_path(value: str | None) -> str:
    """Where to go after signing in: a path of this server only (never `//host` or a URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/conversations"
    return value


async def _signed_in(request: Request, ctx: Context) -> tuple[User, Viewer] | None:
    found = await session_user(request, ctx)
    if found is None:
        return None
    user, token = found
    sessions = console_sessions(request)
    assert sessions is not None
    return user, Viewer(user.name, sessions.csrf_token(token))


def _to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)
    if SESSION_COOKIE in request.cookies:
        # An expired session, or its key was revoked: the cookie is of no use any more.
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Problem("the form is too large", status=413, type_slug="payload-too-large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def _sign_in_page(request: Request, *, detail: str = "", status: int = 200, next_path: str = "") -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        "sign_in",
        title="Sign in",
        viewer=Viewer(),
        status=status,
        csrf_field=nonce,
        next=next_path or _next_path(request.query_params.get("next")),
        error=detail,
        error_hidden="" if detail else "hidden",
    )
    response.set_cookie(
        SIGN_IN_COOKIE, nonce, path="/sign-in", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request, ctx: Context) -> Response:
    if await _signed_in(request, ctx) is not None:
        return RedirectResponse(_next_path(request.query_params.get("next")), status_code=303)
    return _sign_in_page(request)


@router.post("/sign-in")
async def sign_in(request: Request, ctx: Context) -> Response:
    form = await _form(request)
    next_path = _next_path(form.get("next"))
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, form.get("csrf_token", "")):
        return _sign_in_page(
            request,
            detail="The sign-in form expired or came from another site: please sign in again.",
            status=400,
            next_path=next_path,
        )
    try:
        await anonymous_client(ctx, request)
    except Problem as exc:
        return _sign_in_page(request, detail=exc.detail, status=exc.status, next_path=next_path)
    key = form.get("api_key", "").strip()
    cache: KeyCache = request.app.state.auth_cache
    digest = key_digest(key)
    found = await cache.authenticate_digest(digest) if digest is not None else None
    sessions = console_sessions(request)
    if found is None or digest is None or sessions is None:
        # The same words as the API's 401 problem for a bad key.
        return _sign_in_page(request, detail="the API key is unknown or revoked", status=401, next_path=next_path)
    token = sessions.issue(digest)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=sessions.max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in", httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    form = await _form(request)
    token = request.cookies.get(SESSION_COOKIE)
    sessions = console_sessions(request)
    if token and sessions is not None and sessions.digest_of(token) is not None:
        if not sessions.csrf_ok(token, form.get("csrf_token")):
            return render(
                "not_found",
                title="Bad request",
                viewer=Viewer(),
                status=400,
                detail="Signing out needs the page's CSRF token: sign out from a console page.",
            )
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response


async def _page(request: Request, ctx: Context, template: str, title: str, script: str) -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _to_sign_in(request)
    return render(template, title=title, viewer=signed_in[1], script=script)


@router.get("/")
async def home(request: Request, ctx: Context) -> Response:
    return await _page(request, ctx, "list", "Conversations", "list.js")


@router.get("/conversations")
async def conversations_page(request: Request, ctx: Context) -> Response:
    return await _page(request, ctx, "list", "Conversations", "list.js")


@router.get("/conversations/new")
async def start_page(request: Request, ctx: Context) -> Response:
    return await _page(request, ctx, "start", "New conversation", "start.js")


@router.get("/costs")
async def costs_page(request: Request, ctx: Context) -> Response:
    return await _page(request, ctx, "costs", "Costs", "costs.js")


@router.get("/conversations/{conversation_id}")
async def conversation_page(request: Request, ctx: Context, conversation_id: str) -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _to_sign_in(request)
    user, viewer = signed_in
    try:
        cid = parse_id(conversation_id)
        await ctx.db.run_read(require_owned, user_id=user.id, conversation_id=cid)
    except (MalformedId, NotFound):
        return not_found(request.url.path, viewer, f"You have no conversation {conversation_id}.")
    return render(
        "conversation",
        title="Conversation",
        viewer=viewer,
        script="conversation.js",
        data={"conversation-id": cid, "mode": "owner"},
    )


@router.get("/shared/{conversation_id}")
async def shared_page(request: Request, ctx: Context, conversation_id: str) -> Response:
    signed_in = await _signed_in(request, ctx)
    viewer = signed_in[1] if signed_in is not None else Viewer()
    try:
        cid = parse_id(conversation_id)
    except MalformedId:
        return not_found(request.url.path, viewer, f"There is no shared conversation {conversation_id}.")
    # Whether it is public is the API's to say (the page shows its problem when it is not).
    return render(
        "conversation",
        title="Shared conversation",
        viewer=viewer,
        script="conversation.js",
        data={"conversation-id": cid, "mode": "shared"},
    )


@router.get("/console/static/{build}/{name}")
async def static_asset(
    request: Request, build: str, name: str, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    response = asset_response(build, name, if_none_match)
    return response if response is not None else not_found(request.url.path)
