"""Where the CLI keeps the server URL and API key of `threadline login`, and how it picks them.

The file is `$THREADLINE_CONFIG`, else `$XDG_CONFIG_HOME/threadline/config.json` (`~/.config/...`), a
JSON object `{"url": ..., "api_key": ...}` readable by its owner only (0600). THREADLINE_URL and
THREADLINE_API_KEY, when set, win over the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from threadline.client_env import ENV_API_KEY, ENV_URL

ENV_CONFIG = "THREADLINE_CONFIG"


class ConfigError(Exception):
    """The configuration file cannot be read, or there is no URL or key anywhere."""


@dataclass(frozen=True)
class Credentials:
    url: str
    api_key: str


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "threadline" / "config.json"


def load() -> dict[str, str]:
    """The stored values ({} when there is no file)."""
    path = config_path()
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON; run `threadline login` again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; run `threadline login` again")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def save(url: str, api_key: str) -> Path:
    """Write URL and key to the config file, readable and writable by its owner only (0600).

    Written to a temporary file (created 0600) and renamed over the old one, so no other user can read
    the key at any moment and a crash never leaves half a file.
    """
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        data = load()
    except ConfigError:
        data = {}  # an unreadable file is replaced
    data.update({"url": url, "api_key": api_key})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(url: str | None = None, api_key: str | None = None) -> Credentials:
    """Arguments first, then THREADLINE_URL / THREADLINE_API_KEY, then the config file."""
    url = url or os.environ.get(ENV_URL)
    api_key = api_key or os.environ.get(ENV_API_KEY)
    if not (url and api_key):
        stored = load()
        stored_url = stored.get("url")
        if not api_key and url and stored_url and url.rstrip("/") != stored_url.rstrip("/"):
            # The stored key belongs to another server: never send it to this one.
            stored.pop("api_key", None)
        url = url or stored_url
        api_key = api_key or stored.get("api_key")
    if not url or not api_key:
        raise ConfigError(
            f"not logged in: run `threadline login`, or set {ENV_URL} and {ENV_API_KEY} (config file: {config_path()})"
        )
    return Credentials(url.rstrip("/"), api_key)
