"""Every numeric flag of every `plan` command, given 0, negative, huge, infinite, NaN, fractional or
non-numeric values: the command answers with exit 0 (ok), 1 (infeasible / broken rule) or 2 (bad input,
one line naming the flag), never an internal error (exit 3) or a traceback."""

from __future__ import annotations

import click
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallelplan.cli.main import plan

MODEL, CLUSTER = ["-m", "llama-3.2-1b"], ["-c", "dgx-h100"]
BASE_ARGS = {
    "analyze": MODEL, "topology": CLUSTER, "estimate": MODEL + CLUSTER, "validate": MODEL + CLUSTER,
    "sharding": MODEL + CLUSTER, "solve": MODEL + CLUSTER, "recommend": MODEL + CLUSTER, "pareto": MODEL + CLUSTER,
    "compare": MODEL + CLUSTER, "launch": MODEL + CLUSTER + ["--target", "torchrun"], "slurm": MODEL + CLUSTER,
    "place": MODEL + MODEL + ["--name", "a", "--name", "b"] + CLUSTER + ["--nodes", "2"],
    "profile": ["--workload", "lora"] + MODEL + CLUSTER,
    "dry-run": MODEL + CLUSTER + ["--nodes", "2", "--pp", "16", "--dp", "1"],  # one layer on the busiest stage
    "optimize": MODEL + CLUSTER,
    "serve-plan": MODEL + CLUSTER + ["--isl", "500", "--osl", "100"],
}
"""The smallest valid call of each command that has numeric flags (a 1B model on one node keeps it fast)."""
NUMERIC_FLAGS = {
    name: sorted(param.opts[0] for param in plan.commands[name].params
                 if isinstance(param, click.Option) and isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)))
    for name in BASE_ARGS
}
LIST_FLAGS = {"solve": ["--node-counts"], "compare": ["--node-counts"], "estimate": ["--layers-per-stage"],
              "optimize": ["--layers-per-stage"]}
"""Flags that take a comma-separated list of numbers."""
SPECIAL = ["0", "-1", "-0", "0.5", "1.5", "-2.5", "1e400", "inf", "-inf", "nan", "NaN", "1e12", "1e308",
           str(2**31), str(2**63), str(2**64 + 1), "99999999999999999999999", "abc", "", "1_000", "0x10", " 8"]


SERVERS = {"serve"}
"""Commands that start a server (a valid value would leave it running): their numeric flags are click
ranges, and tests/test_http_api.py starts one."""


def test_every_command_with_numeric_flags_is_covered():
    """A new command with numeric flags must be added to BASE_ARGS (so the sweep below covers it)."""
    with_numbers = {name for name, command in plan.commands.items()
                    if any(isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)) for p in command.params)}
    assert with_numbers == set(BASE_ARGS) | SERVERS


values = st.one_of(st.sampled_from(SPECIAL), st.integers(-(2**70), 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(1, 64).map(str), st.integers(0, 24).map(lambda k: str(2**k)),  # plausible sizes
                   st.sampled_from(["1e-300", "5e-324", "0.999999", "1.0", "1e6"]))


@st.composite
def invocations(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(BASE_ARGS)))
    flags = NUMERIC_FLAGS[command] + LIST_FLAGS.get(command, [])
    chosen = draw(st.lists(st.sampled_from(flags), min_size=1, max_size=2, unique=True))
    args = [command, *BASE_ARGS[command]]
    for flag in chosen:
        value = draw(values) if flag not in sum(LIST_FLAGS.values(), []) else \
            ",".join(draw(st.lists(values, min_size=1, max_size=3)))
        args += [flag, value]
    return args


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=invocations())
def test_numeric_flags_never_crash(args):
    result = CliRunner().invoke(plan, args)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code in (0, 1, 2), f"plan {' '.join(args)} → exit {result.exit_code}: {output[-600:]}"
    assert "Traceback" not in output and "internal error" not in output, f"plan {' '.join(args)}: {output[-600:]}"
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), f"plan {' '.join(args)} raised {result.exception!r}"
    if result.exit_code == 2:  # bad input: one line that names what is wrong
        assert "error" in output.lower() or "usage" in output.lower(), output
