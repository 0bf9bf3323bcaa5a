"""`threadline conversations ...`: your conversations on a Threadline server, for its users.

Every command talks to the server of `threadline login` (or THREADLINE_URL / THREADLINE_API_KEY).
Exit codes: 0 success, 1 the server answered an error (its detail on stderr), 2 usage error.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from threadline.cli.api_common import api_errors, err, open_client, out, usage_error
from threadline.core.enums import ConversationExecutionStatus, ConversationTrigger, ProviderType, SortOrder

if TYPE_CHECKING:
    # The client (httpx, the wire models) loads when a command runs, not for `threadline --help`.
    from threadline.client import AppConversation, AppConversationStartTask, Threadline

conversations_app = typer.Typer(
    help="Your conversations on a Threadline server (log in first: `threadline login`).",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: see cli/main.py
)

NONE = "(none)"


# -- option types shared by several commands ---------------------------------------------------------

TagOption = Annotated[
    list[str] | None, typer.Option("--tag", help="KEY=VALUE; repeatable, every one must match.", show_default=False)
]
TagKeyOption = Annotated[list[str] | None, typer.Option("--tag-key", help="Has a tag KEY; repeatable.")]
RepoOption = Annotated[str | None, typer.Option("--repo", help="Repository owner/name.")]
ProviderOption = Annotated[ProviderType | None, typer.Option("--provider", help="Git provider.")]
TriggerOption = Annotated[ConversationTrigger | None, typer.Option("--trigger", help="What started it.")]
StatusOption = Annotated[
    ConversationExecutionStatus | None, typer.Option("--status", help="Last execution status the agent reported.")
]
ModelOption = Annotated[str | None, typer.Option("--model", help="LLM model.")]
TitleFilterOption = Annotated[str | None, typer.Option("--title", help="Title contains (case-insensitive).")]
SinceOption = Annotated[str | None, typer.Option("--since", help="Created at or after (ISO date or date-time; UTC).")]
UntilOption = Annotated[str | None, typer.Option("--until", help="Created before (ISO date or date-time; UTC).")]
PublicFilterOption = Annotated[
    bool | None, typer.Option("--public/--private", help="Only shared / only not shared.", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def parse_pairs(values: Iterable[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, tag_value = value.partition("=")
        if not sep or not key:
            raise usage_error(f"{option} {value!r}: expected KEY=VALUE")
        pairs[key] = tag_value
    return pairs


def parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise usage_error(f"{option} {value!r}: expected an ISO date or date-time, e.g. 2025-01-31") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_filters(
    *,
    title: str | None = None,
    repo: str | None = None,
    provider: ProviderType | None = None,
    trigger: ConversationTrigger | None = None,
    status: ConversationExecutionStatus | None = None,
    model: str | None = None,
    tags: list[str] | None = None,
    tag_keys: list[str] | None = None,
    public: bool | None = None,
    since: str | None = None,
    until: str | None = None,
    min_cost: float | None = None,
    parent: str | None = None,
    include_sub: bool = False,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "title_contains": title,
        "selected_repository": repo,
        "git_provider": provider,
        "trigger": trigger,
        "execution_status": status,
        "llm_model": model,
        "tags": parse_pairs(tags or [], "--tag") or None,
        "tag_keys": tag_keys or None,
        "public": public,
        "created_at_gte": parse_time(since, "--since"),
        "created_at_lt": parse_time(until, "--until"),
        "accumulated_cost_gte": min_cost,
        "parent_conversation_id": parent,
        "include_sub_conversations": include_sub or None,
    }
    return {k: v for k, v in values.items() if v is not None}


# -- output ------------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M")


def _status(c: AppConversation) -> str:
    if c.execution_status is not None:
        return str(c.execution_status.value)
    return str(c.sandbox_status.value).lower()


def _repository(c: AppConversation) -> str:
    if not c.selected_repository:
        return ""
    return c.selected_repository + (f"@{c.selected_branch}" if c.selected_branch else "")


def _cost(c: AppConversation) -> float:
    return c.metrics.accumulated_cost if c.metrics else 0.0


def _tokens(c: AppConversation) -> tuple[int, int]:
    usage = c.metrics.accumulated_token_usage if c.metrics else None
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


def _tags(c: AppConversation) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(c.tags.items()))


def conversations_table(items: list[AppConversation]) -> Table:
    table = Table("id", "title", "repository", "status", "cost", "tags", "created", header_style="bold")
    table.columns[0].no_wrap = True
    table.columns[4].justify = "right"
    for c in items:
        table.add_row(
            c.id,
            escape(c.title or ""),
            escape(_repository(c)),
            _status(c),
            f"${_cost(c):.4f}",
            escape(_tags(c)),
            _when(c.created_at),
        )
    return table


def print_conversation(c: AppConversation) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    prompt, completion = _tokens(c)
    rows: list[tuple[str, str]] = [
        ("id", c.id),
        ("title", c.title or ""),
        ("status", f"{c.execution_status.value if c.execution_status else '-'} (sandbox {c.sandbox_status.value})"),
        ("repository", _repository(c) + (f" ({c.git_provider.value})" if c.git_provider else "")),
        ("trigger", c.trigger.value if c.trigger else ""),
        ("model", c.llm_model or ""),
        ("public", "yes" if c.public else "no"),
        ("tags", _tags(c)),
        ("cost", f"${_cost(c):.4f} ({prompt:,} prompt + {completion:,} completion tokens)"),
        ("parent", c.parent_conversation_id or ""),
        ("sub-conversations", " ".join(c.sub_conversation_ids)),
        ("created", _when(c.created_at)),
        ("updated", _when(c.updated_at)),
        ("url", c.conversation_url or ""),
        ("etag", c.etag),
    ]
    for name, value in rows:
        if value:
            table.add_row(name, escape(value))
    out().print(table)


def show(c: AppConversation, as_json: bool, quiet: bool = False) -> None:
    if quiet:
        typer.echo(c.id)
    elif as_json:
        print_json(c.model_dump(mode="json"))
    else:
        print_conversation(c)


# -- commands ----------------------------------------------------------------------------------------


@conversations_app.command("list")
def list_conversations(
    title: TitleFilterOption = None,
    repo: RepoOption = None,
    provider: ProviderOption = None,
    trigger: TriggerOption = None,
    status: StatusOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    tag_key: TagKeyOption = None,
    public: PublicFilterOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    min_cost: Annotated[float | None, typer.Option("--min-cost", help="Cost at least this (USD).", min=0)] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Sub-conversations of this conversation.")] = None,
    include_sub: Annotated[bool, typer.Option("--include-sub", help="Include sub-conversations.")] = False,
    sort: Annotated[SortOrder, typer.Option("--sort", help="Order.")] = SortOrder.CREATED_AT_DESC,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many; 0 for all.", min=0)] = 20,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only, one a line.")] = False,
) -> None:
    """List conversations, newest first (filters combine: all must match)."""
    filters = build_filters(
        title=title,
        repo=repo,
        provider=provider,
        trigger=trigger,
        status=status,
        model=model,
        tags=tag,
        tag_keys=tag_key,
        public=public,
        since=since,
        until=until,
        min_cost=min_cost,
        parent=parent,
        include_sub=include_sub,
    )
    with api_errors(), open_client() as client:
        items = list(client.conversations.search(sort_order=sort, limit=limit or None, **filters))
    if quiet:
        for c in items:
            typer.echo(c.id)
    elif as_json:
        print_json([c.model_dump(mode="json") for c in items])
    elif not items:
        err.print("No conversations.")
    else:
        out().print(conversations_table(items))


@conversations_app.command("get")
def get_conversation(
    conversation_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOption = False,
) -> None:
    """Show one conversation."""
    with api_errors(), open_client() as client:
        show(client.conversations.get(conversation_id), as_json)


@conversations_app.command("start")
def start_conversation(
    message: Annotated[str | None, typer.Argument(help="The first message to the agent ('-': read stdin).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Title (else the agent names it).")] = None,
    repo: RepoOption = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Branch to check out.")] = None,
    provider: ProviderOption = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE; repeatable.")] = None,
    public: Annotated[bool | None, typer.Option("--public/--private", help="Share it read-only.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="LLM model (else your settings).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for READY.", min=1)] = 600,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until it is ready.")] = True,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the conversation id only.")] = False,
) -> None:
    """Start a conversation, following its start task live; then show the conversation."""
    if message == "-":
        message = sys.stdin.read()
    fields: dict[str, Any] = {
        "title": title,
        "selected_repository": repo,
        "selected_branch": branch,
        "git_provider": provider,
        "tags": parse_pairs(tag or [], "--tag") or None,
        "public": public,
        "llm_model": model,
    }
    from threadline.client import StartFailed, StartTimeout

    with api_errors(), open_client() as client:
        if not wait:
            task = client.conversations.start(message, **fields)
            if as_json:
                print_json(task.model_dump(mode="json"))
            else:
                typer.echo(task.id)
            return
        progress = StartProgress()
        try:
            with err.status("Starting…", spinner="dots") as spinner:
                progress.spinner = spinner.update
                conversation = client.conversations.start_and_wait(
                    message, timeout=timeout, poll_interval=0.5, on_status=progress, **fields
                )
        except StartFailed as exc:
            progress(exc.task)
            raise
        except StartTimeout as exc:
            progress(exc.task)
            err.print(f"The start goes on: `threadline conversations list` shows it when ready (task {exc.task.id}).")
            raise
        show(conversation, as_json, quiet)


@dataclass
class StartProgress:
    """Prints each status a start task passed (from its history: none is missed between two polls)."""

    printed: int = 0
    last: str = ""
    started: float = 0.0
    spinner: Callable[[str], None] | None = None

    def __call__(self, task: AppConversationStartTask) -> None:
        if not self.started:
            self.started = time.monotonic()
            err.print(f"Start task {task.id}")
        history = [h.status.value for h in task.history]
        if history:
            new, self.printed = history[self.printed :], max(self.printed, len(history))
        else:  # a server that keeps no history: the statuses seen
            new = [task.status.value] if task.status.value != self.last else []
        for step in new:
            mark = "[red]✗[/red]" if step == "ERROR" else "[green]✓[/green]"
            err.print(f"  {mark} {step}")
            self.last = step
        if self.spinner is not None:
            self.spinner(f"{task.status.value} ({time.monotonic() - self.started:.0f} s)")


@conversations_app.command("update")
def update_conversation(
    conversation_id: Annotated[str, typer.Argument(metavar="ID")],
    title: Annotated[str | None, typer.Option("--title", help="New title.")] = None,
    clear_title: Annotated[bool, typer.Option("--clear-title", help="Back to the automatic title.")] = False,
    public: Annotated[bool | None, typer.Option("--public/--private", help="Share it, or stop sharing.")] = None,
    repo: RepoOption = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Branch.")] = None,
    provider: ProviderOption = None,
    clear_repo: Annotated[
        bool, typer.Option("--clear-repo", help="Remove the repository (and its branch and provider).")
    ] = False,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Set tag KEY=VALUE; repeatable.")] = None,
    untag: Annotated[list[str] | None, typer.Option("--untag", help="Remove tag KEY; repeatable.")] = None,
    if_match: Annotated[
        str | None, typer.Option("--if-match", help="Only if its etag is still this (see `get`).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change a conversation's title, sharing, repository or tags; what you do not mention is kept."""
    changes: dict[str, Any] = {}
    if title is not None and clear_title:
        raise usage_error("--title and --clear-title contradict each other")
    if repo is not None and clear_repo:
        raise usage_error("--repo and --clear-repo contradict each other")
    if title is not None or clear_title:
        changes["title"] = title
    if public is not None:
        changes["public"] = public
    if repo is not None or clear_repo:
        changes["selected_repository"] = repo
    if branch is not None:
        changes["selected_branch"] = branch
    if provider is not None:
        changes["git_provider"] = provider
    tags: dict[str, str | None] = dict(parse_pairs(tag or [], "--tag"))
    for key in untag or []:
        if key in tags:
            raise usage_error(f"tag {key!r} is both set and removed")
        tags[key] = None
    if tags:
        changes["tags"] = tags
    if not changes:
        raise usage_error("nothing to change: give --title, --public/--private, --repo, --tag ... (see --help)")
    with api_errors(), open_client() as client:
        show(client.conversations.update(conversation_id, if_match=if_match, **changes), as_json)


