"""Wire models of /api/v1/settings: a user's LLM settings. The API key is write-only."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

MAX_MODEL_LENGTH = 256  # user_settings.llm_model is String(256)
MAX_BASE_URL_LENGTH = 1024  # user_settings.llm_base_url is String(1024)
MAX_API_KEY_LENGTH = 4096


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _http_url(value: str) -> str:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ValueError("must be an http:// or https:// URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


# What _not_blank and _http_url accept, as JSON Schema patterns: the published OpenAPI admits nothing the
# server refuses. Something not blank (Python's whitespace: ECMA's \s plus \x1c-\x1f and \x85); an
# http(s) URL with a host (ASCII) and a port in range, with no whitespace or control character anywhere.
_NOT_BLANK_PATTERN = r"[^\s\x1c-\x1f\x85]"
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_URL_TAIL = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
BASE_URL_PATTERN = (
    rf"^https?://([A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9._~%!$&'()*+,;=-]+(:{_PORT})?([/?#]{_URL_TAIL})?$"
)
ModelName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_MODEL_LENGTH),
    AfterValidator(_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_MODEL_LENGTH, "pattern": _NOT_BLANK_PATTERN}),
]
BaseUrl = Annotated[
    str,
    Field(min_length=1, max_length=MAX_BASE_URL_LENGTH),
    AfterValidator(_http_url),
    WithJsonSchema(
        {
            "type": "string",
            "format": "uri",
            "minLength": 1,
            "maxLength": MAX_BASE_URL_LENGTH,
            "pattern": BASE_URL_PATTERN,
            "description": "An http:// or https:// URL with a host",
        }
    ),
]
ApiKey = Annotated[str, Field(min_length=1, max_length=MAX_API_KEY_LENGTH)]


class SettingSource(StrEnum):
    user = "user"
    server = "server"


class LLMSettings(BaseModel):
    """The LLM settings in effect for the caller: their own values, else the server-wide defaults."""

    llm_model: str | None = Field(description="Model used when a start request names none")
    llm_base_url: str | None = Field(description="Base URL of the LLM API; null means the provider's default")
    llm_api_key_set: bool = Field(description="Whether an API key is in effect; the key itself is never returned")
    llm_model_source: SettingSource | None = Field(description="Where llm_model comes from; null when unset")
    llm_base_url_source: SettingSource | None = Field(description="Where llm_base_url comes from; null when unset")
    llm_api_key_source: SettingSource | None = Field(description="Where the API key comes from; null when none")


class SettingsUpdateRequest(BaseModel):
    """Change the caller's LLM settings.

    An absent field keeps its stored value; a field sent as null clears the caller's own value, so the
    server-wide default applies again. The server-wide API key is only ever sent to the server-wide
    base URL: with a base URL of your own, set an API key of your own too.
    """

    model_config = ConfigDict(extra="forbid")

    llm_model: ModelName | None = None
    llm_base_url: BaseUrl | None = None
    llm_api_key: ApiKey | None = Field(default=None, description="Stored encrypted; never returned")
