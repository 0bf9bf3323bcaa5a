"""The `threadline` command: the server and its administration."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from threadline.cli.conversations import conversations_app
from threadline.cli.login import login

if TYPE_CHECKING:
    # The server's modules (FastAPI, SQLAlchemy, Alembic) load only in the commands that use them:
    # `threadline --help` and the user commands stay quick.
    from threadline.auth import service as auth
    from threadline.db.engine import Database

# Plain help (rich_markup_mode=None) on every Typer: rich help rendering costs about 60 ms of CPU per
# `--help`, a fifth of the budget (issue 15 D4, docs/performance.md).
app = typer.Typer(
    help="Threadline: a self-hostable OpenHands App Conversations API server.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True, rich_markup_mode=None)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
runtime_app = typer.Typer(
    help="Manage the agent runtime (openhands-agent-server).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(runtime_app, name="runtime")
# For users of a server (over its API, not its database): login, then conversations.
app.command("login")(login)
app.add_typer(conversations_app, name="conversations")

# soft_wrap: messages are never broken across lines (people grep them, tests match them).
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def _run_db(action: Callable[[Database], Awaitable[T]]) -> T:
    """Run one administrative action against the configured database (migrated first)."""

    import asyncio

    from threadline.config import Settings
    from threadline.core.errors import Problem
    from threadline.db.engine import Database
    from threadline.db.migrate import upgrade_to_head

    async def main() -> T:
        settings = Settings()
        db = Database(settings.resolved_database_url, schema=settings.database_schema)
        try:
            await upgrade_to_head(db)
            return await action(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except Problem as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8000).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes (default: THREADLINE_WORKERS, else one per core up to 8). Each is a replica "
            "on this machine sharing the database; 1 serves from this process alone.",
        ),
    ] = None,
) -> None:
    """Run the API server (applies migrations; on first start creates an admin user and prints its key)."""
    import os

    import uvicorn

    from threadline.api.app import create_app
    from threadline.api.http_protocol import http_protocol
    from threadline.api.server import Server
    from threadline.auth import service as auth
    from threadline.config import Settings
    from threadline.observability.logging import configure_logging

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)  # type: ignore[arg-type]
    count = workers or settings.workers or settings.default_workers
    if settings.sandbox_backend == "bwrap":
        from threadline.sandboxes.isolated import check_bwrap

        problem = check_bwrap()
        if problem is not None:
            err.print(f"[red]error:[/red] the isolating sandbox backend cannot run: {problem}")
            err.print(
                "Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: `sudo dnf install bubblewrap`), "
                "or, for a single trusted user only, run without isolation: THREADLINE_SANDBOX_BACKEND=process"
            )
            raise typer.Exit(1)

    async def first_start(db: Database) -> str | None:
        if not settings.create_admin_on_first_start or await auth.count_users(db):
            return None
        user = await auth.create_user(db, "admin", is_admin=True)
        _, key = await auth.create_key(db, user.id, label="created on first start")
        return key

    # Every log record of the process, uvicorn's included, as JSON lines (or text) on stderr; one
    # access line per request comes from Threadline's middleware (with its request id), not uvicorn.
    configure_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("threadline")
    # One-time work, here and once, before any worker starts: migrations, the first admin and its key, and
    # the server secret (a file under home when not configured, which every worker must then read alike).
    admin_key = _run_db(first_start)
    if admin_key:
        log.warning("created user 'admin'; its API key is printed once on stdout, keep it safe")
        print(admin_key, flush=True)
    settings.resolved_secret_key  # noqa: B018 (created now, not raced by the workers)
    log.info(
        "Threadline on http://%s:%s (data in %s, %d worker(s))", settings.host, settings.port, settings.home, count
    )
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds),
        # A request the HTTP parser refuses is answered with problem+json too.
        "http": http_protocol(),
    }
    if count == 1:
        settings.workers = 1  # this process is the whole server: it enforces the whole of its rate limits
        # uvicorn's server, but open event streams end at once on shutdown instead of holding it up.
        Server(uvicorn.Config(create_app(settings), **common)).run()
        return
    # Workers are separate processes (uvicorn's supervisor: it forwards SIGTERM/SIGINT to each, waits for
    # all, and replaces one that dies). They read their settings from the environment, with what this
    # command was told on its command line put there.
    os.environ.update({"THREADLINE_HOST": settings.host, "THREADLINE_PORT": str(settings.port)})
    os.environ["THREADLINE_WORKERS"] = str(count)
    uvicorn.run("threadline.api.worker:create_worker_app", factory=True, workers=count, **common)


@users_app.command("create")
def users_create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
) -> None:
    """Create a user."""
    from threadline.auth import service as auth

    user = _run_db(lambda db: auth.create_user(db, name, is_admin=admin))
    print(user.id)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="Name of the user the key acts as.")],
    label: Annotated[str | None, typer.Option("--label", help="A note to tell keys apart.")] = None,
) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    from threadline.auth import service as auth

    async def action(db: Database) -> tuple[auth.ApiKeyInfo, str]:
        owner = await auth.get_user_by_name(db, user)
        return await auth.create_key(db, owner.id, label)

    info, key = _run_db(action)
    err.print(f"Created key {info.id} for {info.user_name}. It is shown this once:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    from rich.table import Column, Table

    from threadline.auth import service as auth

    keys = _run_db(auth.list_keys)
    table = Table("user", "label", "prefix", "created", "revoked")
    # Whole ids, whatever the terminal's width: the other columns wrap instead.
    table.columns.insert(0, Column("id", no_wrap=True, min_width=max((len(k.id) for k in keys), default=2)))
    for k in keys:
        table.add_row(
            k.id,
            k.user_name,
            k.label or "",
            k.prefix + "…",
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by its id, or a unique beginning of it (see `threadline keys list`)."""
    from threadline.auth import service as auth

    revoked = _run_db(lambda db: auth.revoke_key(db, key_id))
    err.print(f"Revoked key {revoked}.")


