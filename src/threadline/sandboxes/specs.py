"""Sandbox specs: which agent-server version a new sandbox runs.

Upstream lets a client pick the agent server with `sandbox_spec_id` (there, a container image). Here each
installed agent runtime (`threadline runtime install --version V`) is a spec, with ids that stay stable:

- `<backend>` (`bwrap`, or `process`): the default spec, the newest installed version. It is the id every
  sandbox had before versions could be chosen, so clients that name it keep working.
- `<backend>-<version>` (e.g. `bwrap-1.21.0`): exactly that agent-server version, listed while it is installed.

A spec id of the other backend, of a version not installed, or of anything else is unknown (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from threadline.sandboxes import runtime


@dataclass(frozen=True)
class Spec:
    id: str
    version: str
    runtime_dir: Path
    created_at: datetime


def default_version(found: dict[str, Path]) -> str:
    """The newest installed version; the pinned one while nothing is installed (a start then fails with
    the message that says how to install it)."""
    return next(iter(found), runtime.AGENT_SERVER_VERSION)


def spec_ids(backend: str, version: str, found: dict[str, Path]) -> list[str]:
    """The ids that start `version`: the version-qualified one, and the plain one for the default."""
    qualified = f"{backend}-{version}"
    return [backend, qualified] if version == default_version(found) else [qualified]


def _created_at(directory: Path) -> datetime:
    stamp = runtime.installed_at(directory)
    return datetime.fromtimestamp(stamp, UTC) if stamp is not None else datetime.fromtimestamp(0, UTC)


def all_specs(backend: str, runtime_dir: Path) -> list[Spec]:
    """The default spec first, then one per installed version, newest first."""
    found = runtime.installed(runtime_dir)
    default = default_version(found)
    default_dir = found.get(default, runtime.dir_for(runtime_dir, default))
    specs = [Spec(backend, default, default_dir, _created_at(default_dir))]
    specs += [Spec(f"{backend}-{v}", v, d, _created_at(d)) for v, d in found.items()]
    return specs


def resolve(backend: str, runtime_dir: Path, spec_id: str | None) -> Spec | None:
    """The spec a sandbox is started with (None: the default); None when there is no such spec."""
    wanted = spec_id or backend
    return next((s for s in all_specs(backend, runtime_dir) if s.id == wanted), None)
