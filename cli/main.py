"""`plan`: the command group, the options every command shares and the error policy.

Exit codes: 0 ok; 1 infeasible, a plan that breaks a rule, or a validation that fails; 2 bad input (an
unknown model, a malformed file, a bad flag, a file that cannot be read or written); 3 an internal error (a bug in `plan`: please report it with the ``--debug`` traceback).
Bad input — every `ModelError`, `HardwareError`, `PlanError`, `SolverInputError`, `EmitError`,
`DryRunError` and `OSError` — prints one line naming what is wrong and how to fix it. ``--debug`` shows the
traceback instead.

Every command takes ``--quiet`` (the result only: no notes, explanations or progress) and ``--debug``,
before or after its name (``plan --quiet solve ...`` = ``plan solve ... --quiet``). Colour only on a
terminal; ``--no-color`` or the ``NO_COLOR`` environment variable turns it off.
"""

from __future__ import annotations

import os
import sys

import click

from parallelplan.cli.analyze_cmd import analyze
from parallelplan.cli.calibrate_cmd import calibrate
from parallelplan.cli.compare_cmd import compare
from parallelplan.cli.dryrun_cmd import dry_run
from parallelplan.cli.estimate_cmd import estimate
from parallelplan.cli.launch_cmd import launch, slurm
from parallelplan.cli.optimize_cmd import optimize
from parallelplan.cli.place_cmd import place
from parallelplan.cli.presets_cmd import presets
from parallelplan.cli.profile_cmd import profile
from parallelplan.cli.serve_cmd import serve
from parallelplan.cli.serve_plan_cmd import serve_plan
from parallelplan.cli.sharding_cmd import sharding
from parallelplan.cli.solve_cmd import pareto, solve
from parallelplan.cli.topology_cmd import topology
from parallelplan.cli.validate_cmd import validate


def _flag(name: str):
    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[name] = True
    return remember


SHARED_OPTIONS = (
    click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_flag("plan.quiet"),
                 help="Print the result only: no notes, explanations or progress."),
    click.Option(["--debug"], is_flag=True, expose_value=False, callback=_flag("plan.debug"),
                 help="Show the traceback of an error instead of its one-line message."),
)


class _Plan(click.Group):
    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        names = {opt for param in cmd.params for opt in getattr(param, "opts", ())}
        cmd.params.extend(option for option in SHARED_OPTIONS if option.opts[0] not in names)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> object:
        from parallelplan.constraints import PlanError
        from parallelplan.dryrun.errors import DryRunError
        from parallelplan.emitters.errors import EmitError
        from parallelplan.hardware import HardwareError
        from parallelplan.models import ModelError
        from parallelplan.solver import SolverInputError

        if os.environ.get("NO_COLOR"):
            ctx.color = False
        try:
            return super().invoke(ctx)
        except (ModelError, HardwareError, PlanError, SolverInputError, EmitError, DryRunError, OSError) as err:
            if ctx.meta.get("plan.debug"):
                raise
            click.echo(f"error: {_one_line(err)}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as err:
            if ctx.meta.get("plan.debug"):
                raise
            click.echo(f"internal error (a bug in plan): {type(err).__name__}: {_one_line(err)}; "
                       "rerun with --debug for the traceback and report it", err=True)
            sys.exit(3)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return " ".join(str(err).split())


def _shared(command: click.Command) -> click.Command:
    command.params.extend(click.Option(o.opts, is_flag=True, expose_value=False, callback=o.callback, help=o.help)
                          for o in SHARED_OPTIONS)
    return command


@_shared
@click.group(cls=_Plan, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parallelplan", prog_name="plan")
@click.option("--color/--no-color", default=None,
              help="Colour the tables [default: only on a terminal, and not when NO_COLOR is set].")
@click.pass_context
def plan(ctx: click.Context, color: bool | None) -> None:
    """Find the best way to run a transformer on a GPU cluster.

    Without --cluster, commands use one DGX H100 node (8 x H100 SXM 80 GB) and say so.

    \b
    Examples:
      plan recommend --model llama-3.1-70b --nodes 2
      plan estimate --model llama-3.1-70b --nodes 8 --tp 8 --pp 2 --tokens 1e12
      plan validate --model llama-3.1-70b --tp 4 --dp 1
      plan sharding --model llama-3.1-8b --dp 8
      plan compare --model llama-3.1-8b --model llama-3.1-70b --cluster dgx-h100 --cluster dgx-a100 --nodes 4
      plan place --model llama-3.1-70b --model llama-3.1-8b --nodes 8
      plan launch --model llama-3.1-70b --nodes 2 --target deepspeed --out run/
      plan optimize --model llama-3.1-70b --nodes 8 --tp 8 --recompute full
      plan serve-plan --model llama-3.1-70b --isl 4000 --osl 1000 --ttft 2000 --tpot 30
    """
    if color is not None:
        ctx.color = color


for command in (presets, analyze, topology, estimate, validate, sharding, solve, pareto, compare, place, launch, slurm,
                calibrate, profile, dry_run, optimize, serve_plan, serve):
    plan.add_command(command)
plan.add_command(solve, name="recommend")


def main() -> None:
    plan(prog_name="plan")
