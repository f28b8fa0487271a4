"""Tool JSON Schemas derived from type hints and docstrings (no network)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest

from gateway.client import Gateway, SchemaError, Session, function_parameters, tool, type_schema
from gateway.client.agent import make_tool
from gateway.client.schema import describe, param_docs


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Address:
    street: str
    city: str = "Madrid"
    tags: list[str] = field(default_factory=list)


class Filters(TypedDict, total=False):
    status: str
    limit: int


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Any, {}),
        (None, {"type": "null"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list, {"type": "array"}),
        (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
        (set[str], {"type": "array", "items": {"type": "string"}}),
        (dict, {"type": "object"}),
        (dict[str, Any], {"type": "object"}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Optional[int], {"type": "integer"}),  # noqa: UP045 (the old spelling must work too)
        (int | None, {"type": "integer"}),
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
        (Literal[1, "x"], {"enum": [1, "x"]}),
        (Color, {"enum": ["red", "blue"], "type": "string"}),
        (Annotated[str, "The id"], {"type": "string", "description": "The id"}),
        (list[Literal["x"]], {"type": "array", "items": {"enum": ["x"], "type": "string"}}),
        (
            tuple[int, str],
            {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "minItems": 2,
                "maxItems": 2,
            },
        ),
    ],
)
def test_type_schema(hint: Any, schema: dict[str, Any]) -> None:
    assert type_schema(hint) == schema


def test_nested_dataclass_and_typeddict() -> None:
    assert type_schema(Address) == {
        "type": "object",
        "properties": {
            "street": {"type": "string"},
            "city": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["street"],
    }
    assert type_schema(Filters) == {
        "type": "object",
        "properties": {"status": {"type": "string"}, "limit": {"type": "integer"}},
    }


class Opaque:
    pass


def test_unsupported_or_unresolvable_annotations_are_clear_errors() -> None:
    def f(x: Opaque) -> None: ...

    with pytest.raises(SchemaError, match=r"parameter 'x'.*parameters="):
        function_parameters(f)

    def g(x: NotDefinedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(SchemaError, match="cannot resolve the type hints"):
        function_parameters(g)


async def lookup_order(
    order_id: str,
    session: Session,
    include_items: bool = False,
    status: Literal["open", "shipped"] | None = None,
    limit: int = 10,
    note: Optional[str] = None,  # noqa: UP045
) -> dict[str, Any]:
    """Look up an order
    by its id.

    Longer explanation that is not part of the description.

    Args:
        order_id: The order id,
            like ORD-12345.
        include_items (bool): Whether to list the items.

    Returns:
        The order.
    """
    return {}


def test_function_schema_required_defaults_docs_and_session() -> None:
    schema = function_parameters(lookup_order)
    assert schema == {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "description": "The order id, like ORD-12345."},
            "include_items": {
                "type": "boolean",
                "default": False,
                "description": "Whether to list the items.",
            },
            "status": {"enum": ["open", "shipped"], "type": "string"},
            "limit": {"type": "integer", "default": 10},
            "note": {"type": "string"},
        },
        "required": ["order_id"],
    }
    assert describe(lookup_order) == "Look up an order by its id."


def test_sphinx_param_docs_and_no_docstring() -> None:
    def f(a: int, b: str = "x") -> None:
        """Do it.

        :param a: the first
            number
        :param str b: the second
        :returns: nothing
        """

    assert param_docs(f) == {"a": "the first number", "b": "the second"}

    def g(a, b=3):  # type: ignore[no-untyped-def]
        return a

    assert describe(g) == ""
    assert function_parameters(g) == {
        "type": "object",
        "properties": {"a": {}, "b": {"default": 3}},
        "required": ["a"],
    }


def test_no_parameters_and_kwargs_are_skipped() -> None:
    def now(*args: Any, **kwargs: Any) -> str:
        """The time."""
        return ""

    assert function_parameters(now) == {"type": "object", "properties": {}}


def test_session_param_by_annotation_under_another_name() -> None:
    def t(x: int, ctx: Session) -> int:
        return x

    made = make_tool(t)
    assert made.session_param == "ctx"
    assert made.parameters == {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def test_tool_declarations() -> None:
    gw = Gateway("http://127.0.0.1:9", api_key="k")

    @tool(ephemeral=True, timeout_seconds=5)
    def get_time(timezone: str = "UTC") -> str:
        """The current time."""
        return "12:00"

    agent = gw.agent(
        "shop",
        prompt="Hi",
        llm={"model": "m"},
        tools=[get_time, {"name": "remote", "url": "http://127.0.0.1:1/x"}],
    )

    @agent.tool
    async def lookup(order_id: str) -> dict[str, Any]:
        """Look up."""
        return {}

    @agent.tool(name="custom-name", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    def search(**kwargs: Any) -> list[str]:
        return []

    assert lookup.__name__ == "lookup"  # the decorator returns the function itself
    assert get_time() == "12:00"  # a standalone Tool stays callable
    config = agent.registration()
    assert config["prompt"] == "Hi" and config["llm"] == {"model": "m"}
    assert [t["name"] for t in config["tools"]] == ["remote", "get_time", "lookup", "custom-name"]
    assert config["tools"][1] == {
        "name": "get_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "default": "UTC"}}},
        "ephemeral": True,
        "timeout_seconds": 5,
    }
    assert config["tools"][3]["parameters"]["properties"] == {"q": {"type": "string"}}
    with pytest.raises(ValueError, match="already declared"):
        agent.tool(lookup)
    with pytest.raises(ValueError, match="tool names"):
        agent.tool(name="bad name")(lambda: None)
    with pytest.raises(ValueError, match="already declared"):
        gw.agent("shop")
    with pytest.raises(ValueError, match="agent ids"):
        gw.agent("bad id")


def test_gateway_urls() -> None:
    from gateway.client import websocket_url

    assert websocket_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/v1/agents/ws"
    assert websocket_url("https://gw.example.com/") == "wss://gw.example.com/v1/agents/ws"
    assert websocket_url("ws://h:1/prefix") == "ws://h:1/prefix/v1/agents/ws"
    assert websocket_url("wss://h/v1/agents/ws") == "wss://h/v1/agents/ws"
    with pytest.raises(ValueError):
        websocket_url("ftp://h")
    with pytest.raises(ValueError):
        Gateway("http://h", api_key="")
