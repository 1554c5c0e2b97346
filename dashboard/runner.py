"""Each request runs ``plan <command> ... --json`` in a worker process of its own: at most ``workers``
at once, at most ``queue`` more waiting (beyond that: refused, 503), each stopped at ``timeout_s``
(504) — a search cannot starve the server or the other requests, and a stopped one leaves nothing
behind. The process's exit code is the CLI's: 0 an answer, 1 infeasible (its JSON explanation), 2 bad
input (its one-line message), anything else a bug.

The worker is forked from a fork server that has imported the planner once (`PRELOAD`), not started
afresh: a request pays for its search, not for Python's start and the imports (about 0.4 s of the
1.4 s that recommending a plan for Llama-3.1-70B on 8 DGX H100 nodes takes from a cold start). It runs
the `plan` command itself (`cli.main.plan`, the same parser and error policy as the command line) with
the server's environment and working directory as they are when the request arrives."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

PRELOAD = ["parallelplan.cli.main", "parallelplan.models", "parallelplan.hardware", "parallelplan.constraints",
           "parallelplan.solver", "parallelplan.emitters"]
"""What the fork server imports once for every worker (each a fork of it)."""
_WORKERS = multiprocessing.get_context("forkserver")
_WORKERS.set_forkserver_preload(PRELOAD)


@dataclass(frozen=True)
class Outcome:
    status: int  # the HTTP status
    body: dict


class Busy(Exception):
    """More requests waiting than the queue holds."""


@dataclass(frozen=True)
class _Finished:
    code: int
    stdout: str
    stderr: str


class Runner:
    def __init__(self, workers: int, queue: int, timeout_s: float) -> None:
        self.workers, self.queue, self.timeout_s = workers, queue, timeout_s
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="plan-worker")  # one waits on each worker

    async def run(self, args: list[str]) -> Outcome:
        if self._waiting >= self.queue + self.workers:
            raise Busy(f"{self._waiting} requests are running or waiting (at most {self.workers} run at once and "
                       f"{self.queue} wait); retry shortly")
        self._waiting += 1
        try:
            async with self._slots:
                finished = await asyncio.get_running_loop().run_in_executor(self._threads, self._run, args)
                return _outcome(args, finished, self.timeout_s)
        finally:
            self._waiting -= 1

    def _run(self, args: list[str]) -> _Finished | None:
        """The command's exit code and output, or None when it ran past the time limit (and was killed)."""
        receiving, sending = _WORKERS.Pipe(duplex=False)
        worker = _WORKERS.Process(target=_run_command, args=(args, dict(os.environ), os.getcwd(), sending), daemon=True)
        worker.start()
        sending.close()
        try:
            if not receiving.poll(self.timeout_s):
                worker.kill()
                return None
            try:
                return receiving.recv()
            except EOFError:  # the worker died without an answer (killed from outside, out of memory)
                return _Finished(-1, "", f"the worker process of plan {args[0]} died without an answer")
        finally:
            receiving.close()
            worker.join()


def _run_command(args: list[str], environ: dict[str, str], cwd: str, answer: Connection) -> None:
    """In the worker: ``plan <args>`` as the command line runs it, its output captured and sent back."""
    from parallelplan.cli.main import plan

    os.environ.clear()
    os.environ.update(environ, NO_COLOR="1")
    os.chdir(cwd)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            plan.main(args=args, prog_name="plan")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    answer.send(_Finished(code, stdout.getvalue(), stderr.getvalue()))


def _outcome(args: list[str], finished: _Finished | None, timeout_s: float) -> Outcome:
    if finished is None:
        return Outcome(504, {"error": f"plan {args[0]} ran past this server's {timeout_s:g} s limit per request and "
                                      "was stopped; narrow the search (pin degrees, fewer nodes) or start the server "
                                      "with a longer --timeout"})
    text, message = finished.stdout, _message(finished.stderr)
    if finished.code == 0:
        try:
            return Outcome(200, json.loads(text))
        except ValueError:
            return Outcome(500, {"error": f"plan {args[0]} --json printed no JSON (a bug in plan: please report it)"})
    if finished.code == 1:  # infeasible or a broken rule: the command's own JSON explanation
        return Outcome(422, json.loads(text) if text.strip().startswith("{") else {"error": message or text.strip()})
    if finished.code == 2:
        return Outcome(400, {"error": message})
    return Outcome(500, {"error": message or f"plan {args[0]} exited {finished.code}"})


def _message(stderr: str) -> str:
    """The command's one-line error (ours: ``error: ...``; click's usage errors: ``Error: ...``)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    found = [line for line in lines if line.lower().startswith(("error:", "internal error"))]
    line = found[-1] if found else (lines[-1] if lines else "")
    return line.split(":", 1)[1].strip() if line.lower().startswith("error:") else line
