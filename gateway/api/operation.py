"""An API operation: a route that declares its inputs, parses them with those
declarations, and documents itself in /openapi.json from the same declarations.

    ApiRoute("/v1/tokens", self.create, method="POST", summary="…", body=TokenRequest, ok=201)

The route checks its path parameters before the endpoint runs (a safe string of
at most 128 characters, else 400 `invalid_path`). The endpoint parses its body and
query string with `parse_body(request, TokenRequest)` / `parse_query(request, Q)`,
which refuse (400, naming the field) anything the model does not accept, and
insist that the model is the one the route declared: the document cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from gateway import sanitizer
from gateway.api.http import read_body, read_json
from gateway.api.models import ApiModel
from gateway.errors import BadRequest

M = TypeVar("M", bound=ApiModel)

FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation:
    method: str
    summary: str
    body: type[ApiModel] | None = None
    query: type[ApiModel] | None = None
    # A body that is not a model: a provider's webhook ({media type: JSON schema}).
    raw_body: Mapping[str, dict[str, Any]] | None = None
    body_required: bool = True
    ok: int = 200
    errors: tuple[int, ...] = ()
    secured: bool = True
    headers: tuple[str, ...] = ()  # documented request headers (e.g. Last-Event-ID)
    produces: str = "application/json"
    path_params: Sequence[str] = field(default_factory=tuple)


class ApiRoute(Route):
    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        method: str,
        summary: str,
        body: type[ApiModel] | None = None,
        query: type[ApiModel] | None = None,
        raw_body: Mapping[str, dict[str, Any]] | None = None,
        body_required: bool = True,
        ok: int = 200,
        errors: Sequence[int] = (),
        secured: bool = True,
        headers: Sequence[str] = (),
        produces: str = "application/json",
    ) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.operation = Operation(
            method=method.lower(),
            summary=summary,
            body=body,
            query=query,
            raw_body=raw_body,
            body_required=body_required,
            ok=ok,
            errors=tuple(sorted(set(errors) | ({400} if body or query or self.param_convertors else set()))),
            secured=secured,
            headers=tuple(headers),
            produces=produces,
            path_params=tuple(self.param_convertors),
        )

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["operation"] = self.operation
        return match, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.methods or scope["method"] in self.methods:
            for name, value in scope.get("path_params", {}).items():
                _check_path(name, value)
        await super().handle(scope, receive, send)


def _check_path(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"`{name}` is missing", code="invalid_path")
    found = sanitizer.problem(value)
    if found is not None:
        raise BadRequest(f"`{name}` {found}", code="invalid_path")
    if len(value) > sanitizer.MAX_ID:
        raise BadRequest(f"`{name}` is longer than {sanitizer.MAX_ID} characters", code="invalid_path")


def _declared(request: Request) -> Operation:
    operation = request.scope.get("operation")
    if not isinstance(operation, Operation):
        raise RuntimeError(f"{request.url.path} is not served by an ApiRoute")
    return operation


async def parse_body(request: Request, model: type[M], *, limit: int) -> M:
    """The JSON body as `model`; an optional body may be empty (all defaults)."""
    operation = _declared(request)
    if operation.body is not model:
        raise RuntimeError(f"{request.url.path} declares {operation.body}, parses {model.__name__}")
    raw = await read_body(request, limit)
    if not operation.body_required and not raw.strip():
        obj: dict[str, Any] = {}
    else:
        obj = await read_json(request, limit, body=raw)
    return validate(model, obj, default_code="invalid_field")


def parse_query(request: Request, model: type[M]) -> M:
    operation = _declared(request)
    if operation.query is not model:
        raise RuntimeError(f"{request.url.path} declares {operation.query}, parses {model.__name__}")
    # An empty value means "not given", as it always has (`?cursor=&limit=`).
    values = {k: v for k, v in request.query_params.items() if v != ""}
    return validate(model, values, default_code="invalid_query")


def validate(model: type[M], obj: Mapping[str, Any], *, default_code: str) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise refusal(model, exc, default_code) from None


def refusal(model: type[ApiModel], exc: ValidationError, default_code: str) -> BadRequest:
    """The first problem of a validation, as a 400 naming the field (its wire name)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = list(err["loc"])
    top = str(loc[0]) if loc else ""
    info = model.model_fields.get(top)
    wire = info.alias if info is not None and info.alias else top
    if err["type"] == "missing" and len(loc) == 1:
        return BadRequest(f"`{wire}` is required", code=model.missing.get(top, default_code))
    code = model.codes.get(top, default_code)
    if top in model.refusals:
        return BadRequest(model.refusals[top], code=code)
    path = wire
    for part in loc[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_tag(str(part)):
            path += f".{part}"
    message = sanitizer.clean(str(err["msg"]))
    return BadRequest(f"`{sanitizer.clip(path, 200)}`: {message}", code=code)


def _is_union_tag(part: str) -> bool:
    # pydantic names the union member it tried in `loc` (`str`, `constrained-str`,
    # `function-after[...]`, a model's class name): not a field of the input.
    return part in ("str", "int", "bool") or "[" in part or "-" in part or part[:1].isupper()
