"""What the CLI commands that talk to a server share: the client, error reporting, exit codes.

Exit codes: 0 success; 1 the server answered an error (its problem `detail` on stderr) or could not be
reached; 2 a usage error (bad option, not logged in).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from threadline.cli import client_config

if TYPE_CHECKING:
    # The client (httpx, the wire models) loads when a command runs, not for `threadline --help`.
    from threadline.client import Threadline, ThreadlineError

EXIT_API_ERROR = 1
EXIT_USAGE = 2
# A CLI gives up sooner than a program: about 7 s of retries at most (the SDK's default is about 15 s).
CLI_MAX_RETRIES = 4

# soft_wrap: messages are never broken across lines (people grep them, tests match them).
err = Console(stderr=True, soft_wrap=True, highlight=False)


def out() -> Console:
    """A console on stdout, made when needed: it sizes tables to the terminal (or $COLUMNS) of now."""
    return Console(highlight=False)


def fail(message: str, code: int = EXIT_API_ERROR) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def usage_error(message: str) -> typer.Exit:
    return fail(message, EXIT_USAGE)


def report(exc: ThreadlineError) -> None:
    """The problem's detail (which names the fields of a validation error), then status and title."""
    suffix = f" [dim]({exc.status} {escape(exc.title)})[/dim]" if exc.status else ""
    if exc.status is not None and exc.status >= 500 and exc.request_id:
        suffix += f" [dim]request id {escape(exc.request_id)}[/dim]"
    err.print(f"[red]error:[/red] {escape(exc.detail)}{suffix}")


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn client errors into a message on stderr and exit code 1 (2 when not logged in)."""
    from threadline.client import ThreadlineError

    try:
        yield
    except ThreadlineError as exc:
        report(exc)
        raise typer.Exit(EXIT_API_ERROR) from exc
    except client_config.ConfigError as exc:
        raise usage_error(str(exc)) from exc


class _RetryNotices(logging.Handler):
    """Shows the client's retries on stderr, so a wait for a restarting server is not a silent hang."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[dim]{escape(record.getMessage())}[/dim]")


_notices = _RetryNotices(logging.WARNING)


def show_retries() -> None:
    client_log = logging.getLogger("threadline.client")
    if _notices not in client_log.handlers:
        client_log.addHandler(_notices)


def open_client() -> Threadline:
    """A client for the server of `threadline login` (or THREADLINE_URL / THREADLINE_API_KEY)."""
    try:
        creds = client_config.resolve()
    except client_config.ConfigError as exc:
        raise usage_error(str(exc)) from exc
    show_retries()
    from threadline.client import Threadline

    return Threadline(creds.url, creds.api_key, max_retries=CLI_MAX_RETRIES)
