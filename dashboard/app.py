"""The FastAPI app of `plan serve`: the page at ``/`` (``static/``: plain HTML, CSS and JavaScript served
by this process, nothing fetched from elsewhere), and ``POST /api/parallelism/<endpoint>`` for each of `endpoints.ENDPOINTS`,
its body the command's flags (the OpenAPI schema at ``/openapi.json`` lists them), its answer the
command's ``--json`` (200), its infeasibility explained (422), bad input in the CLI's one line (400: an
unknown field, a wrong type or a value the command refuses), a request the queue cannot take (503), one
past the time limit (504)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from parallelplan import __version__
from parallelplan.dashboard.endpoints import BadField, Endpoint, arguments, endpoints
from parallelplan.dashboard.runner import Busy, Runner


class Refusal(BaseModel):
    """A request the command refused, in its one line."""

    error: str


RESPONSES = {
    200: {"description": "The command's --json answer", "content": {"application/json": {"schema": {"type": ["object", "array"]}}}},
    400: {"description": "Bad input: the field, the value and the fix, in the CLI's one line", "model": Refusal},
    422: {"description": "Infeasible, or a plan that breaks a rule: the command's --json explanation",
          "content": {"application/json": {"schema": {"type": "object"}}}},
    500: {"description": "A bug in plan (never bad input)", "model": Refusal},
    503: {"description": "More requests than the server runs and queues: retry", "model": Refusal},
    504: {"description": "Past the server's time limit per request: narrow the search", "model": Refusal},
}
"""What each endpoint may answer (the OpenAPI schema's responses)."""
WORKERS, QUEUE, TIMEOUT_S = 2, 64, 120.0
"""Defaults of `plan serve`: searches at once, requests waiting, seconds per request."""


def create_app(workers: int = WORKERS, queue: int = QUEUE, timeout_s: float = TIMEOUT_S) -> FastAPI:
    app = FastAPI(title="plan", version=__version__,
                  description="The best parallelism plan for training or serving a transformer on a GPU cluster: "
                              "each endpoint is a `plan` command, its body the command's flags.")
    runner = Runner(workers, queue, timeout_s)

    @app.exception_handler(StarletteHTTPException)
    async def refused(_request: Request, error: StarletteHTTPException) -> JSONResponse:  # e.g. a body not JSON
        return JSONResponse(status_code=error.status_code, content={"error": str(error.detail)}, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return JSONResponse(status_code=400, content={"error": f"{where}: {first['msg']}"})

    static = resources.files("parallelplan.dashboard").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:  # the page: static files, no CDN, every figure from the endpoints below
        return FileResponse(str(static.joinpath("index.html")))

    for endpoint in endpoints().values():
        app.post(f"/api/parallelism/{endpoint.name}", name=endpoint.name, summary=f"plan {endpoint.command.name}",
                 description=(endpoint.command.help or "").split("\n\n")[0], responses=_responses(endpoint))(_handler(endpoint, runner))
    return app


def _responses(endpoint: Endpoint) -> dict:
    """`RESPONSES`, the 200 answer typed where the endpoint's command prints one type."""
    if endpoint.answer is None:
        return RESPONSES
    return {**RESPONSES, 200: {"description": "The command's --json answer", "model": endpoint.answer}}


def _handler(endpoint: Endpoint, runner: Runner):
    async def handle(body) -> JSONResponse:
        try:
            outcome = await runner.run(arguments(endpoint, body))
        except BadField as bad:
            return JSONResponse(status_code=400, content={"error": str(bad)})
        except Busy as busy:
            return JSONResponse(status_code=503, content={"error": str(busy)})
        return JSONResponse(status_code=outcome.status, content=outcome.body)

    handle.__name__ = endpoint.name.replace("-", "_")
    handle.__annotations__ = {"body": endpoint.body, "return": JSONResponse}  # FastAPI reads the body's model here
    return handle
