from gateway.backends.vendors.sse import parse_sse

OPENAI_STREAM = (
    b'data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"chatcmpl-1","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
OPENAI_EVENTS = [
    (None, b'{"id":"chatcmpl-1","choices":[{"delta":{"content":"Hi"}}]}'),
    (None, b'{"id":"chatcmpl-1","choices":[{"delta":{},"finish_reason":"stop"}]}'),
    (None, b"[DONE]"),
]


def parse_in_pieces(stream: bytes, size: int) -> tuple[list[tuple[str | None, bytes]], bytes]:
    events: list[tuple[str | None, bytes]] = []
    buffer = b""
    for start in range(0, len(stream), size):
        found, buffer = parse_sse(buffer + stream[start : start + size])
        events.extend(found)
    return events, buffer


def test_complete_events_are_returned_and_the_partial_tail_is_kept_verbatim() -> None:
    events, rest = parse_sse(b'event: ping\ndata: {}\n\nevent: message_stop\ndata: {"ty')
    assert events == [("ping", b"{}")]
    assert rest == b'event: message_stop\ndata: {"ty'


def test_openai_stream_with_comments_parses_the_same_whole_or_byte_by_byte() -> None:
    assert parse_sse(OPENAI_STREAM) == (OPENAI_EVENTS, b"")
    assert parse_in_pieces(OPENAI_STREAM, 1) == (OPENAI_EVENTS, b"")
    assert parse_in_pieces(OPENAI_STREAM, 7) == (OPENAI_EVENTS, b"")


def test_crlf_separators_parse_like_lf_at_every_split_point() -> None:
    stream = b"event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n"
    expected = [("a", b"1"), ("b", b"2")]
    assert parse_sse(stream) == (expected, b"")
    for cut in range(len(stream) + 1):
        first, rest = parse_sse(stream[:cut])
        second, rest = parse_sse(rest + stream[cut:])
        assert (first + second, rest) == (expected, b""), cut


def test_lone_cr_line_endings_are_accepted() -> None:
    assert parse_sse(b"data: x\r\rdata: y\r\r") == ([(None, b"x"), (None, b"y")], b"")


def test_multiple_data_lines_are_joined_with_newlines() -> None:
    events, _ = parse_sse(b"event: note\ndata: first\ndata:second\ndata\n\n")
    assert events == [("note", b"first\nsecond\n")]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    assert parse_sse(b"data:  two spaces\n\n")[0] == [(None, b" two spaces")]


def test_blocks_without_data_dispatch_nothing_and_unknown_fields_are_ignored() -> None:
    events, rest = parse_sse(
        b"event: lonely\n\n: comment only\n\nid: 7\nretry: 10\nfoo: bar\ndata: z\n\n"
    )
    assert events == [(None, b"z")]
    assert rest == b""


def test_a_trailing_line_without_its_blank_line_is_not_an_event_yet() -> None:
    assert parse_sse(b"data: incomplete\n") == ([], b"data: incomplete\n")
    assert parse_sse(b"") == ([], b"")
