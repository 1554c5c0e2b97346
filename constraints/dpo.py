"""DPO (Rafailov et al. 2023, "Direct Preference Optimization"): what preference tuning adds to a
fine-tune's cost, as TRL's ``DPOTrainer`` runs it (the implementation most users run).

- Chosen and rejected sequences of a micro-batch run through the policy as one batch
  (``concatenated_forward``): 2·micro-batch sequences (`Workload.sequences_per_example`), whose
  activations, logits and loss peak the cost model prices like any other batch; ``global_batch_size``
  counts examples.
- The reference model is a frozen copy of the policy's initial weights on the same GPUs, in the compute
  dtype, sharded like the policy's weights when those are (TRL prepares it with the policy's ZeRO-3
  config); with a peft adapter there is none: the policy with its adapters disabled is the reference
  (``null_ref_context``).
- Each micro-batch, the reference's forward (no gradients) scores both sequences before the policy's:
  the forward's compute and its exposed communication (TP, CP, EP, pipeline sends, the FSDP gather) once
  more, each in its own term of the step (`constraints.timing`; with LoRA priced with the adapters the
  disabled reference skips, a few % of a forward). It keeps no activations: one layer's working set and
  the logits at a time, which the policy's own forward peak (all its kept activations and the same
  logits) exceeds, so it adds no memory peak of its own.
"""

from __future__ import annotations

import numpy as np

from parallelplan.constraints.activations import activation_bytes
from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.plan import Workload
from parallelplan.constraints.stages import StageParams
from parallelplan.constraints.states import ShardDivisors


def has_reference_copy(w: Workload) -> bool:
    """Whether the reference model is a copy of its own (DPO without peft)."""
    return w.algorithm == "dpo" and w.peft is None


def reference_weight_bytes(p: PlanArrays, params: StageParams, div: ShardDivisors) -> np.ndarray:
    """Bytes of the frozen reference copy on one GPU of each rank class, (n, C): the stage's parameters in
    the compute dtype, over the weights' shard group."""
    col = lambda a: np.asarray(a, dtype=float)[:, None]  # noqa: E731
    b = col(activation_bytes(p))
    return b * (params.dense / col(div.weights) + params.expert / col(div.expert_weights))

