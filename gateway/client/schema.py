"""JSON Schema for a tool's arguments, derived from a Python function's signature.

    def lookup_order(order_id: str, include_items: bool = False) -> dict:
        '''Look up an order by its id.

        Args:
            order_id: The order id, like ORD-12345.
        '''

gives the description "Look up an order by its id." and

    {"type": "object",
     "properties": {"order_id": {"type": "string", "description": "The order id, like ORD-12345."},
                    "include_items": {"type": "boolean", "default": false}},
     "required": ["order_id"]}

Supported annotations: `str`, `int`, `float`, `bool`, `None`, `Any` (or none), `list[X]`,
`tuple[X, ...]`, `set[X]`, `dict` / `dict[str, X]`, `X | None` / `Optional[X]` (not
required), other unions (`anyOf`), `Literal[...]` and `Enum` subclasses (`enum`),
`Annotated[X, "a description"]`, and dataclasses / TypedDicts (nested objects). A
parameter with a default is not required. The parameter that receives the
`Session` (annotated `Session`, or named `session`) is left out of the schema.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

JsonSchema = dict[str, Any]

SESSION_PARAM = "session"
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PRIMITIVES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_GOOGLE_ARG = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_ARG = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


class SchemaError(TypeError):
    """An annotation that has no JSON Schema equivalent (pass `parameters=` instead)."""


def valid_tool_name(name: str) -> bool:
    return bool(_TOOL_NAME.match(name))


def is_session_param(param: inspect.Parameter, hint: Any) -> bool:
    """True for the parameter that receives the `Session` (by annotation or by name)."""
    from gateway.client.session import Session  # local: session.py does not import this module

    if param.name == SESSION_PARAM:
        return True
    candidates = [hint, *get_args(hint)] if _is_union(hint) else [hint]
    return any(c is Session for c in candidates)


def describe(fn: Callable[..., Any]) -> str:
    """The docstring's first paragraph, on one line ('' without a docstring)."""
    doc = inspect.getdoc(fn) or ""
    first: list[str] = []
    for line in doc.splitlines():
        if not line.strip() or _ARGS_HEADER.match(line):
            break
        first.append(line.strip())
    return " ".join(first)


def param_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """Per-parameter descriptions from a Google-style `Args:` section or `:param x:` lines."""
    doc = inspect.getdoc(fn) or ""
    out: dict[str, str] = {}
    header_indent: int | None = None  # set while inside an `Args:` section
    arg_indent: int | None = None
    current: str | None = None
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        sphinx = _SPHINX_ARG.match(line)
        if sphinx:
            header_indent, current, arg_indent = None, sphinx.group(1), indent
            out[current] = sphinx.group(2).strip()
            continue
        header = _ARGS_HEADER.match(line)
        if header:
            header_indent, arg_indent, current = indent, None, None
            continue
        if header_indent is not None and indent <= header_indent:
            header_indent, current = None, None  # the section ended
        if header_indent is not None:
            if arg_indent is None:
                arg_indent = indent
            match = _GOOGLE_ARG.match(line)
            if indent == arg_indent and match:
                current = match.group(1)
                out[current] = match.group(2).strip()
                continue
        if current is not None and arg_indent is not None and indent > arg_indent:
            out[current] = f"{out[current]} {line.strip()}".strip()
        else:
            current = None
    return out


def function_parameters(fn: Callable[..., Any]) -> JsonSchema:
    """The JSON Schema (an `object`) of `fn`'s keyword arguments, minus the session."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an annotation naming something that is not importable
        raise SchemaError(f"cannot resolve the type hints of {_name(fn)}: {exc}") from exc
    docs = param_docs(fn)
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise SchemaError(
                f"{_name(fn)}: positional-only parameter {param.name!r} cannot be a tool argument"
            )
        hint = hints.get(param.name, Any)
        if is_session_param(param, hint):
            continue
        try:
            schema = type_schema(hint)
        except SchemaError as exc:
            raise SchemaError(f"{_name(fn)}: parameter {param.name!r}: {exc}") from None
        if param.name in docs and "description" not in schema:
            schema["description"] = docs[param.name]
        optional = _is_optional(hint)
        if param.default is not inspect.Parameter.empty:
            default = _jsonable(param.default)
            if default is not _NO_JSON and param.default is not None:
                schema["default"] = default
        elif not optional:
            required.append(param.name)
        properties[param.name] = schema
    out: JsonSchema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def type_schema(hint: Any) -> JsonSchema:
    """The JSON Schema of one annotation (a new dict each call)."""
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is typing.Annotated:
        schema = type_schema(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    if _is_union(hint):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return type_schema(members[0])
        return {"anyOf": [type_schema(a) for a in members]}
    if origin is Literal:
        values = list(args)
        schema = {"enum": values}
        kinds = {_PRIMITIVES.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        schema = {"enum": values}
        kinds = {_PRIMITIVES.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if hint in (list, tuple, set, frozenset) or origin in (list, set, frozenset) or _is_sequence(origin):
        schema = {"type": "array"}
        if args:
            schema["items"] = type_schema(args[0])
        return schema
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0])}
        items = [type_schema(a) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if hint is dict or origin is dict or _is_mapping(origin) or hint is Mapping:
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = type_schema(args[1])
        return schema
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _object_schema(
            hint,
            [
                (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(hint)
            ],
        )
    if typing.is_typeddict(hint):
        required_keys: frozenset[str] = getattr(hint, "__required_keys__", frozenset())
        return _object_schema(hint, [(k, k in required_keys) for k in typing.get_type_hints(hint)])
    raise SchemaError(f"no JSON Schema for the annotation {hint!r}; pass parameters={{...}} to the tool")


def _object_schema(cls: type, fields: list[tuple[str, bool]]) -> JsonSchema:
    hints = typing.get_type_hints(cls, include_extras=True)
    properties = {name: type_schema(hints.get(name, Any)) for name, _ in fields}
    required = [name for name, needed in fields if needed and not _is_optional(hints.get(name, Any))]
    schema: JsonSchema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _is_optional(hint: Any) -> bool:
    if get_origin(hint) is typing.Annotated:
        return _is_optional(get_args(hint)[0])
    return hint is None or (_is_union(hint) and type(None) in get_args(hint))


def _is_sequence(origin: Any) -> bool:
    return (
        isinstance(origin, type)
        and origin is not str
        and issubclass(origin, Sequence)
        and origin is not tuple
    )


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, Mapping)


_NO_JSON = object()


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _NO_JSON
    return value


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
