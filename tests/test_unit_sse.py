"""The SSE wire format: what the server writes (`streams.sse`) and what the SDK reads (`SseParser`)."""

from __future__ import annotations

import json

from threadline.client._base import SseMessage, SseParser
from threadline.streams import sse


def _feed_bytewise(parser: SseParser, data: bytes) -> list[SseMessage]:
    messages: list[SseMessage] = []
    for i in range(len(data)):
        messages += parser.feed(data[i : i + 1])
    return messages


def test_frames_round_trip_through_the_parser_in_any_chunking() -> None:
    payload = json.dumps({"id": "e1", "text": "two\nlines", "ü": "é"}, ensure_ascii=False)
    stream = (
        sse.retry(2500)
        + sse.frame(payload, event_id="e1")
        + sse.comment("keep-alive")
        + sse.frame("first\nsecond", event="updated")
        + sse.frame("{}", event_id="e3")
    )
    for messages in (SseParser().feed(stream), _feed_bytewise(SseParser(), stream)):
        assert messages == [
            SseMessage("message", payload, "e1"),
            # No id of its own: the last id set goes on (as an EventSource keeps it).
            SseMessage("updated", "first\nsecond", "e1"),
            SseMessage("message", "{}", "e3"),
        ]
    parser = SseParser()
    parser.feed(stream)
    assert parser.retry_ms == 2500 and parser.last_id == "e3"


def test_the_parser_takes_every_line_ending_and_ignores_what_it_does_not_know() -> None:
    parser = SseParser()
    text = b"id: a\r\ndata: x\r\n\r\n:comment\rdata:y\r\rfield: ignored\ndata\n\n"
    expected = [SseMessage("message", "x", "a"), SseMessage("message", "y", "a"), SseMessage("message", "", "a")]
    assert parser.feed(text) == expected
    # A CR at a chunk's end waits for a possible LF: no empty line is made of a split CRLF.
    parser = SseParser()
    assert parser.feed(b"data: z\r") == []
    assert parser.feed(b"\n\r\n") == [SseMessage("message", "z", None)]


def test_an_id_that_cannot_be_a_field_is_left_out() -> None:
    assert sse.frame("{}", event_id="bad\nid") == b"data: {}\n\n"
    assert sse.frame("", event_id="ok") == b"id: ok\ndata: \n\n"
