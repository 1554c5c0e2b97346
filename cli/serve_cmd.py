"""`plan serve`: the HTTP API (`dashboard.app`) on uvicorn — localhost by default; another address is an
explicit choice, said on stderr, since the server runs searches for whoever reaches it."""

from __future__ import annotations

import click

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but localhost exposes the searches to the network: put an "
                   "authenticating proxy in front.")
@click.option("--port", type=click.IntRange(1, 65535), default=6970, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Searches run at once (each in a process of its own).")
@click.option("--queue", type=click.IntRange(0, 100_000), default=64, show_default=True,
              help="Requests that may wait for a worker; more are refused with 503.")
@click.option("--timeout", type=click.FloatRange(1.0, 86_400.0), default=120.0, show_default=True,
              help="Seconds a request may run before it is stopped (504).")
def serve(host: str, port: int, workers: int, queue: int, timeout: float) -> None:
    """Serve the advisor's HTTP API: POST /api/parallelism/<endpoint>, schema at /openapi.json.

    \b
    Examples:
      plan serve
      curl -s localhost:6970/api/parallelism/recommend -H 'content-type: application/json' \\
           -d '{"model_ref": "llama-3.1-70b", "cluster_ref": "dgx-h100", "nodes": 8}'
    """
    try:
        import uvicorn

        from parallelplan.dashboard.app import create_app
    except ImportError as missing:
        raise click.UsageError(f"plan serve needs the serve extra ({missing.name} is missing): "
                               "pip install -e '.[serve]'") from None
    if host not in LOOPBACK:
        click.echo(f"note: listening on {host}: anyone who reaches it can run searches on this machine", err=True)
    uvicorn.run(create_app(workers, queue, timeout), host=host, port=port, log_level="warning")
