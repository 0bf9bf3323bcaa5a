"""Wire models of /api/v1/secrets and of the sandbox-side lookup. A value goes in, never out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_VALUE_CHARS = 64 * 1024
MAX_SECRETS_PER_USER = 100
# Names the sandbox's own plumbing depends on: a secret by that name would be injected into the agent's
# commands and break them (the proxy, the loader, the agent server's settings).
_RESERVED = re.compile(
    r"^(?:OH_.*|THREADLINE_.*|LD_.*|PATH|HOME|SHELL|USER|LOGNAME|PWD|TMPDIR|PYTHONPATH|PYTHONHOME"
    r"|(?:HTTP|HTTPS|ALL|NO)_PROXY)$",
    re.IGNORECASE,
)


def _not_reserved(name: str) -> str:
    if _RESERVED.match(name):
        raise ValueError(f"{name!r} is reserved for the sandbox's own environment; choose another name")
    return name


SecretName = Annotated[
    StrictStr,
    Field(
        pattern=NAME_PATTERN,
        description="An environment-variable name: a letter or underscore, then letters, digits and "
        "underscores, at most 64 characters. Names of the sandbox's own environment (PATH, HOME, OH_*, "
        "LD_*, *_PROXY, ...) are refused.",
        examples=["GITHUB_TOKEN"],
    ),
    AfterValidator(_not_reserved),
]
SecretValue = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_VALUE_CHARS, description="Write-only: stored encrypted, never returned."),
]
Description = Annotated[StrictStr, Field(max_length=1000)]


class SecretCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SecretName
    value: SecretValue
    description: Description | None = None


class SecretUpdateRequest(BaseModel):
    """Absent fields are kept; `description: null` clears it. `name` renames the secret."""

    model_config = ConfigDict(extra="forbid")

    name: SecretName | None = None
    value: SecretValue | None = None
    description: Description | None = None


class SecretInfo(BaseModel):
    name: str
    description: str | None = None
    created_at: datetime
    updated_at: datetime


class SecretList(BaseModel):
    secrets: list[SecretInfo]


class SecretNameItem(BaseModel):
    name: str
    description: str | None = None


class SecretNamesResponse(BaseModel):
    """What an agent server inside a sandbox may look up (names only, as upstream)."""

    secrets: list[SecretNameItem]
