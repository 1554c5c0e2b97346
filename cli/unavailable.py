"""Commands of the `plan` surface that are not built yet: each says so plainly — what it will do and what
to use meanwhile — and exits 2, printing no output that could pass for a result."""

from __future__ import annotations

import click

PLANNED = {
    "optimize": ("tune a running job's plan from its measured profile",
                 "`plan solve` with `--fix` for what you cannot change"),
}


def _unavailable(name: str, what: str, meanwhile: str) -> click.Command:
    def run(args: tuple[str, ...]) -> None:
        click.echo(f"error: `plan {name}` is not available yet: it will {what}. Meanwhile: {meanwhile}.", err=True)
        raise SystemExit(2)

    return click.Command(
        name, callback=run, params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help=f"Not available yet: will {what}.", short_help="(not available yet)")


UNAVAILABLE = [_unavailable(name, what, meanwhile) for name, (what, meanwhile) in PLANNED.items()]
