"""Several agent-server versions side by side: which are offered as sandbox specs, which spec a sandbox
gets, and what `threadline runtime` says. The runtimes here are laid out as `runtime.install` leaves
them (a venv's interpreter and the marker written last), without their 740 MB of packages: these tests
start no agent server (tests/test_sdk_client.py runs real ones of two versions)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import LiveServer
from tests.support.cli import run_cli
from threadline.sandboxes import runtime, specs
from threadline.sandboxes.tables import sandboxes

PINNED = runtime.AGENT_SERVER_VERSION


def lay_out(directory: Path, version: str, *, marker: bool = True, deps_before: str | None = None) -> Path:
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    (directory / "bin" / "python").write_text("")
    if marker:
        if deps_before is None and version == PINNED:
            deps_before = runtime.TESTED_DEPENDENCIES_BEFORE.isoformat()
        marker_data = {"package": runtime.AGENT_SERVER_PACKAGE, "version": version}
        marker_data["dependencies_uploaded_before"] = deps_before
        (directory / runtime.MARKER).write_text(json.dumps(marker_data))
    return directory


def test_the_pinned_runtime_counts_only_with_the_dependencies_it_was_tested_with(tmp_path: Path) -> None:
    """An install of the pinned version whose dependencies are newer (or unknown) is redone: a dependency's new
    release broke every conversation once (cryptography 51 and the SDK's Fernet keys)."""
    root = tmp_path / "agent-runtime"
    lay_out(root, PINNED)
    assert runtime.is_installed(root)
    for stale in ("", "2026-12-05T00:00:00+00:00"):
        lay_out(root, PINNED, deps_before=stale)
        assert not runtime.is_installed(root), stale
        assert runtime.installed(root) == {}
    # Another version's marker records its own cut-off (from its release), whatever it is.
    other = runtime.dir_for(root, "1.21.0")
    lay_out(other, "1.21.0", deps_before="2025-11-20T00:00:00+00:00")
    assert runtime.is_installed(other, "1.21.0")


@pytest.fixture
def runtimes(tmp_path: Path) -> Path:
    """The pinned runtime and 1.21.0 installed; 1.30.0 half installed (no marker); 1.40.0's directory
    holding another version; a stray directory that names no version."""
    root = tmp_path / "rt" / "agent-runtime"
    lay_out(root, PINNED)
    lay_out(runtime.dir_for(root, "1.21.0"), "1.21.0")
    lay_out(runtime.dir_for(root, "1.30.0"), "1.30.0", marker=False)
    lay_out(runtime.dir_for(root, "1.40.0"), "1.21.0")
    lay_out(root.with_name("agent-runtime-backup"), "1.21.0")
    return root


def test_installed_versions_are_found_newest_first(runtimes: Path) -> None:
    assert runtime.installed(runtimes) == {PINNED: runtimes, "1.21.0": runtimes.with_name("agent-runtime-1.21.0")}
    ids = [s.id for s in specs.all_specs("bwrap", runtimes)]
    assert ids == ["bwrap", f"bwrap-{PINNED}", "bwrap-1.21.0"]
    assert specs.resolve("bwrap", runtimes, None) == specs.resolve("bwrap", runtimes, "bwrap")
    assert specs.resolve("bwrap", runtimes, "bwrap").version == PINNED  # type: ignore[union-attr]
    for unknown in ("bwrap-1.30.0", "bwrap-1.40.0", "process-1.21.0", "bwrap-backup", "docker"):
        assert specs.resolve("bwrap", runtimes, unknown) is None
    # A newer version installed beside the pinned one becomes the default.
    lay_out(runtime.dir_for(runtimes, "9.0.0"), "9.0.0")
    assert specs.resolve("bwrap", runtimes, None).version == "9.0.0"  # type: ignore[union-attr]
    assert [s.id for s in specs.all_specs("bwrap", runtimes)][:2] == ["bwrap", "bwrap-9.0.0"]


def test_version_numbers_are_checked_before_they_name_a_directory(tmp_path: Path) -> None:
    for bad in ("../1.0.0", "1.0", "1.0.0rc1", "latest", "1.0.0/x"):
        with pytest.raises(runtime.RuntimeInstallError):
            runtime.dir_for(tmp_path / "agent-runtime", bad)
    assert runtime.dir_for(tmp_path / "agent-runtime", PINNED) == tmp_path / "agent-runtime"


def test_specs_over_http_and_sandboxes_record_their_version(
    server_factory: Any, runtimes: Path, tmp_path: Path
) -> None:
    server: LiveServer = server_factory(runtime_dir=runtimes)
    _, key = server.user("alice")
    client = server.client(key)
    backend = server.settings.sandbox_backend
    listed = client.get("/api/v1/sandbox-specs/search").json()["items"]
    assert [s["id"] for s in listed] == [backend, f"{backend}-{PINNED}", f"{backend}-1.21.0"]
    # The default spec is the pinned version's: the same install, the same time stamp.
    assert listed[0]["created_at"] == listed[1]["created_at"]
    assert all(s["command"][1:3] == ["-m", "openhands.agent_server"] for s in listed)
    got = client.get("/api/v1/sandbox-specs", params={"id": [f"{backend}-1.21.0", f"{backend}-1.30.0"]}).json()
    assert got[0]["id"] == f"{backend}-1.21.0" and got[1] is None

    info = client.get("/server_info").json()["sandboxes"]
    assert info["agent_server_versions"] == [PINNED, "1.21.0"]

    missing = client.post("/api/v1/sandboxes", params={"sandbox_spec_id": f"{backend}-1.30.0"})
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "sandbox-specs/search" in missing.json()["detail"]

    made = {}
    for spec_id in (f"{backend}-1.21.0", None, f"{backend}-{PINNED}"):
        r = client.post("/api/v1/sandboxes", params={"sandbox_spec_id": spec_id} if spec_id else {})
        assert r.status_code == 200, r.text
        made[r.json()["id"]] = spec_id or backend
        assert r.json()["sandbox_spec_id"] == (spec_id or backend)

    async def recorded() -> dict[str, tuple[str, str]]:
        async with server.ctx.db.read() as conn:
            rows = (await conn.execute(select(sandboxes.c.id, sandboxes.c.spec_id, sandboxes.c.runtime_version))).all()
        return {r.id: (r.spec_id, r.runtime_version) for r in rows}

    versions = {spec: version for spec, version in server.run(recorded()).values()}
    assert versions == {f"{backend}-1.21.0": "1.21.0", backend: PINNED, f"{backend}-{PINNED}": PINNED}


def test_runtime_list_and_status_show_every_version(runtimes: Path, tmp_path: Path) -> None:
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path), THREADLINE_RUNTIME_DIR=str(runtimes))
    listed = run_cli(env, "runtime", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = listed.stdout.splitlines()
    assert lines == [
        f"{runtimes}: {PINNED} (pinned); sandbox specs: bwrap, bwrap-{PINNED}",
        f"{runtimes.with_name('agent-runtime-1.21.0')}: 1.21.0; sandbox specs: bwrap-1.21.0",
    ]
    status = run_cli(dict(env, THREADLINE_SANDBOX_BACKEND="process"), "runtime", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"sandbox specs: process, process-{PINNED}" in status.stdout
    assert "1.21.0; sandbox specs: process-1.21.0" in status.stdout
    # Nothing pinned installed: said so, and the exit code tells a script.
    empty = run_cli(dict(env, THREADLINE_RUNTIME_DIR=str(tmp_path / "none" / "agent-runtime")), "runtime", "list")
    assert empty.returncode == 1 and f"not installed (wanted {PINNED})" in empty.stdout


def test_runtime_install_refuses_what_is_no_version(tmp_path: Path) -> None:
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path), THREADLINE_RUNTIME_DIR=str(tmp_path / "agent-runtime"))
    result = run_cli(env, "runtime", "install", "--version", "../../etc")
    assert result.returncode == 2 and "is not a release number" in result.stderr
    assert not list(tmp_path.iterdir())
    # --if-missing does nothing for a version that is installed (here, as an install leaves it).
    lay_out(tmp_path / "agent-runtime-1.21.0", "1.21.0")
    again = run_cli(env, "runtime", "install", "--version", "1.21.0", "--if-missing")
    assert again.returncode == 0 and again.stderr == ""


