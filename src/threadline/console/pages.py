"""The console's HTML: templates shipped in the package, filled with escaped values, answered with strict
security headers; and its static assets (CSS, JS modules), read once and served under a content-hashed path
so browsers may keep them for a year."""

from __future__ import annotations

import hashlib
import html
import string
from dataclasses import dataclass
from importlib import resources

from starlette.responses import HTMLResponse, Response

from threadline import __version__

# No inline script or style anywhere: every script and stylesheet comes from this server's own path.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; manifest-src 'self'"
)
HTML_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages carry the session's CSRF token: never kept by a cache.
    "Cache-Control": "no-store",
}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    assets = {}
    for entry in resources.files("threadline.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, _TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


def _load_templates() -> dict[str, string.Template]:
    folder = resources.files("threadline.console").joinpath("templates")
    return {
        entry.name.removesuffix(".html"): string.Template(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".html")
    }


ASSETS = _load_assets()
TEMPLATES = _load_templates()
# Part of every asset URL: a new release (or any changed file) is a new URL, so a year of caching is safe.
BUILD = hashlib.sha256(b"".join(ASSETS[name].etag.encode() for name in sorted(ASSETS))).hexdigest()[:12]
STATIC_PREFIX = f"/console/static/{BUILD}"


def asset_response(build: str, name: str, if_none_match: str | None) -> Response | None:
    asset = ASSETS.get(name)
    if asset is None:
        return None
    headers = {
        "ETag": asset.etag,
        "X-Content-Type-Options": "nosniff",
        # An older build's URL gets today's file: fine to use, not to keep.
        "Cache-Control": IMMUTABLE if build == BUILD else "no-cache",
    }
    if if_none_match is not None and asset.etag in if_none_match:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page: a signed-in user (with the session's CSRF token), or nobody."""

    name: str | None = None
    csrf: str = ""


def render(
    template: str,
    *,
    title: str,
    viewer: Viewer,
    script: str | None = None,
    status: int = 200,
    data: dict[str, str] | None = None,
    **values: str,
) -> HTMLResponse:
    """A page: `template`'s body (values HTML-escaped) inside the layout. `data` becomes data-* attributes
    of <main>, which is how a page's script learns its parameters (no inline script)."""
    body = TEMPLATES[template].substitute({k: html.escape(v) for k, v in values.items()}, static=STATIC_PREFIX)
    attributes = "".join(f' data-{html.escape(k)}="{html.escape(v)}"' for k, v in (data or {}).items())
    if viewer.name is not None:
        nav = TEMPLATES["nav_signed_in"].substitute(
            name=html.escape(viewer.name), csrf=html.escape(viewer.csrf), static=STATIC_PREFIX
        )
    else:
        nav = TEMPLATES["nav_signed_out"].substitute(static=STATIC_PREFIX)
    scripts = ""
    if script is not None:
        scripts = (
            f'<link rel="modulepreload" href="{STATIC_PREFIX}/api.js">'
            f'<script type="module" src="{STATIC_PREFIX}/{html.escape(script)}"></script>'
        )
    page = TEMPLATES["layout"].substitute(
        title=html.escape(title),
        static=STATIC_PREFIX,
        csrf=html.escape(viewer.csrf),
        nav=nav,
        body=body,
        scripts=scripts,
        main_attributes=attributes,
        version=html.escape(__version__),
    )
    return HTMLResponse(page, status_code=status, headers=HTML_HEADERS)


def not_found(path: str, viewer: Viewer | None = None, detail: str | None = None) -> HTMLResponse:
    return render(
        "not_found",
        title="Not found",
        viewer=viewer or Viewer(),
        status=404,
        detail=detail or f"There is no page at {path}.",
    )


# Paths of the API and of the server itself: their errors stay problem+json, whoever asks.
_API_PREFIXES = ("/api/", "/agent-server/", "/openapi.json", "/docs", "/redoc")
_API_PATHS = frozenset({"/api", "/agent-server", "/alive", "/health", "/ready", "/server_info", "/metrics"})


def is_console_request(method: str, path: str, accept: str) -> bool:
    """Whether a 404 for this request is the console's HTML page: a browser (Accept: text/html) asking with
    GET or HEAD for a path outside the API."""
    if method not in ("GET", "HEAD") or "text/html" not in accept:
        return False
    return path not in _API_PATHS and not path.startswith(_API_PREFIXES)
