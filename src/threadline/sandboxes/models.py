"""Wire models of /api/v1/sandboxes and /api/v1/sandbox-specs (names follow the reference)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from threadline.sandboxes.status import SandboxStatus


class ExposedUrl(BaseModel):
    name: str
    url: str
    port: int


class SandboxInfo(BaseModel):
    id: str
    created_by_user_id: str | None
    sandbox_spec_id: str
    status: SandboxStatus
    session_api_key: str | None = Field(
        description="Key to access the sandbox as an `X-Session-API-Key` header; null unless RUNNING."
    )
    exposed_urls: list[ExposedUrl] | None = None
    created_at: datetime


class SandboxPage(BaseModel):
    items: list[SandboxInfo]
    next_page_id: str | None = None


class SandboxSpecInfo(BaseModel):
    id: str
    command: list[str] | None
    created_at: datetime
    initial_env: dict[str, str] = Field(default_factory=dict, description="Initial Environment Variables")
    working_dir: str = "/home/openhands/workspace"


class SandboxSpecInfoPage(BaseModel):
    items: list[SandboxSpecInfo]
    next_page_id: str | None = None
