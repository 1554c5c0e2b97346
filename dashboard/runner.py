"""Each request runs ``plan <command> ... --json`` in a worker process of its own: at most ``workers``
at once, at most ``queue`` more waiting (beyond that: refused, 503), each stopped at ``timeout_s``
(504) — a search cannot starve the server or the other requests, and a stopped one leaves nothing
behind. The process's exit code is the CLI's: 0 an answer, 1 infeasible (its JSON explanation), 2 bad
input (its one-line message), anything else a bug."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    status: int  # the HTTP status
    body: dict


class Busy(Exception):
    """More requests waiting than the queue holds."""


class Runner:
    def __init__(self, workers: int, queue: int, timeout_s: float) -> None:
        self.workers, self.queue, self.timeout_s = workers, queue, timeout_s
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0

    async def run(self, args: list[str]) -> Outcome:
        if self._waiting >= self.queue + self.workers:
            raise Busy(f"{self._waiting} requests are running or waiting (at most {self.workers} run at once and "
                       f"{self.queue} wait); retry shortly")
        self._waiting += 1
        try:
            async with self._slots:
                return await self._run(args)
        finally:
            self._waiting -= 1

    async def _run(self, args: list[str]) -> Outcome:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parallelplan", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout_s)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            return Outcome(504, {"error": f"plan {args[0]} ran past this server's {self.timeout_s:g} s limit per "
                                          "request and was stopped; narrow the search (pin degrees, fewer nodes) "
                                          "or start the server with a longer --timeout"})
        text, message = out.decode(), _message(err.decode())
        if process.returncode == 0:
            try:
                return Outcome(200, json.loads(text))
            except ValueError:
                return Outcome(500, {"error": f"plan {args[0]} --json printed no JSON (a bug in plan: please report it)"})
        if process.returncode == 1:  # infeasible or a broken rule: the command's own JSON explanation
            return Outcome(422, json.loads(text) if text.strip().startswith("{") else {"error": message or text.strip()})
        if process.returncode == 2:
            return Outcome(400, {"error": message})
        return Outcome(500, {"error": message or f"plan {args[0]} exited {process.returncode}"})


def _message(stderr: str) -> str:
    """The command's one-line error (ours: ``error: ...``; click's usage errors: ``Error: ...``)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    found = [line for line in lines if line.lower().startswith(("error:", "internal error"))]
    line = found[-1] if found else (lines[-1] if lines else "")
    return line.split(":", 1)[1].strip() if line.lower().startswith("error:") else line
