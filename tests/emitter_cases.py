"""Solved plans that together span what each emitter expresses (shared by the fast emitter tests and the
validator tests): single and multi-node; for DeepSpeed every ZeRO stage, HSDP, AutoTP, CPU offload of the
optimizer and of parameters, fp16 and full recompute."""

from __future__ import annotations

import re
import shlex
from functools import cache

from constraints import Workload
from emitters import constraints
from hardware import load_cluster
from models import load_model
from solver import Solution, solve

EIGHT_B = "llama-3.1-8b"
WORK = Workload(seq_len=4096, global_batch_size=128)


def _solve(model: str, nodes: int, target: str, fixed: dict | None = None, ranges: dict | None = None) -> Solution:
    limits = constraints(target)
    return solve(load_model(model), load_cluster("dgx-h100", nodes=nodes), WORK,
                 fixed=limits.get("fixed", {}) | (fixed or {}), ranges=limits.get("ranges", {}) | (ranges or {}),
                 allow_partial_recompute=limits.get("allow_partial_recompute", True))


@cache
def deepspeed_cases() -> dict[str, Solution]:
    return {
        "zero0 single node": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "none", "tp": 2}),
        "zero1": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "zero1"}),
        "zero2 fp16": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "zero2"}, {"precision": ["fp16"]}),
        "zero3 full recompute": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "zero3", "recompute": "full"}),
        "hsdp": _solve(EIGHT_B, 2, "deepspeed", {"sharding": "hsdp"}),
        "offload optimizer, autotp": _solve(EIGHT_B, 1, "deepspeed", {"tp": 2, "sharding": "zero1"},
                                            {"offload": ["optimizer"]}),
        "offload params": _solve(EIGHT_B, 1, "deepspeed", {"sharding": "zero3"}, {"offload": ["params"]}),
    }


@cache
def launcher_cases() -> dict[str, Solution]:
    return {"single node": _solve(EIGHT_B, 1, "torchrun"), "four nodes": _solve("llama-3.1-70b", 4, "torchrun")}


def command_words(script: str, program: str) -> list[str]:
    """The words after ``program`` on its command line in a script (continuation lines joined)."""
    text = script.replace("\\\n", " ")
    line = next(row for row in text.splitlines() if re.search(rf"(^|\s){program}\s", row))
    words = shlex.split(line)
    return words[words.index(program) + 1:]
