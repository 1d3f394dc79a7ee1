"""Fuzz the GraphQL API with schemathesis (generated queries and mutations): no request may end in a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import neo4j
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitbase.api.app import ApiConfig, create_app
from circuitbase.api.limits import Limits

pytestmark = pytest.mark.neo4j


@pytest.fixture(scope="module")
def served(neo4j_driver: neo4j.Driver) -> Iterator[TestClient]:
    app = create_app(config=ApiConfig(limits=Limits(query_timeout_s=5.0)), driver=neo4j_driver)
    with TestClient(app) as client:  # runs the lifespan: the repository is ready
        yield client


def test_no_server_errors(served: TestClient) -> None:
    schema = schemathesis.graphql.from_asgi("/graphql", served.app)
    strategy = schema.as_strategy()
    calls = []

    @given(data=st.data())
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(data: st.DataObject) -> None:
        case = data.draw(strategy)
        response = case.call()
        calls.append(response.status_code)
        assert response.status_code < 500, response.text
        errors = response.json().get("errors") or []
        assert all(e.get("extensions", {}).get("code") != "INTERNAL_SERVER_ERROR" for e in errors), errors

    check()
    assert len(calls) >= 40  # the fuzzer did send requests