@conversations_app.command("delete")
def delete_conversations(
    conversation_ids: Annotated[list[str], typer.Argument(metavar="ID", help="Conversations to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete conversations (asks first unless --yes). Their sub-conversations are kept."""
    with api_errors(), open_client() as client:
        if not yes:
            found = client.conversations.get_many(conversation_ids)
            for cid, c in zip(conversation_ids, found, strict=True):
                label = f"{cid} ({c.title})" if c is not None and c.title else cid
                err.print(f"  {escape(label)}")
            noun = "conversation" if len(conversation_ids) == 1 else f"{len(conversation_ids)} conversations"
            if not typer.confirm(f"Delete {noun}?", default=False, err=True):
                err.print("Nothing deleted.")
                raise typer.Exit(1)
        for cid in conversation_ids:
            client.conversations.delete(cid)
            err.print(f"Deleted {escape(cid)}.")


@conversations_app.command("send")
def send_message(
    conversation_id: Annotated[str, typer.Argument(metavar="ID")],
    message: Annotated[str, typer.Argument(help="The message ('-': read stdin).")],
    run: Annotated[bool, typer.Option("--run/--no-run", help="Let the agent act on it.")] = True,
) -> None:
    """Send a message to the conversation's agent."""
    if message == "-":
        message = sys.stdin.read()
    if not message.strip():
        raise usage_error("the message is empty")
    with api_errors(), open_client() as client:
        answer = client.conversations.send_message(conversation_id, message, run=run)
    err.print(f"Sent (sandbox {answer.sandbox_status.value}).")


def event_summary(event: dict[str, Any]) -> str:
    """One line about an event, whatever its kind."""
    kind = event.get("kind", "")
    message = event.get("llm_message")
    if isinstance(message, dict):
        texts = [p.get("text", "") for p in message.get("content") or [] if isinstance(p, dict)]
        return f"{message.get('role', '')}: {' '.join(t for t in texts if t)}"
    if isinstance(event.get("summary"), str) and event["summary"]:
        return str(event["summary"])
    action = event.get("action")
    if isinstance(action, dict):
        return str(action.get("kind", "action")) + (f": {action['message']}" if action.get("message") else "")
    observation = event.get("observation")
    if isinstance(observation, dict):
        texts = [p.get("text", "") for p in observation.get("content") or [] if isinstance(p, dict)]
        return f"{observation.get('kind', 'observation')}: {' '.join(t for t in texts if t)}"
    if kind == "ConversationStateUpdateEvent":
        value = event.get("value")
        shown = value if isinstance(value, str | int | float | bool) or value is None else "…"
        return f"{event.get('key')} = {shown}"
    if isinstance(event.get("error"), str):
        return f"error: {event['error']}"
    return ""


def print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(event, ensure_ascii=False))
        return
    stamp = str(event.get("timestamp", ""))[:19].replace("T", " ")
    summary = " ".join(event_summary(event).split())
    if len(summary) > 200:
        summary = summary[:199] + "…"
    out().print(
        f"[dim]{escape(stamp)}[/dim]  {escape(str(event.get('kind', ''))):<28}"
        f" {escape(str(event.get('source', ''))):<11} {escape(summary)}",
        soft_wrap=True,
    )


@conversations_app.command("events")
def list_events(
    conversation_id: Annotated[str, typer.Argument(metavar="ID")],
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind, e.g. MessageEvent.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many; 0 for all.", min=0)] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they are stored (streamed).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Unused: --follow streams events as they come.", min=0.1, hidden=True)
    ] = 2.0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --follow: stop after this many seconds.", min=0)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show a conversation's events, oldest first; --follow keeps printing new ones (Ctrl-C stops)."""
    seen: set[str] = set()
    last_id: str | None = None
    with api_errors(), open_client() as client:
        for event in client.conversations.events(conversation_id, kind=kind, limit=limit or None):
            print_event(event, as_json)
            last_id = str(event.get("id"))
            seen.add(last_id)
        if not follow:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for event in _streamed(client, conversation_id, last_id, deadline):
                event_id = str(event.get("id"))
                if event_id in seen or (kind is not None and event.get("kind") != kind):
                    continue
                seen.add(event_id)
                print_event(event, as_json)
        except KeyboardInterrupt:
            return


def _streamed(
    client: Threadline, conversation_id: str, after: str | None, deadline: float | None
) -> Iterator[dict[str, Any]]:
    """The conversation's event stream after `after` (the SDK's, which reconnects by itself), until the
    deadline. Read by a thread of its own so the deadline holds however long the stream stays quiet."""
    arrived: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()

    def pump() -> None:
        try:
            for event in client.conversations.stream_events(conversation_id, last_event_id=after):
                arrived.put(event)
        except BaseException as exc:
            arrived.put(exc)

    threading.Thread(target=pump, name="threadline-follow", daemon=True).start()
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        try:
            item = arrived.get(timeout=remaining)
        except queue.Empty:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


@dataclass
class CostGroup:
    key: str
    conversations: int = 0
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, c: AppConversation) -> None:
        prompt, completion = _tokens(c)
        self.conversations += 1
        self.cost += _cost(c)
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "conversations": self.conversations,
            "cost": round(self.cost, 10),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def group_key(by: str) -> Callable[[AppConversation], str]:
    if by == "repository":
        return lambda c: c.selected_repository or NONE
    if by == "trigger":
        return lambda c: c.trigger.value if c.trigger else NONE
    if by.startswith("tag:") and len(by) > 4:
        key = by[4:]
        return lambda c: c.tags.get(key, NONE)
    raise usage_error(f"--by {by!r}: expected repository, trigger or tag:KEY")


