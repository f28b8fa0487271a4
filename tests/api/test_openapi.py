"""/openapi.json is generated from the routes, and schemathesis finds no 5xx behind it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override
from starlette.routing import Mount, Route, WebSocketRoute

from gateway.api.operation import ApiRoute
from gateway.server import create_app
from tests.conftest import ADMIN, Running, make_settings

# Routes that are pages or sockets, not REST operations.
NOT_OPERATIONS = {("/", "GET"), ("/console", "GET"), ("/v1/tokens", "OPTIONS")}


def test_every_http_route_is_a_documented_operation(sqlite_url: str) -> None:
    app = create_app(make_settings(sqlite_url), env={})
    documented: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Mount | WebSocketRoute):
            continue
        assert isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}:
            if (route.path, method) in NOT_OPERATIONS:
                continue
            assert isinstance(route, ApiRoute), f"{method} {route.path} is not an ApiRoute"
            documented.add((route.path, method.lower()))
    from gateway.api.openapi import openapi_document

    doc = openapi_document(app.routes)
    in_doc = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert in_doc == documented
    # Each body the routes parse is a schema of the document, with its fields.
    assert set(doc["components"]["schemas"]["TokenRequest"]["properties"]) == {
        "agent",
        "channel",
        "metadata",
        "sessionId",
    }
    params = doc["paths"]["/v1/sessions"]["get"]["parameters"]
    since = next(p for p in params if p["name"] == "since")
    assert since["schema"]["maximum"] == 2**63 - 1


EXAMPLES = 8  # fuzzed cases per operation and mode: bounded, deterministic (derandomized)
_generated: dict[str, list[tuple[Any, bool]]] = {}


def _all_cases(doc: dict[str, Any]) -> list[tuple[Any, bool]]:
    """(case, streams?) for every operation, positive and negative; generated once per document."""
    key = json.dumps(doc, sort_keys=True)
    if key not in _generated:
        schema = schemathesis.openapi.from_dict(doc)
        out = []
        for result in schema.get_all_operations():
            operation = result.ok()
            streaming = "text/event-stream" in str(operation.definition.raw.get("responses", {}))
            # The coverage phase: deterministic boundary values and wrong types for every input.
            coverage = CoverageGenerator(
                operation=operation,
                generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
                auth_storage=None,
                override=Override(),
                feedback=FeedbackSources(),
                hooks=None,
            )
            out.extend((case, streaming) for case in coverage)
            # The fuzzing phase, bounded.
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                out.extend((case, streaming) for case in _cases(operation, mode, EXAMPLES))
        _generated[key] = out
    return _generated[key]


def _run_schemathesis(base_url: str, doc: dict[str, Any]) -> tuple[Counter[int], list[str]]:
    """Every generated case against the gateway, over one requests session (in a thread)."""
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    session = requests.Session()
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for case, streaming in _all_cases(doc):
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=auth)
        try:
            response = session.request(**kwargs, stream=True, timeout=30)
        except requests.ConnectionError as exc:  # the gateway dropped the connection
            statuses[0] += 1
            failures.append(f"dropped ({exc.__class__.__name__}) {case.as_curl_command()[:300]}")
            continue
        if not streaming:
            response.content  # noqa: B018 (read it: the connection is reused)
        response.close()
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {case.as_curl_command()[:300]}")
    return statuses, failures


def _cases(operation: Any, mode: GenerationMode, examples: int) -> list[Any]:
    cases: list[Any] = []

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def collect(case: Any) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
        pass
    return cases


async def test_schemathesis_finds_no_server_error(gateway_any_db: Running) -> None:
    started = time.monotonic()
    outcome: dict[str, Any] = {}

    async with gateway_any_db.client() as c:
        doc = (await c.get("/openapi.json")).json()

    def work() -> None:
        try:
            outcome["result"] = _run_schemathesis(gateway_any_db.url, doc)
        except BaseException as exc:  # reported on the test's side
            outcome["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)  # the gateway runs on this loop meanwhile
    if "error" in outcome:
        raise outcome["error"]
    statuses, failures = outcome["result"]
    total = sum(statuses.values())
    print(f"\nschemathesis: {total} cases in {time.monotonic() - started:.1f}s, statuses {dict(statuses)}")
    assert total > 1000
    assert failures == [], "\n".join(failures[:20])
