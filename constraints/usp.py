"""USP (Fang & Zhao 2024, "USP: A Unified Sequence Parallelism Approach for Long Context Generative AI"):
context parallelism as DeepSpeed-Ulysses all-to-alls inside groups of u ranks and ring attention across the
cp/u groups (`Plan.cp_comm` ``a2a+p2p``; Megatron-Core ``--cp-comm-type a2a+p2p
--hierarchical-context-parallel-sizes u cp/u``).

u is derived, not searched (`ulysses_degree`): the largest divisor of cp below cp whose tp·u ranks stay
inside the fast (NVLink) domain and divide the attention and KV heads — the all-to-alls over NVLink, the
fewest ring steps over the network. Where none exists (u would be 1) the plan is pure ring attention and
``a2a+p2p`` is refused (rule ``usp_split``).
"""

from __future__ import annotations

import numpy as np

from parallelplan.constraints.collectives import fast_domain
from parallelplan.constraints.plan import Plan
from parallelplan.constraints.structure import model_facts
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec


def plan_ulysses_degree(model: ModelSpec, plan: Plan, cluster: ClusterSpec) -> int:
    """`ulysses_degree` of one plan on ``cluster`` (0: none)."""
    f = model_facts(model)
    return int(ulysses_degree(f.heads, f.kv_heads, np.array([plan.tp]), np.array([plan.cp]), fast_domain(cluster))[0])


def ulysses_degree(heads: int, kv_heads: int, tp: np.ndarray, cp: np.ndarray, domain: int) -> np.ndarray:
    """u per plan (module docstring), 0 where no u ≥ 2 qualifies; ``tp`` and ``cp`` are (n,) arrays."""
    tp, cp = np.asarray(tp, dtype=np.int64), np.asarray(cp, dtype=np.int64)
    best = np.zeros_like(cp)
    for u in range(2, int(cp.max(initial=1))):
        group = tp * u
        fits = (cp % u == 0) & (u < cp) & (group <= domain) & (heads % group == 0) & (kv_heads % group == 0)
        best = np.where(fits, u, best)
    return best
