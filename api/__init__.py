"""`parallelplan`: the provably best parallelism plan for training or serving a transformer on a GPU
cluster — the public API in one place.

This folder of the repository is installed as the namespace root; every other top-level folder is one
layer below it (``models/`` → `parallelplan.models`, ``hardware/`` → `parallelplan.hardware`,
``constraints/``, ``solver/``, ``emitters/``, ``cli/``, ``common/``: the ``package-dir`` mapping in
``pyproject.toml``), so the only top-level name the distribution installs is ``parallelplan`` and a user's
own ``models`` or ``cli`` package cannot collide with ours. Docstrings inside the package name modules
relative to it (`solver.search` is `parallelplan.solver.search`).

    from parallelplan import load_model, load_cluster, Workload, solve, emit

    sol = solve(load_model("llama-3.1-70b"), load_cluster("dgx-h100", nodes=8),
                Workload(kind="pretrain", seq_len=8192, global_batch_size=512))
    files = emit(sol, "megatron")

Every name below is imported on first use (the `plan` command imports this package first, and must not
pay for OR-Tools or the emitters to print its help); ``python -m parallelplan`` runs the `plan` command.
"""

from parallelplan.common.lazy import lazy_exports

__version__ = "0.1.0"  # the distribution's version too (pyproject.toml reads it from here)

_EXPORTS = {
    **dict.fromkeys(("ModelSpec", "ModelError", "load_model", "list_presets"), "parallelplan.models"),
    **dict.fromkeys(("ClusterSpec", "GPUSpec", "NodeSpec", "HardwareError", "load_cluster", "list_clusters",
                     "load_gpu", "detect_cluster", "detect_node"), "parallelplan.hardware"),
    **dict.fromkeys(("Plan", "Workload", "Peft", "Rollout", "Estimate", "PlanError", "Violation", "estimate", "check", "evaluate",
                     "assess", "compare_sharding", "describe_topology", "calibrate", "read_runs", "serve", "Traffic",
                     "ServingEstimate"),
                    "parallelplan.constraints"),
    **dict.fromkeys(("Solution", "Infeasible", "SolverInputError", "solve", "pareto", "compare", "place", "Role", "Placement", "solve_pools",
                     "cheapest", "profile", "list_profiles", "solve_rl", "RLSolution", "optimize", "Ladder"),
                    "parallelplan.solver"),
    **dict.fromkeys(("EmitError", "emit", "list_targets", "read_config", "rl_constraints"), "parallelplan.emitters"),
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["__version__", *sorted(_EXPORTS)]
