"""The advisor's endpoints (``/api/parallelism/<name>``) and the `plan` command behind each: a request's
body holds the command's own flags (their Python names: ``model_ref`` is ``--model``, ``nodes`` is
``--nodes``), typed from the command's click parameters so that the OpenAPI schema lists them, and
becomes that command's argument list — one parser, one set of checks, so every endpoint answers exactly
what ``plan <command> ... --json`` prints.

Flags that name files on the server (``--efficiency``, ``--calibration``, ``--solution``, ``--snapshot``,
``--out``, ...) are not offered: a client names no path on the server's disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, create_model

from parallelplan.cli.main import plan

ENDPOINTS = {
    "topology": ("topology", ()), "presets": ("presets", ()), "recommend": ("solve", ()),
    "analyze-model": ("analyze", ()), "sharding": ("sharding", ()), "launch": ("launch", ()),
    "validate": ("validate", ()), "optimize": ("optimize", ()), "profiles": ("profile", ("--list",)),
    "profile": ("profile", ()), "pareto": ("pareto", ()), "estimate": ("estimate", ()), "compare": ("compare", ()),
    "slurm": ("slurm", ()), "serve-plan": ("serve-plan", ()),
}
"""Endpoint → (the `plan` command, arguments it always takes): the original advisor's names, and the
serving planner's."""
EXAMPLES = {"model_ref": ["llama-3.1-70b", "llama-3.2-1b"], "model_refs": [["llama-3.2-1b", "llama-3.1-8b"]],
            "cluster_ref": ["dgx-h100", "hgx-h200"], "cluster_refs": [["dgx-h100"]]}
"""Example values of the fields naming a preset (the schema's ``examples``: the page's docs, and the
values schemathesis tries first)."""
HIDDEN = {"as_json", "help", "list_only", "quiet", "debug"}
"""Parameters the endpoint sets itself (``--json``; ``--list`` is the profiles endpoint) or that shape the
output rather than the question (``--quiet``, ``--debug``)."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    command: click.Command
    fixed: tuple[str, ...]
    body: type[BaseModel]
    answer: Any  # the type of its 200 answer (None: a JSON object or list the schema does not detail)


def answers() -> dict[str, Any]:
    """Endpoint → the type whose JSON its command prints (the schema's 200 answer). ``presets`` (a
    listing built per kind) and ``launch``/``slurm`` and ``profile`` (several shapes, by target and
    workload) are left as any JSON object or list."""
    from parallelplan.cli.answers import NodeTopology, RLSummary, ServingAnswer
    from parallelplan.constraints import Assessment, ShardingComparison, TopologyReport
    from parallelplan.models.report import ModelReport
    from parallelplan.solver import Comparison, Ladder, PooledSolution, Profile, Solution

    return {"topology": TopologyReport | NodeTopology, "recommend": Solution | PooledSolution | RLSummary,
            "analyze-model": ModelReport, "sharding": ShardingComparison, "validate": Assessment,
            "estimate": Assessment, "optimize": Ladder, "profiles": list[Profile], "pareto": list[Solution],
            "compare": list[Comparison], "serve-plan": ServingAnswer}


def _field_type(param: click.Option) -> Any:
    kind = param.type
    if isinstance(kind, click.Choice):
        base: Any = Literal[tuple(str(c) for c in kind.choices)]
    elif isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
        base = Annotated[int if isinstance(kind, click.types.IntParamType) else float, Field(**_bounds(kind))]
    elif param.is_flag or isinstance(kind, click.types.BoolParamType):
        base = bool
    else:
        base = str
    return list[base] if param.multiple else base


def _bounds(kind: click.ParamType) -> dict[str, float]:
    """A click range's bounds as the schema's (``ge``/``gt``, ``le``/``lt``)."""
    if not isinstance(kind, click.types._NumberRangeBase):
        return {}
    out = {}
    if kind.min is not None:
        out["gt" if kind.min_open else "ge"] = kind.min
    if kind.max is not None:
        out["lt" if kind.max_open else "le"] = kind.max
    return out


def _offered(param: click.Parameter) -> bool:
    return (isinstance(param, click.Option) and param.name not in HIDDEN and param.expose_value
            and not isinstance(param.type, click.Path | click.File))


def _body(name: str, command: click.Command) -> type[BaseModel]:
    fields = {p.name: (_field_type(p), Field(..., examples=EXAMPLES.get(p.name))) if p.required
              else (_field_type(p) | None, Field(None, examples=EXAMPLES.get(p.name)))
              for p in command.params if _offered(p)}
    title = "".join(part.capitalize() for part in name.split("-")) + "Request"
    return create_model(title, __config__=ConfigDict(extra="forbid", strict=True), **fields)  # false is no number


def endpoints() -> dict[str, Endpoint]:
    out, typed = {}, answers()
    for name, (command_name, fixed) in ENDPOINTS.items():
        command = plan.commands[command_name]
        out[name] = Endpoint(name, command, fixed, _body(name, command), typed.get(name))
    return out


class BadField(ValueError):
    """A field no command line can carry."""


def arguments(endpoint: Endpoint, body: BaseModel) -> list[str]:
    """The command line of ``body``: each given field as its flag (a boolean flag as itself or its
    ``--no-`` form, a repeatable one once per item), then ``--json``; `BadField` for text no command
    line holds (a NUL character)."""
    args = [endpoint.command.name, *endpoint.fixed]
    params = {p.name: p for p in endpoint.command.params if _offered(p)}
    for name, value in body.model_dump(exclude_none=True).items():
        if any("\x00" in str(item) for item in (value if isinstance(value, list) else [value])):
            raise BadField(f"{name}: text may not contain a NUL character")
        param = params[name]
        if param.is_flag:
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
            continue
        for item in value if param.multiple else [value]:
            args += [param.opts[0], str(item)]
    return [*args, "--json"]