@conversations_app.command("costs")
def costs(
    by: Annotated[str, typer.Option("--by", help="Group by repository, trigger or tag:KEY.")] = "repository",
    title: TitleFilterOption = None,
    repo: RepoOption = None,
    trigger: TriggerOption = None,
    model: ModelOption = None,
    tag: TagOption = None,
    tag_key: TagKeyOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    top_level: Annotated[
        bool, typer.Option("--top-level", help="Leave sub-conversations out (they count by default).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Total cost and tokens of your conversations, grouped (computed here from the search results)."""
    key_of = group_key(by)
    filters = build_filters(
        title=title,
        repo=repo,
        trigger=trigger,
        model=model,
        tags=tag,
        tag_keys=tag_key,
        since=since,
        until=until,
        include_sub=not top_level,
    )
    groups: dict[str, CostGroup] = {}
    total = CostGroup("total")
    with api_errors(), open_client() as client:
        for c in client.conversations.search(**filters):
            groups.setdefault(key_of(c), CostGroup(key_of(c))).add(c)
            total.add(c)
    ordered = sorted(groups.values(), key=lambda g: (-g.cost, g.key))
    if as_json:
        print_json({"by": by, "groups": [g.as_dict() for g in ordered], "total": total.as_dict()})
        return
    table = Table(by, "conversations", "cost", "prompt tokens", "completion tokens", header_style="bold")
    for column in table.columns[1:]:
        column.justify = "right"
    for g in [*ordered, total]:
        style = "bold" if g is total else None
        table.add_row(
            escape(g.key),
            str(g.conversations),
            f"${g.cost:.4f}",
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            style=style,
            end_section=g is ordered[-1] if ordered else False,
        )
    out().print(table)
