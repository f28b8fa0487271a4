"""System prompt and `messages` building for the llm agent."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agents.base import ChatMessage, ToolCall
from gateway.agents.prompt import build_messages, build_system_prompt, render_template
from tests.fakes import make_turn

AGENT = {"answer": "llm", "llm": {"model": "m"}, "prompt": "You are {{name}}."}
NOW = datetime(2025, 3, 4, 5, 6, tzinfo=UTC)


def test_template_variables_builtins_and_unknowns() -> None:
    text = render_template(
        "Hi {{ name }}, tier {{tier}}, {{flags}} on {{date}} {{time}}; {{missing}} {x}",
        {"name": "Ada", "tier": 2, "flags": {"vip": True}},
        now=NOW,
    )
    assert text == 'Hi Ada, tier 2, {"vip": true} on 2025-03-04 05:06; {{missing}} {x}'
    assert render_template("{{date}}", {"date": "today"}) == "today"


def test_session_prompt_wins_then_notes_then_ui_context() -> None:
    turn = make_turn(
        AGENT,
        prompt="Session prompt for {{name}}.",
        prompt_vars={"name": "Nova"},
        context={"cart": {"items": ["a"], "total": 8.5}, "page": "checkout", "_notes": ["Order #1 shipped"]},
    )
    assert build_system_prompt(turn) == (
        "Session prompt for Nova.\n\nOrder #1 shipped\n\n"
        '## UI Context\n- cart: {"items": ["a"], "total": 8.5}\n- page: checkout'
    )


def test_agent_prompt_is_the_fallback_and_empty_means_no_system_message() -> None:
    assert build_system_prompt(make_turn(AGENT, prompt_vars={"name": "Ada"})) == "You are Ada."
    turn = make_turn({"answer": "llm", "llm": {"model": "m"}}, context={"_private": 1})
    assert build_messages(turn, 1000) == [{"role": "user", "content": "hi"}]


def _history() -> tuple[ChatMessage, ...]:
    call = ToolCall(id="c1", name="lookup", arguments='{"id": 1}')
    return (
        ChatMessage(role="user", content="u" * 10),
        ChatMessage(role="assistant", content="a" * 10),
        ChatMessage(role="user", content="where is my order?"),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content='{"status": "shipped"}', tool_call_id="c1", name="lookup"),
        ChatMessage(role="assistant", content="It shipped.", source="human"),
    )


def test_messages_in_openai_shape() -> None:
    turn = make_turn(AGENT, text="thanks", history=_history(), prompt_vars={"name": "Ada"})
    messages = build_messages(turn, 10_000)
    assert messages[0] == {"role": "system", "content": "You are Ada."}
    assert messages[4] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": 1}'}}
        ],
    }
    assert messages[5] == {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}
    assert messages[6] == {"role": "assistant", "content": "It shipped."}
    assert messages[-1] == {"role": "user", "content": "thanks"}


def test_trimming_keeps_tool_pairs_together() -> None:
    turn = make_turn(AGENT, text="thanks", history=_history())
    # The tool result + "It shipped." fit (21 + 11), the tool call (6 + 9) does not: both go.
    roles = [m["role"] for m in build_messages(turn, 40)]
    assert roles == ["system", "assistant", "user"]
    roles = [m["role"] for m in build_messages(turn, 47)]
    assert roles == ["system", "assistant", "tool", "assistant", "user"]
    assert [m["role"] for m in build_messages(turn, 1)] == ["system", "user"]


def test_orphans_and_unanswered_calls_are_repaired() -> None:
    history = (
        ChatMessage(role="tool", content="orphan", tool_call_id="gone"),
        ChatMessage(
            role="assistant",
            content="checking",
            tool_calls=(
                ToolCall(id="a", name="x", arguments="{}"),
                ToolCall(id="b", name="y", arguments="{}"),
            ),
        ),
        ChatMessage(role="tool", content="ra", tool_call_id="a"),
        ChatMessage(role="assistant", content="", tool_calls=(ToolCall(id="z", name="x", arguments="{}"),)),
    )
    messages = build_messages(make_turn({"answer": "llm", "llm": {"model": "m"}}, history=history), 1000)
    assert [m["role"] for m in messages] == ["assistant", "tool", "user"]
    assert [c["id"] for c in messages[0]["tool_calls"]] == ["a"]


_message = st.one_of(
    st.builds(lambda t: ChatMessage(role="user", content=t), st.text(max_size=30)),
    st.builds(lambda t: ChatMessage(role="assistant", content=t), st.text(max_size=30)),
    st.builds(
        lambda i, a: ChatMessage(role="assistant", tool_calls=(ToolCall(id=i, name="t", arguments=a),)),
        st.sampled_from("abc"),
        st.text(max_size=20),
    ),
    st.builds(
        lambda i, t: ChatMessage(role="tool", tool_call_id=i, content=t), st.sampled_from("abc"), st.text()
    ),
)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(_message, max_size=15), budget=st.integers(1, 200))
def test_every_tool_message_follows_its_call(history: list[ChatMessage], budget: int) -> None:
    messages = build_messages(
        make_turn({"answer": "llm", "llm": {"model": "m"}}, history=tuple(history)), budget
    )
    pending: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            assert m["tool_call_id"] in pending
            pending.discard(m["tool_call_id"])
        else:
            assert not pending, "an assistant tool call lacks its result"
            pending = {c["id"] for c in m.get("tool_calls", ())}
    assert not pending
    earlier = messages[:-1]
    size = sum(len(m.get("content") or "") for m in earlier)
    size += sum(
        len(c["function"]["name"]) + len(c["function"]["arguments"])
        for m in earlier
        for c in m.get("tool_calls", ())
    )
    assert size <= budget