@pytest.mark.agent
def test_the_warm_pool_holds_the_default_version_only(
    agent_server_factory: Any, agent_runtime: Path, tmp_path: Path
) -> None:
    from tests.conftest import wait_for
    from tests.test_agent_e2e import sandbox_pids

    # The real runtimes, seen through a directory of this test's own (so a newer version can be "installed"
    # beside them here without touching the shared cache).
    root = tmp_path / "runtimes" / "agent-runtime"
    root.parent.mkdir()
    root.symlink_to(agent_runtime)
    server: LiveServer = agent_server_factory(runtime_dir=root, warm_pool_size=1, warm_pool_refill_interval=3600)
    user, key = server.user("pat")
    client = server.client(key)
    pool = server.app.state.pool

    def pool_rows() -> list[Any]:
        async def query() -> list[Any]:
            async with server.ctx.db.read() as conn:
                return list((await conn.execute(select(sandboxes).where(sandboxes.c.user_id.is_(None)))).all())

        return server.run(query())

    wait_for(lambda: client.get("/server_info").json()["warm_pool"]["ready"] == 1, timeout=90, what="pool ready")
    (pooled,) = pool_rows()
    assert pooled.runtime_version == PINNED and pooled.spec_id == server.settings.sandbox_backend
    # A start that needs another version does not get it.
    assert server.run(pool.claim(user.id, "1.21.0")) is None

    # A newer version is installed: it is the default now, and the pool's sandbox of the old one goes.
    lay_out(runtime.dir_for(root, "9.0.0"), "9.0.0")
    server.run(pool.refill(), timeout=60)
    assert pooled.id not in [r.id for r in pool_rows()]
    assert not sandbox_pids(server.settings.home, pooled.id)
    assert [r.runtime_version for r in pool_rows()] == ["9.0.0"]
    assert server.run(pool.claim(user.id)) is None  # its replacement never runs (9.0.0 is only laid out)
