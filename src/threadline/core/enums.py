"""The API's enumerations, in a module of their own without pydantic: the CLI declares its options with
them, and `threadline --help` must not pay for the wire models (conversations.models re-exports them)."""

from __future__ import annotations

from enum import StrEnum


class ProviderType(StrEnum):
    github = "github"
    gitlab = "gitlab"
    bitbucket = "bitbucket"
    bitbucket_data_center = "bitbucket_data_center"
    forgejo = "forgejo"
    azure_devops = "azure_devops"
    enterprise_sso = "enterprise_sso"


class ConversationTrigger(StrEnum):
    resolver = "resolver"
    gui = "gui"
    suggested_task = "suggested_task"
    openhands_api = "openhands_api"
    slack = "slack"
    microagent_management = "microagent_management"
    jira = "jira"
    jira_dc = "jira_dc"
    linear = "linear"
    bitbucket = "bitbucket"
    automation = "automation"


class ConversationExecutionStatus(StrEnum):
    idle = "idle"
    running = "running"
    paused = "paused"
    waiting_for_confirmation = "waiting_for_confirmation"
    finished = "finished"
    error = "error"
    stuck = "stuck"
    deleting = "deleting"


class SortOrder(StrEnum):
    CREATED_AT = "CREATED_AT"
    CREATED_AT_DESC = "CREATED_AT_DESC"
    UPDATED_AT = "UPDATED_AT"
    UPDATED_AT_DESC = "UPDATED_AT_DESC"
