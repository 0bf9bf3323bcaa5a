"""`threadline login`: check a server URL and API key, then keep them for the other commands."""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from threadline.cli import client_config
from threadline.cli.api_common import api_errors, err, fail, show_retries, usage_error

DEFAULT_URL = "http://127.0.0.1:8000"


def login(
    url: Annotated[str | None, typer.Option("--url", help="Server URL, e.g. https://threadline.example.com.")] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="API key; '-' reads it from stdin. Asked for (not echoed) when not given."),
    ] = None,
) -> None:
    """Log in to a Threadline server: checks the key with /api/v1/users/me, then stores URL and key.

    They are stored in $THREADLINE_CONFIG or ~/.config/threadline/config.json (mode 0600).
    THREADLINE_URL and THREADLINE_API_KEY, when set, take precedence over the stored values.
    """
    try:
        stored = client_config.load()
    except client_config.ConfigError:
        stored = {}
    if url is None:
        url = typer.prompt("Server URL", default=stored.get("url") or DEFAULT_URL)
    if key == "-":
        key = sys.stdin.readline().strip()
    elif key is None:
        key = typer.prompt("API key", hide_input=True)
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage_error(f"{url!r} is not an http:// or https:// URL")
    if not key:
        raise usage_error("the API key is empty")

    show_retries()
    from threadline.client import InvalidResponse, Threadline  # here: `threadline --help` stays light

    with api_errors(), Threadline(url, key, max_retries=2) as client:
        try:
            who = client.me().name
        except InvalidResponse:
            who = None  # another server of this API: the key was accepted, its user info has another shape
    try:
        path = client_config.save(url, key)
    except OSError as exc:
        raise fail(f"cannot write {client_config.config_path()}: {exc.strerror or exc}") from exc
    as_whom = f" as [bold]{escape(who)}[/bold]" if who else ""
    err.print(f"Logged in to {escape(url)}{as_whom}. Saved to {escape(str(path))} (readable by you only).")
