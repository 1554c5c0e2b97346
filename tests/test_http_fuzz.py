"""schemathesis against `plan serve`'s own ``/openapi.json``: requests generated from the schema (its
examples, its boundary values, then random bodies), each sent to the app and checked — no 5xx, a
status the schema declares, a body that matches its declared schema, wrong-typed or missing fields
refused. The check that every schema-valid body is accepted is left out: a model named by a string
("xyz") is valid to the schema and rightly a 400.

A request can name a search of minutes (a valid model on thousands of GPUs); the server's limit per
request is raised here so that such a search is a finding (a 504 is a 5xx), not noise."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from parallelplan.dashboard.app import create_app

CONFIG = SchemathesisConfig.from_dict({
    "seed": 21,  # the same requests on every run: a failure here is reproducible by rerunning
    "generation": {"max-examples": 12, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {"positive_data_acceptance": {"enabled": False}},
})
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(workers=1, timeout_s=300), config=CONFIG)


@pytest.fixture(autouse=True)
def _plan_for_the_named_cluster(monkeypatch):
    monkeypatch.setenv("PLAN_DETECT", "off")  # the worker processes plan for the clusters named, not this machine


@schema.parametrize()
def test_generated_requests_get_declared_answers(case):
    case.call_and_validate()
