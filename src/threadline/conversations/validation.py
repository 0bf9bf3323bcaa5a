"""Validation of repository names and git branch names (the rules of `git check-ref-format --branch`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

_REPO_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_REPOSITORY_LENGTH = 512
MAX_BRANCH_LENGTH = 255


def check_repository(value: str) -> str:
    """`owner/name`, or nested groups `group/sub/name`; no whitespace, `..` or shell metacharacters."""
    if not value or len(value) > MAX_REPOSITORY_LENGTH:
        raise ValueError(f"must be 1-{MAX_REPOSITORY_LENGTH} characters of the form owner/name")
    if ".." in value:
        raise ValueError("must not contain '..'")
    segments = value.split("/")
    if len(segments) < 2:
        raise ValueError("must be of the form owner/name (nested groups group/sub/name allowed)")
    for segment in segments:
        if not _REPO_SEGMENT.fullmatch(segment):
            raise ValueError(
                "must be of the form owner/name: each part letters, digits, '.', '_' or '-', "
                "not starting with '.' or '-'"
            )
    return value


def check_branch(value: str) -> str:
    """A valid branch name by the rules of `git check-ref-format --branch`."""
    if not value or len(value) > MAX_BRANCH_LENGTH:
        raise ValueError(f"must be a git branch name of 1-{MAX_BRANCH_LENGTH} characters")
    problems = []
    if value.startswith("-"):
        problems.append("must not start with '-'")
    if value == "@":
        problems.append("must not be '@'")
    if _REF_FORBIDDEN.search(value):
        problems.append("must not contain spaces, control characters or any of ~ ^ : ? * [ \\")
    if ".." in value:
        problems.append("must not contain '..'")
    if "@{" in value:
        problems.append("must not contain '@{'")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        problems.append("must not start or end with '/' or contain '//'")
    if value.endswith("."):
        problems.append("must not end with '.'")
    for component in value.split("/"):
        if component.startswith("."):
            problems.append("no path component may start with '.'")
            break
        if component.endswith(".lock"):
            problems.append("no path component may end with '.lock'")
            break
    if problems:
        raise ValueError("not a valid git branch name: " + "; ".join(problems))
    return value


# The same rules as JSON Schema patterns (ECMA 262), so the published OpenAPI admits only what is accepted.
REPOSITORY_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+$"
BRANCH_PATTERN = (
    r"^(?!-)(?!@$)(?!/)(?!\.)(?!.*\.\.)(?!.*@\{)(?!.*//)(?!.*/\.)(?!.*/$)(?!.*\.$)(?!.*\.lock(/|$))"
    r"[^\x00-\x20\x7f~^:?*\[\\]+$"
)
REPOSITORY_SCHEMA = {
    "type": "string",
    "minLength": 3,
    "maxLength": MAX_REPOSITORY_LENGTH,
    "pattern": REPOSITORY_PATTERN,
    "description": "owner/name (nested groups group/sub/name allowed)",
}
BRANCH_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_BRANCH_LENGTH,
    "pattern": BRANCH_PATTERN,
    "description": "A git branch name (`git check-ref-format --branch`)",
}

RepositoryName = Annotated[str, AfterValidator(check_repository), WithJsonSchema(REPOSITORY_SCHEMA)]
BranchName = Annotated[str, AfterValidator(check_branch), WithJsonSchema(BRANCH_SCHEMA)]
