"""The incremental SSE / chat-chunk parser and the tool-call assembler."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.base import ToolCall
from gateway.agents.openai_stream import (
    ChatStreamParser,
    SseDecoder,
    SseEvent,
    StreamFormatError,
    ToolCallAssembler,
)
from gateway.errors import AgentError
from gateway.sanitizer import clean_json
from tests.fakes.openai_server import awkward, chunk, sse, tool_reply


def parse(pieces: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    parser = ChatStreamParser()
    out: list[dict[str, Any]] = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.close()
    return out, parser.done


def decode(pieces: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    out: list[SseEvent] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


def test_chunks_and_done() -> None:
    body = sse([chunk({"content": "héllo"}), chunk({"content": " 🌍"})])
    chunks, done = parse([body])
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["héllo", " 🌍"]
    assert done


def test_byte_by_byte_including_inside_utf8() -> None:
    body = sse([chunk({"content": "é🌍ñ"})])
    chunks, done = parse([body[i : i + 1] for i in range(len(body))])
    assert chunks[0]["choices"][0]["delta"]["content"] == "é🌍ñ"
    assert done


def test_comments_blank_lines_crlf_and_cr() -> None:
    body = b': keep-alive\r\n\r\n\r\ndata: {"a": 1}\r\n\r\n:ping\rdata: {"b": 2}\r\rdata:[DONE]\n\n'
    assert parse([body]) == ([{"a": 1}, {"b": 2}], True)
    assert parse(awkward(body)) == ([{"a": 1}, {"b": 2}], True)


def test_cr_then_lf_in_the_next_piece_is_one_line_end() -> None:
    assert decode([b'data: {"a": 1}\r', b"\n", b"\r", b"\n"]) == [SseEvent("message", '{"a": 1}')]


def test_multiline_data_event_and_event_name() -> None:
    events = decode([b'event: delta\ndata: {"a":\ndata: 1}\nid: 7\nretry: 10\n\n'])
    assert events == [SseEvent("delta", '{"a":\n1}')]


def test_bom_is_ignored_and_no_space_after_colon() -> None:
    assert parse([b'\xef\xbb\xbfdata:{"a":1}\n\n']) == ([{"a": 1}], False)


def test_after_done_everything_is_ignored() -> None:
    assert parse([b"data: [DONE]\n\ndata: not json\n\n"]) == ([], True)


def test_last_event_without_blank_line_is_delivered_on_close() -> None:
    assert parse([b'data: {"a": 1}']) == ([{"a": 1}], False)


def test_empty_data_is_skipped() -> None:
    assert parse([b"data:\n\ndata: \n\n"]) == ([], False)


@pytest.mark.parametrize(
    "body",
    [b"data: {not json\n\n", b"data: [1, 2]\n\n", b'data: "text"\n\n', b"data: " + b"[" * 5000 + b"\n\n"],
)
def test_malformed_chunks_raise_a_typed_agent_error(body: bytes) -> None:
    with pytest.raises(StreamFormatError) as caught:
        parse([body])
    assert isinstance(caught.value, AgentError)
    assert "malformed stream chunk" in caught.value.message


def _assemble(body: bytes) -> tuple[ToolCall, ...]:
    assembler = ToolCallAssembler()
    for c in parse(awkward(body))[0]:
        calls = c["choices"][0]["delta"].get("tool_calls")
        if calls:
            assembler.add(calls)
    return assembler.calls()


def test_assembles_interleaved_calls_by_index() -> None:
    calls = [("call_a", "lookup", '{"city": "Zürich 🌍"}'), ("call_b", "book", '{"n": 2}')]
    reply = tool_reply(calls, fragment=3)
    body = b"".join(reply.pieces)
    assert _assemble(body) == tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in calls)


def test_assembler_without_index_or_id_and_with_object_arguments() -> None:
    assembler = ToolCallAssembler()
    assert not assembler
    assembler.add([{"function": {"name": "a", "arguments": {"x": 1}}}])
    assembler.add([{"id": "c2", "function": {"name": "b", "arguments": "{}"}}])
    assembler.add([{"index": 1, "function": {"name": "b", "arguments": ""}}, "junk"])
    assert assembler
    assert assembler.calls() == (
        ToolCall(id="call_0", name="a", arguments='{"x": 1}'),
        ToolCall(id="c2", name="b", arguments="{}"),
    )


def test_assembler_rejects_a_non_list() -> None:
    with pytest.raises(StreamFormatError):
        ToolCallAssembler().add({"index": 0})


# --- properties -------------------------------------------------------------------------------

_texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
_objects = st.lists(
    st.one_of(
        _texts.map(lambda t: chunk({"content": t})),
        st.dictionaries(_texts, st.one_of(st.integers(), _texts, st.none()), max_size=3),
    ),
    max_size=6,
)


def _stream(objects: list[dict[str, Any]], crlf: bool, done: bool) -> bytes:
    body = b": hello\n\n" + sse(objects, done=done)
    return body.replace(b"\n", b"\r\n") if crlf else body


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    return [*pieces, data[start:]]


@settings(max_examples=300, deadline=None)
@given(objects=_objects, crlf=st.booleans(), done=st.booleans(), cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_gives_the_same_result(
    objects: list[dict[str, Any]], crlf: bool, done: bool, cuts: list[int]
) -> None:
    body = _stream(objects, crlf, done)
    whole = parse([body])
    # What the LLM said, made safe (a NUL dropped, a lone surrogate U+FFFD: gateway/sanitizer.py).
    assert whole == (clean_json(json.loads(json.dumps(objects))), done)
    assert parse(_split(body, cuts)) == whole


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200), cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_garbage_never_raises_anything_but_agent_error(garbage: bytes, cuts: list[int]) -> None:
    for body in (garbage, b"data: " + garbage + b"\n\n"):
        try:
            parse(_split(body, cuts))
        except AgentError:
            pass


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.sampled_from([b"data: {}", b"data: ", b":c", b"", b"event: x", b"data: [DONE]"])))
def test_sse_decoder_split_invariance(lines: list[bytes]) -> None:
    body = b"\n".join(lines)
    assert decode([body[i : i + 1] for i in range(len(body))]) == decode([body])
