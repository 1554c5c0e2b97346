"""`dry_run`: the plan's busiest rank run for real in PyTorch — the `transformers` architecture at its real
widths, sharded as the plan shards it, one training step measured by PyTorch's MemTracker — next to the
cost model's estimate — and `dry_run_small`: the plan's process groups built for real (one gloo process per
rank) on a reduced copy of the model, its loss and gradients checked against the unsharded model's. Needs
the ``dryrun`` extra (torch, transformers)."""

from parallelplan.common.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("dry_run", "dry_run_small", "PlanRejected"), "parallelplan.dryrun.run"),
    **dict.fromkeys(("SmallRunReport",), "parallelplan.dryrun.small"),
    **dict.fromkeys(("DryRunReport", "Component"), "parallelplan.dryrun.report"),
    **dict.fromkeys(("DryRunError",), "parallelplan.dryrun.errors"),
    **dict.fromkeys(("RankJob", "rank_job"), "parallelplan.dryrun.job"),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