@runtime_app.command("install")
def runtime_install(
    python: Annotated[str | None, typer.Option("--python", help="Python >= 3.12 to build the runtime with.")] = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing when already installed.")] = False,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="An openhands-agent-server release to add beside the others (default: the pinned one). "
            "Each installed version is a sandbox spec clients can ask for; see `threadline runtime list`.",
        ),
    ] = None,
) -> None:
    """Install an agent runtime venv with openhands-agent-server (path: THREADLINE_RUNTIME_DIR, other
    versions beside it as THREADLINE_RUNTIME_DIR-VERSION). Versions already installed are kept."""
    from threadline.config import Settings
    from threadline.sandboxes import runtime

    wanted = version or runtime.AGENT_SERVER_VERSION
    try:
        target = runtime.dir_for(Settings().resolved_runtime_dir, wanted)
    except runtime.RuntimeInstallError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if if_missing and runtime.is_installed(target, wanted):
        return
    err.print(
        f"Installing {runtime.AGENT_SERVER_PACKAGE}=={wanted} into {target} "
        "(about 740 MB; a few minutes the first time). pip's progress follows."
    )
    try:
        # Not quiet: pip names each package as it goes, so a first start is never minutes of silence.
        runtime.install(target, python or Settings().runtime_python, quiet=False, version=wanted)
    except runtime.RuntimeInstallError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    err.print(f"Agent runtime {wanted} ready.")


def _print_runtimes() -> bool:
    """One line per installed runtime with its sandbox spec ids; False when the pinned one is missing."""
    from threadline.config import Settings
    from threadline.sandboxes import runtime
    from threadline.sandboxes.specs import spec_ids

    settings = Settings()
    target = settings.resolved_runtime_dir
    found = runtime.installed(target)
    if runtime.AGENT_SERVER_VERSION not in found:
        version = runtime.installed_version(target)
        print(f"{target}: {version or 'not installed'} (wanted {runtime.AGENT_SERVER_VERSION})")
    for version, directory in found.items():
        ids = ", ".join(spec_ids(settings.sandbox_backend, version, found))
        pinned = " (pinned)" if version == runtime.AGENT_SERVER_VERSION else ""
        print(f"{directory}: {version}{pinned}; sandbox specs: {ids}")
    return runtime.AGENT_SERVER_VERSION in found


@runtime_app.command("list")
def runtime_list() -> None:
    """List the installed agent runtimes and the sandbox spec ids that start each."""
    if not _print_runtimes():
        raise typer.Exit(1)


@runtime_app.command("status")
def runtime_status() -> None:
    """Show the installed agent runtimes, the sandbox backend and its limits."""
    from threadline.config import Settings

    settings = Settings()
    ready = _print_runtimes()
    print(f"sandbox backend: {settings.sandbox_backend}")
    problem = None
    if settings.sandbox_backend == "bwrap":
        from threadline.sandboxes.isolated import SandboxLimits, check_bwrap

        problem = check_bwrap()
        print(f"bubblewrap: {problem or 'works here'}")
        for name, value in SandboxLimits.from_settings(settings).enforcement().items():
            print(f"  {name}: {value}")
    else:
        print("  no isolation: every agent runs as this server's OS user (unsafe for more than one user)")
    if not ready or problem:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
