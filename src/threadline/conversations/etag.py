"""Entity tags of conversations and the conditional-request rules of RFC 9110 (If-Match, If-None-Match).

A conversation's ETag is strong and names one stored version of the record: `"<version>-<hash of id>"`.
`conversations.version` moves on every stored change (PATCH, agent callbacks, a sub-conversation added
or removed), so equal tags mean the same stored record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from threadline.core.errors import Problem

# One list member: `*`, `W/"..."`, `"..."`, or (leniently) a bare token that lost its quotes.
_MEMBER = re.compile(r'\s*(?:(\*)|(W/)?"([^"]*)"|([^\s,"]+))\s*(?:,|$)')


def etag_for(conversation_id: str, version: int) -> str:
    """The strong entity tag, quotes included, exactly as it goes into the `ETag` header."""
    return f'"{version}-{_id_digest(conversation_id)}"'


@lru_cache(maxsize=16_384)
def _id_digest(conversation_id: str) -> str:
    # An id's digest never changes; a page shows a hundred of them, mostly the same ones again (about 2 MB).
    return hashlib.sha256(conversation_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EntityTag:
    opaque: str  # with its quotes
    weak: bool = False


@dataclass(frozen=True)
class TagList:
    """A parsed If-Match / If-None-Match value: `*` or a list of entity tags."""

    any: bool
    tags: tuple[EntityTag, ...]


def parse_tag_list(value: str) -> TagList:
    """Parse a field value; members that are not entity tags are ignored (they match nothing)."""
    tags: list[EntityTag] = []
    star = False
    pos = 0
    text = value.strip()
    while pos < len(text):
        match = _MEMBER.match(text, pos)
        if match is None:
            # Skip to the next comma: one garbled member does not void the others.
            comma = text.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        pos = match.end()
        if match.group(1):
            star = True
        elif match.group(3) is not None:
            tags.append(EntityTag(f'"{match.group(3)}"', weak=bool(match.group(2))))
        elif match.group(4):
            tags.append(EntityTag(f'"{match.group(4)}"'))
    return TagList(star, tuple(tags))


def if_match_passes(header: str, current: str) -> bool:
    """If-Match uses the strong comparison: a weak tag never matches."""
    parsed = parse_tag_list(header)
    return parsed.any or any(not t.weak and t.opaque == current for t in parsed.tags)


def if_none_match_matches(header: str, current: str) -> bool:
    """If-None-Match uses the weak comparison: `W/"x"` and `"x"` both match `"x"`."""
    parsed = parse_tag_list(header)
    return parsed.any or any(t.opaque == current for t in parsed.tags)


class PreconditionFailed(Problem):
    """412 naming the current entity tag, in the `ETag` header and the body's `etag`."""

    status = 412
    type_slug = "precondition-failed"

    def __init__(self, conversation_id: str, current: str) -> None:
        super().__init__(
            f"conversation {conversation_id} has changed: If-Match does not match its current ETag {current}; "
            "read it again and retry with the new ETag",
            headers={"ETag": current},
            etag=current,
        )


def check_if_match(expected: str | None, conversation_id: str, current: str) -> None:
    """Raise PreconditionFailed unless there is no If-Match or it matches `current`."""
    if expected is not None and not if_match_passes(expected, current):
        raise PreconditionFailed(conversation_id, current)
