"""`plan serve`'s HTTP API (dashboard/): every endpoint answers exactly what `plan <command> ... --json`
prints for the same inputs, bad input is a 400 with the CLI's one line, infeasibility a 422 with its
explanation, a full queue a 503 and a search past its time limit a 504; a real server answers on its
port."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from benchmarks.plan_server import plan_server
from parallelplan.cli.main import plan
from parallelplan.dashboard.app import create_app
from parallelplan.dashboard.endpoints import ENDPOINTS, endpoints
from parallelplan.dashboard.runner import Busy, Runner

SMALL, NODE = {"model_ref": "llama-3.2-1b"}, {"cluster_ref": "dgx-h100"}
CASES = {  # endpoint: (request body, the same question on the command line)
    "topology": ({"cluster_ref": "dgx-h100", "nodes": 2}, ["topology", "-c", "dgx-h100", "--nodes", "2"]),
    "presets": ({"kind": "clusters"}, ["presets", "--kind", "clusters"]),
    "recommend": (SMALL | NODE, ["solve", "-m", "llama-3.2-1b", "-c", "dgx-h100"]),
    "analyze-model": ({"model_ref": "llama-3.1-8b"}, ["analyze", "-m", "llama-3.1-8b"]),
    "sharding": (SMALL | NODE, ["sharding", "-m", "llama-3.2-1b", "-c", "dgx-h100"]),
    "launch": (SMALL | NODE | {"target": "torchrun"}, ["launch", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--target", "torchrun"]),
    "validate": (SMALL | NODE | {"tp": 2, "dp": 4}, ["validate", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--tp", "2", "--dp", "4"]),
    "optimize": (SMALL | NODE | {"tp": 8, "dp": 1}, ["optimize", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--tp", "8", "--dp", "1"]),
    "profiles": ({}, ["profile", "--list"]),
    "profile": (SMALL | NODE | {"name": "lora"}, ["profile", "--workload", "lora", "-m", "llama-3.2-1b", "-c", "dgx-h100"]),
    "pareto": (SMALL | NODE, ["pareto", "-m", "llama-3.2-1b", "-c", "dgx-h100"]),
    "estimate": (SMALL | NODE | {"tp": 8, "sequence_parallel": True},
                 ["estimate", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--tp", "8", "--sequence-parallel"]),
    "compare": ({"model_refs": ["llama-3.2-1b", "llama-3.1-8b"], "cluster_refs": ["dgx-h100"]},
                ["compare", "-m", "llama-3.2-1b", "-m", "llama-3.1-8b", "-c", "dgx-h100"]),
    "slurm": (SMALL | NODE | {"nodes": 2}, ["slurm", "-m", "llama-3.2-1b", "-c", "dgx-h100", "--nodes", "2"]),
    "serve-plan": (SMALL | NODE | {"isl": 500, "osl": 100}, ["serve-plan", "-m", "llama-3.2-1b", "-c", "dgx-h100",
                                                             "--isl", "500", "--osl", "100"]),
}
TIMINGS = {"solve_time_s", "wall_time_s", "search_time_s", "elapsed_s", "time_s_spent"}


def _timeless(value):
    """The JSON without the wall-clock fields (a search's own time differs between two runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


@pytest.fixture(scope="module")
def client(monkeypatch_module):
    return TestClient(create_app())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLAN_DETECT", "off")  # the worker processes plan for the clusters named, not this machine
        yield patch


def test_every_endpoint_has_a_case():
    assert set(CASES) == set(ENDPOINTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_endpoint_answers_what_the_cli_prints(client, name):
    body, argv = CASES[name]
    response = client.post(f"/api/parallelism/{name}", json=body)
    cli = CliRunner().invoke(plan, [*argv, "--json"], env={"PLAN_DETECT": "off"})
    assert response.status_code == {0: 200, 1: 422}[cli.exit_code], response.text
    assert _timeless(response.json()) == _timeless(json.loads(cli.stdout))
    answer = endpoints()[name].answer
    if answer is not None and response.status_code == 200:  # the type the schema declares reads it back
        TypeAdapter(answer).validate_python(response.json())


def test_the_schema_declares_each_typed_answer(client):
    schema = client.get("/openapi.json").json()
    typed = {name for name, endpoint in endpoints().items() if endpoint.answer is not None}
    assert {"recommend", "pareto", "estimate", "serve-plan", "topology"} <= typed
    for name in typed:
        answer = schema["paths"][f"/api/parallelism/{name}"]["post"]["responses"]["200"]["content"]["application/json"]
        assert "$ref" in json.dumps(answer["schema"]), name  # a model, not any object
    rl = schema["components"]["schemas"]["RLSummary"]
    assert "models" not in rl["properties"] and "roles" in rl["required"]


def test_bad_input_is_a_400_with_one_line(client):
    unknown = client.post("/api/parallelism/recommend", json=SMALL | {"tensor_parallel": 8})
    assert unknown.status_code == 400 and "tensor_parallel" in unknown.json()["error"]
    typed = client.post("/api/parallelism/recommend", json=SMALL | {"nodes": "eight"})
    assert typed.status_code == 400 and typed.json()["error"].startswith("nodes:")
    missing = client.post("/api/parallelism/recommend", json={})
    assert missing.status_code == 400 and "model_ref" in missing.json()["error"]
    refused = client.post("/api/parallelism/recommend", json={"model_ref": "no-such-model"})
    assert refused.status_code == 400 and refused.json() == {
        "error": "unknown model 'no-such-model': not a preset, a file, or an org/name repo id; `plan presets` lists them"}


def test_requests_schemathesis_found_refused_are_400s(client):
    """What schemathesis, fuzzing the schema, found answered with a 500 or the wrong shape: a NUL in a
    field (no command line holds one), a body that is not JSON, a boolean for a number, a ~user path."""
    for body in ({"model_ref": "\x00"}, {"model_refs": ["llama-3.2-1b", "a\x00"]}):
        endpoint = "compare" if "model_refs" in body else "recommend"
        answer = client.post(f"/api/parallelism/{endpoint}", json=body)
        assert answer.status_code == 400 and "NUL character" in answer.json()["error"]
    garbled = client.post("/api/parallelism/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert garbled.status_code == 400 and set(garbled.json()) == {"error"}
    typed = client.post("/api/parallelism/estimate", json=SMALL | {"memory_margin": False})
    assert typed.status_code == 400 and typed.json()["error"].startswith("memory_margin:")
    home = client.post("/api/parallelism/analyze-model", json={"model_ref": "~no-such-user-here/config.json"})
    assert home.status_code == 400 and "no such user's home directory" in home.json()["error"]


def test_infeasible_is_a_422_with_its_explanation(client):
    response = client.post("/api/parallelism/serve-plan", json=SMALL | NODE | {"ttft": 0.01, "isl": 8000})
    assert response.status_code == 422
    assert "TTFT" in response.json()["infeasible"]["message"] and response.json()["infeasible"]["suggestions"]


def test_the_schema_lists_each_endpoint_and_its_flags(client):
    schema = client.get("/openapi.json").json()
    assert {f"/api/parallelism/{name}" for name in ENDPOINTS} <= set(schema["paths"])
    body = schema["components"]["schemas"]["ServePlanRequest"]
    assert {"model_ref", "isl", "osl", "ttft", "tpot", "rate", "mode"} <= set(body["properties"])
    assert body["required"] == ["model_ref"] and body["properties"]["mode"]["anyOf"][0]["enum"] == ["batch", "streaming", "realtime"]
    assert "efficiency_file" not in body["properties"]  # no paths on the server's disk


def test_a_full_queue_refuses_and_a_long_search_is_stopped():
    async def scenario():
        runner = Runner(workers=1, queue=0, timeout_s=0.3)
        slow = ["solve", "-m", "deepseek-v3", "-c", "dgx-h100", "--nodes", "256", "--json"]
        first = asyncio.create_task(runner.run(slow))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="at most 1 run at once and 0 wait"):
            await runner.run(["presets", "--json"])
        return await first

    outcome = asyncio.run(scenario())
    assert outcome.status == 504 and "ran past this server's 0.3 s limit" in outcome.body["error"]


def test_a_real_server_answers_on_its_port():
    with plan_server() as (url, _server):
        answer = httpx.post(f"{url}/api/parallelism/presets", json={"kind": "gpus"}, timeout=30)
    assert answer.status_code == 200 and "h100-sxm-80gb" in {g["name"] for g in answer.json()["gpus"]}
