"""Agents declared by this process: their config, tools, event handlers and turn handler."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from gateway.client.schema import (
    JsonSchema,
    describe,
    function_parameters,
    is_session_param,
    valid_tool_name,
)
from gateway.client.session import Session

if TYPE_CHECKING:
    from gateway.client.connection import Gateway

log = logging.getLogger("gateway.client")

F = TypeVar("F", bound=Callable[..., Any])
G = TypeVar("G", bound=Callable[..., Any])


class Decorator(Protocol):
    """A decorator that registers a function and returns it unchanged."""

    def __call__(self, fn: F, /) -> F: ...


ANY_EVENT = "*"
_RECENT_SEQS = 4096


@dataclass(slots=True)
class Tool:
    """A function the model may call, run in this process (declared without `url`)."""

    fn: Callable[..., Any]
    name: str
    description: str = ""
    parameters: JsonSchema = field(default_factory=lambda: {"type": "object", "properties": {}})
    ephemeral: bool = False
    timeout_seconds: float | None = None
    session_param: str | None = None  # the parameter that receives the `Session`, if any

    def declaration(self) -> dict[str, Any]:
        """The tool's entry in the agent's `tools` config (no `url`: it runs here)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "ephemeral": self.ephemeral,
        }
        if self.timeout_seconds is not None:
            out["timeout_seconds"] = self.timeout_seconds
        return out

    async def invoke(self, arguments: Mapping[str, Any], session: Session) -> Any:
        """Call the function with the model's arguments (sync functions run in a thread)."""
        kwargs = dict(arguments)
        if self.session_param is not None:
            kwargs[self.session_param] = session
        if is_async_callable(self.fn):
            return await self.fn(**kwargs)
        result = await asyncio.to_thread(self.fn, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: JsonSchema | None = None,
    ephemeral: bool = False,
    timeout_seconds: float | None = None,
) -> Tool:
    """A `Tool` from a function: name, description and JSON Schema derived unless given."""
    if isinstance(fn, Tool):
        return fn
    tool_name = str(name or getattr(fn, "__name__", ""))
    if not valid_tool_name(tool_name):
        raise ValueError(f"tool names are 1-64 letters, digits, '_' or '-' (got {tool_name!r})")
    session_param = None
    for param in inspect.signature(fn).parameters.values():
        try:
            hint = inspect.get_annotations(fn, eval_str=True).get(param.name, inspect.Parameter.empty)
        except Exception:  # unresolvable annotations: function_parameters reports them
            hint = inspect.Parameter.empty
        if is_session_param(param, hint):
            session_param = param.name
            break
    schema = parameters if parameters is not None else function_parameters(fn)
    if schema.get("type") != "object":
        raise ValueError(f"tool {tool_name}: parameters must be a JSON Schema of type 'object'")
    return Tool(
        fn=fn,
        name=tool_name,
        description=description if description is not None else describe(fn),
        parameters=schema,
        ephemeral=ephemeral,
        timeout_seconds=timeout_seconds,
        session_param=session_param,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: JsonSchema | None = None,
    ephemeral: bool = False,
    timeout_seconds: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: JsonSchema | None = None,
    ephemeral: bool = False,
    timeout_seconds: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a standalone `Tool`, to pass in `gw.agent(..., tools=[...])`.

    @tool(ephemeral=True)
    async def verify_identity(customer_id: str) -> dict: ...
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return make_tool(
            f,
            name=name,
            description=description,
            parameters=parameters,
            ephemeral=ephemeral,
            timeout_seconds=timeout_seconds,
        )

    return wrap(fn) if fn is not None else wrap


class Agent:
    """One agent this process declares: `gw.agent(agent_id, **config)`.

    `config` takes the keys of `[agents.<id>]` in gateway.toml (`prompt`, `greeting`,
    `llm`, `tools`, `limits`, `allowed_origins`, …). Without `llm` the agent's turns
    come to this process (`answer = "process"`): answer them with `@agent.on_turn`.
    """

    def __init__(
        self,
        gateway: Gateway,
        agent_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        tools: Iterable[Tool | Callable[..., Any] | Mapping[str, Any]] = (),
        last_seq: int | None = None,
    ) -> None:
        self.gateway = gateway
        self.id = agent_id
        self.config: dict[str, Any] = dict(config or {})
        self._declared_tools: list[dict[str, Any]] = []  # plain config entries, e.g. with `url`
        self.tools: dict[str, Tool] = {}
        self._handlers: dict[str, list[Callable[..., Any]]] = collections.defaultdict(list)
        self._turn_handler: Callable[..., Any] | None = None
        self.last_seq = last_seq  # the newest event seen (replayed from here after a reconnect)
        self._recent: collections.deque[int] = collections.deque(maxlen=_RECENT_SEQS)
        self._recent_set: set[int] = set()
        for item in [*self.config.pop("tools", []), *tools]:
            self.add_tool(item)

    def __repr__(self) -> str:
        return f"Agent({self.id!r})"

    # ------------------------------------------------------------- declaring

    def add_tool(self, item: Tool | Callable[..., Any] | Mapping[str, Any]) -> None:
        """Add a tool: a `Tool`, a function (schema derived), or a config dict (e.g. with `url`)."""
        if isinstance(item, Mapping):
            name = str(item.get("name", ""))
            self._check_new_tool(name)
            self._declared_tools.append(dict(item))
            return
        made = make_tool(item)
        self._check_new_tool(made.name)
        self.tools[made.name] = made

    def _check_new_tool(self, name: str) -> None:
        if name in self.tools or any(t.get("name") == name for t in self._declared_tools):
            raise ValueError(f"agent {self.id}: a tool named {name!r} is already declared")

    @overload
    def tool(self, fn: F, /) -> F: ...

    @overload
    def tool(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: JsonSchema | None = None,
        ephemeral: bool = False,
        timeout_seconds: float | None = None,
    ) -> Decorator: ...

    def tool(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: JsonSchema | None = None,
        ephemeral: bool = False,
        timeout_seconds: float | None = None,
    ) -> Any:
        """Declare a function as a tool of this agent; it runs here when the model calls it.

        The JSON Schema comes from the type hints (or `parameters=`), the description
        from the docstring's first paragraph. A parameter annotated `Session` (or
        named `session`) receives the session and is not part of the schema. Sync
        functions run in a thread. What it returns is the result the model sees
        (`None` → `{"ok": true}`); an exception gives `{"error": "<Class>: <message>"}`.
        Declare tools before `gw.run()`, or call `await agent.update()` after.
        """

        def wrap(f: G) -> G:
            made = make_tool(
                f,
                name=name,
                description=description,
                parameters=parameters,
                ephemeral=ephemeral,
                timeout_seconds=timeout_seconds,
            )
            self._check_new_tool(made.name)
            self.tools[made.name] = made
            return f

        return wrap(fn) if fn is not None else wrap

    def on(self, event: str) -> Decorator:
        """Handle an event of this agent (`user.message`, `session.ended`, …; `"*"` for all).

        The handler gets `(event)` or `(event, session)`, `event` being the frame as sent
        (camelCase, with `seq`), `session` a `Session` or `None` for agent-wide events.
        Sync or async; handlers run one at a time, in the order events arrive, and an
        exception is logged (never breaks the connection).
        """

        def wrap(f: G) -> G:
            self._handlers[event].append(f)
            return f

        return wrap

    def on_turn(self, fn: F) -> F:
        """Answer this agent's turns: `handler(turn)` or `handler(turn, reply)`.

        Async handlers stream with `reply` (`async with reply: await reply.write(…)`) or
        return the whole text; sync handlers run in a thread and return the text. The
        reply is ended for you when the handler returns, failed when it raises.
        """
        self._turn_handler = fn
        return fn

    @property
    def turn_handler(self) -> Callable[..., Any] | None:
        return self._turn_handler

    def handlers_for(self, event: str) -> list[Callable[..., Any]]:
        return [*self._handlers.get(event, ()), *self._handlers.get(ANY_EVENT, ())]

    def registration(self) -> dict[str, Any]:
        """The `config` sent in `agent.register`."""
        config = dict(self.config)
        tools = [*self._declared_tools, *(t.declaration() for t in self.tools.values())]
        if tools:
            config["tools"] = tools
        return config

    # ---------------------------------------------------------------- acting

    def session(self, session_id: str) -> Session:
        """A handle to steer one of this agent's sessions (e.g. one read from the HTTP API)."""
        return Session(self.gateway, self.id, session_id)

    async def accept_call(self, call_id: str) -> None:
        """Answer a `call.ringing` (its `callId`): the call is connected to this agent."""
        await self.gateway.request({"event": "call.accept", "call_id": call_id})

    async def reject_call(self, call_id: str, reason: str = "busy") -> None:
        """Refuse a ringing call: `busy` (busy tone) or `rejected` (dropped)."""
        await self.gateway.request({"event": "call.reject", "call_id": call_id, "reason": reason})

    async def update(self, **changes: Any) -> None:
        """Change the config (hot update): merges `changes`, then re-registers if connected.

        `tools` in `changes` replaces the config-dict tools (functions stay declared).
        """
        if "tools" in changes:
            self._declared_tools = []
            for item in changes.pop("tools") or []:
                self.add_tool(item)
        self.config.update(changes)
        await self.gateway.reregister(self)

    # --------------------------------------------------------- seq tracking

    def saw(self, seq: int) -> bool:
        """Record an event's seq; False when it was seen already (a replayed duplicate)."""
        if seq in self._recent_set:
            return False
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)
        self.advance(seq)
        return True

    def advance(self, seq: int) -> None:
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq


def is_async_callable(fn: Any) -> bool:
    while hasattr(fn, "func") and not inspect.isfunction(fn):  # functools.partial
        fn = fn.func
    call = type(fn).__call__ if callable(fn) and not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


def positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments `fn` takes (a large number for `*args`)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    count = 0
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return 1 << 16
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


async def call_handler(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn` with as many of `args` as it takes; sync functions run in a thread."""
    args = args[: positional_arity(fn)]
    if is_async_callable(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
