"""`plan`: the command group and its error policy.

Exit codes: 0 ok, 1 infeasible / validation failed, 2 bad input (an unknown model, a malformed file, a
bad flag). Bad input — every `ModelError`, `HardwareError`, `PlanError`, `SolverInputError` and `EmitError` — prints one line
naming what is wrong and how to fix it. Anything else is a bug in `plan` and surfaces as Python's traceback (exit 1).
"""

from __future__ import annotations

import sys

import click

from cli.analyze_cmd import analyze
from cli.estimate_cmd import estimate
from cli.launch_cmd import launch, slurm
from cli.presets_cmd import presets
from cli.solve_cmd import pareto, solve


class _Plan(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        from constraints import PlanError
        from emitters.errors import EmitError
        from hardware import HardwareError
        from models import ModelError
        from solver import SolverInputError

        try:
            return super().invoke(ctx)
        except (ModelError, HardwareError, PlanError, SolverInputError, EmitError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Plan, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="plan")
def plan() -> None:
    """Find the best way to run a transformer on a GPU cluster.

    \b
    Examples:
      plan presets
      plan analyze --model llama-3.1-70b
      plan analyze --model ./config.json --seq-len 8192 --json
      plan estimate --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --tp 8 --pp 2
      plan solve --model llama-3.1-70b --cluster dgx-h100 --nodes 8 --seq-len 8192 --global-batch 512
      plan pareto --model llama-3.1-70b --cluster dgx-h100 --nodes 8 -o throughput,cost,gpus
    """


plan.add_command(presets)
plan.add_command(analyze)
plan.add_command(estimate)
plan.add_command(solve)
plan.add_command(solve, name="recommend")
plan.add_command(pareto)
plan.add_command(launch)
plan.add_command(slurm)


def main() -> None:
    plan()
