"""`estimate(model, cluster, plan, workload) -> Estimate`: memory and step time of one plan, with notes
that say in words why each term is what it is. It is `evaluate` on a batch of one, for any plan the cost
model can price: it raises `PlanError` for the rules in `constraints.rules.UNPRICEABLE` (use `check` for
the full list of a plan's problems)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints.arrays import PlanArrays
from parallelplan.constraints.efficiency import Efficiency
from parallelplan.constraints.errors import PlanError
from parallelplan.constraints.evaluate import Evaluation, evaluate
from parallelplan.constraints.memory import micro_batches
from parallelplan.constraints.peft import workload_state_recipe
from parallelplan.constraints.plan import Plan, Workload
from parallelplan.constraints.rl import multi_role
from parallelplan.constraints.rules import UNPRICEABLE, structural_violations
from parallelplan.constraints.runtime import RuntimeAllowance
from parallelplan.constraints.states import StateRecipe
from parallelplan.constraints.uncertainty import Verdict, memory_range, step_interval, verdict
from parallelplan.hardware import ClusterSpec
from parallelplan.models import ModelSpec

GIB = 2**30


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class MemoryBreakdown(_Frozen):
    """Bytes on one GPU of the most loaded pipeline stage (``stage``, 0-based), at its peak; ``low`` and
    ``high`` bound what the run may measure (`constraints.uncertainty`: the activations' deviation from
    MemTracker on the model's class, the runtime allowance between half and twice its value)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    kv_cache: int
    overhead: int
    total: int
    stage: int
    in_flight_microbatches: float
    host: int
    """Bytes a GPU keeps in host memory (offloaded activations, optimizer states, parameters), the busiest stage's."""
    usable: int
    low: int
    high: int

    @property
    def headroom(self) -> int:
        return self.usable - self.total

    @property
    def verdict(self) -> Verdict:
        """``yes`` when even ``high`` fits the GPU, ``no`` when even ``low`` does not, else ``at risk``."""
        return verdict(self.low, self.high, self.usable)

    @property
    def tight(self) -> bool:
        """Fits as estimated, but not at the top of the range: the runtime allowance (CUDA context, NCCL
        buffers, fragmentation; each figure one reported measurement, ``data/runtime.json``) or the
        tensors' deviation could take it over."""
        return self.total <= self.usable and self.verdict == "at risk"


class TimeBreakdown(_Frozen):
    """Seconds per optimizer step, exposed after overlap; they sum to ``Estimate.step_time_s``."""

    compute: float
    tp_comm: float
    cp_comm: float
    ep_comm: float
    dp_comm: float
    pp_comm: float
    offload: float
    """Activation copies to and from host memory that the passes' compute does not hide (``offload_activations``)."""
    bubble: float
    optimizer: float
    decode: float
    """Generating ``Workload.output_len`` tokens after the prefill (`constraints.generation`)."""


class Estimate(_Frozen):
    """What a plan costs. ``mfu``: model FLOPs per step (training: forward + backward, recompute not
    counted; `models.flops` conventions) over step time, GPUs and the GPU's bf16 dense peak, whatever the
    plan's precision (`GPUSpec.mfu_peak_flops`); ``precision_peak_utilization``: the same over the dense
    peak of the plan's own precision (twice the bf16 peak for fp8 on Hopper, so half the MFU)."""

    memory: MemoryBreakdown
    fits: bool
    """The point estimate of memory fits the GPU; ``fit`` says it against the range."""
    fit: Verdict
    step_time_s: float
    step_time_interval_s: tuple[float, float]
    """The 80% prediction interval of the step time: the spread of the model's leave-one-source-out errors
    on published runs of the model's class (`constraints.uncertainty`)."""
    time: TimeBreakdown
    tokens_per_s: float
    model_tflops_per_gpu: float
    mfu: float
    precision_peak_utilization: float
    state_bytes_per_param: float
    """Bytes of weights, gradients, master weights and optimizer states per parameter before sharding (the
    plan's recipe: 18 for Megatron/DeepSpeed mixed-precision AdamW, 16 for FSDP; `states.state_recipe`)."""
    state_recipe: str
    """The same in words, term by term."""
    dp_comm_bytes: float
    """Bytes one GPU sends per step in data-parallel and sharding collectives (`StepTimes.dp_bytes`)."""
    notes: tuple[str, ...]


def estimate(
    model: ModelSpec,
    cluster: ClusterSpec,
    plan: Plan,
    workload: Workload,
    *,
    efficiency: Efficiency | None = None,
    runtime: RuntimeAllowance | None = None,
) -> Estimate:
    if multi_role(workload):
        raise PlanError(multi_role(workload))
    fatal = [v for v in structural_violations(model, cluster, plan, workload) if v.rule in UNPRICEABLE]
    if fatal:
        raise PlanError("; ".join(f"{v.message}: {v.fix}" for v in fatal))
    arrays = PlanArrays.from_plans([plan])
    e = evaluate(model, cluster, workload, arrays, efficiency=efficiency, runtime=runtime)
    recipe = workload_state_recipe(model, plan, workload)
    m, t = e.memory, e.time
    low, high = memory_range(float(m.total[0] - m.overhead[0]), float(m.activations[0] + m.kv_cache[0]), float(m.overhead[0]),
                             model.is_moe)
    memory = MemoryBreakdown(
        weights=int(m.weights[0]), gradients=int(m.gradients[0]), optimizer=int(m.optimizer[0]),
        activations=int(m.activations[0]), kv_cache=int(m.kv_cache[0]), overhead=int(m.overhead[0]),
        total=int(m.total[0]), stage=int(m.stage[0]), in_flight_microbatches=float(m.in_flight[0]), host=int(m.host[0]),
        usable=int(e.usable_memory), low=int(low), high=int(high),
    )
    time = TimeBreakdown(
        compute=float(t.compute[0]), tp_comm=float(t.tp_comm[0]), cp_comm=float(t.cp_comm[0]),
        ep_comm=float(t.ep_comm[0]), dp_comm=float(t.dp_comm[0]), pp_comm=float(t.pp_comm[0]),
        offload=float(t.offload[0]), bubble=float(t.bubble[0]), optimizer=float(t.optimizer[0]), decode=float(t.decode[0]),
    )
    return Estimate(
        memory=memory,
        fits=bool(e.fits[0]),
        fit=memory.verdict,
        step_time_s=float(t.step[0]),
        step_time_interval_s=step_interval(float(t.step[0]), model.is_moe),
        time=time,
        tokens_per_s=float(e.tokens_per_s[0]),
        model_tflops_per_gpu=float(e.model_tflops_per_gpu[0]),
        mfu=float(e.mfu[0]),
        precision_peak_utilization=float(e.precision_peak_utilization[0]),
        state_bytes_per_param=recipe.bytes_per_param,
        state_recipe=str(recipe),
        dp_comm_bytes=float(t.dp_bytes[0]),
        notes=tuple(_notes(model, cluster, plan, workload, e, arrays, memory, time, recipe)),
    )


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


def _notes(model: ModelSpec, cluster: ClusterSpec, plan: Plan, workload: Workload, e: Evaluation,
           arrays: PlanArrays, mem: MemoryBreakdown, time: TimeBreakdown, recipe: StateRecipe) -> list[str]:
    notes = []
    step = e.time.step[0]
    m = int(micro_batches(arrays, workload)[0])
    if plan.pp > 1:
        where = {0: "the first stage (it also holds the embedding and the most micro-batches in flight)",
                 plan.pp - 1: "the last stage (it also holds the LM head and the logits)"}.get(mem.stage, "a middle stage")
        notes.append(f"Most loaded GPU: pipeline stage {mem.stage} of {plan.pp}, {where}.")
    states = mem.weights + mem.gradients + mem.optimizer
    group = plan.shard_group
    shard = f" ({plan.sharding} over {group} ranks)" if plan.sharding != "none" else " (not sharded: ZeRO-1/FSDP would divide them)"
    notes.append(f"Model states {states / GIB:.1f} GiB: weights {mem.weights / GIB:.1f}, gradients "
                 f"{mem.gradients / GIB:.1f}, optimizer and master weights {mem.optimizer / GIB:.1f}{shard}; "
                 f"{recipe} before sharding.")
    if workload.training:
        notes.append(f"Activations {mem.activations / GIB:.1f} GiB for {mem.in_flight_microbatches:g} micro-batch(es) "
                     f"in flight of {plan.micro_batch_size} x {workload.seq_len} tokens with recompute '{plan.recompute}'.")
    if mem.host:
        node = cluster.node
        capacity = f" of the node's {node.host_memory_bytes / GIB:,.0f} GiB" if node.host_memory_bytes else \
            " (the cluster does not give its host memory: not checked)"
        notes.append(f"Host memory {mem.host / GIB:.1f} GiB per GPU, {mem.host * node.gpus_per_node / GIB:,.0f} GiB per "
                     f"node{capacity} (offloaded activations, optimizer states and parameters).")
    if mem.kv_cache:
        notes.append(f"KV cache {mem.kv_cache / GIB:.1f} GiB for {workload.global_batch_size} sequences of {workload.seq_len} tokens.")
    notes.append(f"Runtime allowance {mem.overhead / GIB:.1f} GiB: CUDA context, NCCL buffers, allocator fragmentation.")
    if not e.fits[0]:
        over = (mem.total - mem.usable) / GIB
        notes.append(f"Does not fit: {mem.total / GIB:.1f} GiB needed, {mem.usable / GIB:.1f} GiB on the GPU "
                     f"({over:.1f} GiB over). Options: recompute, shard optimizer states (zero1/fsdp), more "
                     "tensor or pipeline parallelism, a smaller micro-batch, or an 8-bit optimizer.")
    if not workload.training and workload.output_len:
        notes.append(f"Generation: the prefill of {workload.global_batch_size} prompts of {workload.seq_len} tokens, "
                     f"then {time.decode:.3f} s ({_pct(time.decode, step)}) decoding {workload.output_len} tokens of each "
                     + ("(every sequence of a replica at once" if workload.max_concurrency is None else
                        f"(a replica's sequences in waves of {workload.max_concurrency}")
                     + ", its KV cache held to the end); tokens/s counts generated tokens.")
    elif workload.kind == "score":
        notes.append("Scoring: one forward without gradients over the full sequences, every position's log-probability, "
                     "no KV cache kept (an RL step's reference, reward or critic forward, or an evaluation).")
    elif not workload.training:
        notes.append("Serving: the step is one forward pass over the batch's contexts (prefill); tokens/s counts "
                     "the context tokens processed, not generated tokens.")
    if workload.example_len is not None:
        m, seq = workload.example_len, workload.seq_len
        examples_per_s = float(e.tokens_per_s[0]) / m
        notes.append(f"Data: examples of {m} tokens, " + (
            f"packed {seq / m:.1f} to a sequence of {seq}, each attending within itself" if workload.packing else
            f"each padded to {seq} ({_pct(seq - m, seq)} of the computed tokens are padding)")
            + f"; tokens/s counts data tokens, {examples_per_s:,.0f} examples/s.")
    own_peak = "" if e.peak_flops[0] == cluster.gpu.mfu_peak_flops else \
        f"; {100 * e.precision_peak_utilization[0]:.1f}% of the {plan.precision} dense peak, {e.peak_flops[0] / 1e12:.0f} TFLOP/s"
    notes.append(f"Step {step:.3f} s: compute {time.compute:.3f} s ({_pct(time.compute, step)}), MFU "
                 f"{100 * e.mfu[0]:.1f}% of the bf16 dense peak, {cluster.gpu.mfu_peak_flops / 1e12:.0f} TFLOP/s (the "
                 f"convention for every precision{own_peak}), counting model FLOPs without recompute.")
    if time.bubble > 0:
        notes.append(f"Pipeline bubble {time.bubble:.3f} s ({_pct(time.bubble, step)}) with {m} micro-batches over "
                     f"{plan.pp} stages and {plan.vpp} virtual stage(s): more micro-batches, interleaving (vpp) or "
                     "fewer stages shrink it.")
    if plan.pp > 1:
        notes.append(f"Slowest pipeline stage per micro-batch: stage {int(e.time.critical_stage[0])}; it sets the "
                     "pace of the pipeline, so moving layers off it (layers_per_stage) shortens the step.")
    communication = [
        (time.tp_comm, plan.tp, "Tensor-parallel communication",
         "keep TP inside the NVLink domain and enable TP communication overlap",
         "Tensor-parallel collectives are hidden behind the GEMMs (tp_comm_overlap)."),
        (time.cp_comm, plan.cp, "Context-parallel ring exchange", "longer sequences per rank hide it",
         "The context-parallel ring exchange is hidden behind attention.") if plan.cp_comm == "p2p" else
        (time.cp_comm, plan.cp, "Context-parallel all-to-alls (Ulysses)",
         "ring attention (cp_comm p2p) hides its exchange behind attention; a CP group inside the NVLink domain is faster",
         None),
        (time.ep_comm, plan.ep, "Expert all-to-all", "an expert-parallel group inside the NVLink domain is faster",
         "Expert all-to-all is hidden behind the MoE layers' other compute (attention, router, shared experts)."),
        (time.pp_comm, plan.pp, "Pipeline sends", "fewer stages or a larger micro-batch amortise them", None),
        (time.offload, 2 if plan.offload_activations else 1, "Activation copies to and from host memory",
         "recompute stores less to copy; longer sequences give each copy more compute to hide behind",
         f"Activations offloaded to host memory ({mem.host / GIB:.1f} GiB per GPU there), their copies hidden "
         "behind the passes' compute."),
        (time.dp_comm, plan.dp * plan.cp, "Data-parallel communication",
         "gradient-reduction overlap and larger batches per step hide more of it",
         "Data-parallel gradient reduction is hidden behind backward."),
    ]
    if plan.tp > 1 and plan.tp_comm_overlap and not plan.sequence_parallel:
        notes.append("tp_comm_overlap needs sequence parallelism (Megatron-Core): without it the TP all-reduces "
                     "are not overlapped; enable sequence_parallel.")
    for seconds, degree, what, advice, hidden in communication:
        if seconds > 0:
            notes.append(f"{what} exposed: {seconds:.3f} s ({_pct(seconds, step)}); {advice}.")
        elif degree > 1 and hidden:
            notes.append(hidden)
    notes.append(f"Optimizer update {time.optimizer:.3f} s.")
    return notes
