"""The HTTP API behind `plan serve`: the advisor's endpoints over the `plan` commands (`endpoints`), run
in a bounded pool of worker processes with a time limit each (`runner`), as a FastAPI app (`app`).
FastAPI and uvicorn are the ``serve`` extra: ``pip install -e '.[serve]'``."""
