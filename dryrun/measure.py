"""The full-size dry-run of one rank: the plan's process groups over PyTorch's fake backend (every rank but
this one is simulated; collectives allocate their real buffers and move nothing), the stage's tensors fake
(shapes and dtypes without storage), two training steps under PyTorch's ``MemTracker``; the peak over both, by
MemTracker's categories, is the measurement (the second step's: the first has no optimizer states yet).

One correction to MemTracker: DTensor's sharding propagation builds global-shape fake tensors to infer each
op's output layout (``ShardingPropagator._propagate_tensor_meta_non_cached``); on a GPU they live on no device
and cost nothing, but MemTracker's dispatch mode sees them as allocations, so they run untracked here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _TOTAL_KEY as _TOTAL
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.device_mesh import DeviceMesh
from torch.testing._internal.distributed.fake_pg import FakeStore  # the fake backend FSDPMemTracker's docs use

from parallelplan.dryrun.experts import ExpertParallel, split_experts
from parallelplan.dryrun.job import RankJob
from parallelplan.dryrun.optim import ShardedOptimizer
from parallelplan.dryrun.parallelize import device_meshes, loss_context, shard, tensor_parallel
from parallelplan.dryrun.stage import Stage, hf_model, to_fake

FSDP_SHARDINGS = ("zero2", "zero3", "fsdp", "hsdp")
STEPS = 2


@dataclass(frozen=True)
class Measurement:
    """What the rank's run measured: ``peak`` bytes by MemTracker's categories (on the CPU) or
    ``{"ALLOCATED": torch.cuda.max_memory_allocated()}`` (on a GPU, with ``reserved``, its allocator's
    ``max_memory_reserved``, and ``step_seconds``, the timed second step); ``out_of_memory`` the CUDA
    allocator's message when the step did not fit (``peak`` then holds what was allocated when it failed)."""

    peak: dict[str, int]
    device: str
    step_seconds: float | None = None
    reserved: int | None = None
    out_of_memory: str | None = None


def measure_rank(config: dict[str, Any], job: RankJob, progress: Callable[[str], None] = lambda _: None,
                 device: str = "cpu") -> Measurement:
    """One steady-state training step of ``job``'s rank at full size: fake tensors under MemTracker on the
    CPU (``device`` cpu), or real tensors on this machine's first GPU (``device`` cuda; the other ranks
    still simulated by the fake process group, so collectives move nothing and the step time is the rank's
    compute)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", rank=0, world_size=job.world, store=FakeStore())
    try:
        meshes = device_meshes("cuda" if device == "cuda" else "cpu", job)  # sliced outside FakeTensorMode
        compute = getattr(torch, job.param_dtype)
        fsdp = job.sharding in FSDP_SHARDINGS
        weights = torch.float32 if fsdp and job.master_weights else compute
        progress(f"building stage {job.stage} of {job.pp}: {job.layer_count} layers at full width")
        stage = Stage(hf_model(config, job, weights), job)
        if job.ep > 1:
            split_experts(stage, meshes["ep"].get_group(), load=job.expert_load)
        if device == "cuda":
            return _on_gpu(stage, job, meshes, compute, config, progress)
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        to_fake(stage, mode)
        _parallelize(stage, job, meshes, compute)
        with mode:
            optimizer = _optimizer(stage, job, fsdp)
            tracker = _GlobalPeakTracker()
            if isinstance(optimizer, ShardedOptimizer):
                tracker.track_external(stage, optimizer.held, optimizer.inner)
            else:
                tracker.track_external(stage, optimizer)
            with _untracked_sharding_propagation(), tracker:
                for step in range(STEPS):
                    # the first step only creates the optimizer states: one forward of each chunk does that
                    chunks = job.forward_chunks if step == STEPS - 1 else _each_chunk(job)
                    progress(f"step {step + 1} of {STEPS}: {len(chunks)} forward(s) of {job.micro_batch} x {job.seq_len} tokens")
                    _train_step(stage, job, optimizer, compute, config, chunks)
            (device_peak,) = tracker.get_tracker_snapshot("peak").values()
        peak = {str(kind).rsplit(".", 1)[-1]: int(value) for kind, value in device_peak.items() if str(kind) != "Total"}
        return Measurement(peak=peak, device="cpu (fake tensors, MemTracker)")
    finally:
        dist.destroy_process_group()


def _parallelize(stage: Stage, job: RankJob, meshes: dict[str, DeviceMesh], compute: torch.dtype) -> None:
    if job.tp > 1:
        tensor_parallel(stage, meshes["tp"], job.sequence_parallel)
    if job.sharding in FSDP_SHARDINGS:
        shard(stage, meshes, job, compute)


def _on_gpu(stage: Stage, job: RankJob, meshes: dict[str, DeviceMesh], compute: torch.dtype, config: dict[str, Any],
            progress: Callable[[str], None]) -> Measurement:
    """The rank on ``cuda:0``: split and sharded on the meta device, then given storage there (FSDP2's
    meta-device initialisation), parameters drawn from N(0, 0.02); the second step timed, and the CUDA
    allocator's peaks over it."""
    name = f"cuda: {torch.cuda.get_device_name(0)}"
    _parallelize(stage, job, meshes, compute)
    stage.to_empty(device="cuda")
    with torch.no_grad():
        for param in stage.parameters():
            (param.to_local() if hasattr(param, "to_local") else param).normal_(0.0, 0.02)
        for buffer in stage.buffers():
            buffer.zero_()
    optimizer = _optimizer(stage, job, job.sharding in FSDP_SHARDINGS)
    try:
        progress(f"step 1 of {STEPS}: one forward of each chunk (creates the optimizer states)")
        _train_step(stage, job, optimizer, compute, config, _each_chunk(job))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        progress(f"step 2 of {STEPS}: {job.in_flight} forward(s) of {job.micro_batch} x {job.seq_len} tokens, timed")
        started = time.perf_counter()
        _train_step(stage, job, optimizer, compute, config, job.forward_chunks)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    except torch.OutOfMemoryError as err:
        return Measurement(peak={"ALLOCATED": int(torch.cuda.max_memory_allocated())}, device=name,
                           out_of_memory=str(err).strip().splitlines()[0])
    return Measurement(peak={"ALLOCATED": int(torch.cuda.max_memory_allocated())}, device=name, step_seconds=seconds,
                       reserved=int(torch.cuda.max_memory_reserved()))


class _GlobalPeakTracker(MemTracker):
    """MemTracker keeping the process-wide peak only: its per-module peaks, which the dry-run does not
    report, cost a pass over every tracked module at every operator (40% of a 70B stage's run), and it
    would refuse a module's second forward before its backward."""

    def _pre_fw_hook(self, module: torch.nn.Module, inputs: Any) -> None:
        """A module run forward again before its backward (the next in-flight micro-batch, another chunk's
        turn) is tracked already: MemTracker would take it for the next iteration and refuse."""
        if module in self.memory_tracking and not self._mod_tracker.is_bw:
            return
        super()._pre_fw_hook(module, inputs)

    def _update_peak_stats(self, peak_state) -> None:  # type: ignore[override]
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot[_TOTAL]:
                self._peak_mem[device] = snapshot[_TOTAL]
                self._peak_mem_snap[device] = dict(snapshot)


def _optimizer(stage: Stage, job: RankJob, fsdp: bool) -> Any:
    params = [p for p in stage.parameters() if p.requires_grad]
    if fsdp:  # FSDP2 shards the parameters themselves: the optimizer steps the local shards
        return (torch.optim.AdamW(params, lr=1e-4, foreach=True) if job.optimizer == "adamw"
                else torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=True))
    experts = {id(p) for module in stage.modules() if isinstance(module, ExpertParallel) for p in module.parameters()}
    # ZeRO-1 shards each parameter's states over the ranks holding it: dp, or an expert's dp / ep
    shards = [(job.dp // job.ep if id(p) in experts else job.dp) if job.sharding == "zero1" else 1 for p in params]
    return ShardedOptimizer(params, shards=shards, master=job.master_weights,
                            optimizer=job.optimizer, persistent_grads=job.persistent_grads)


def _each_chunk(job: RankJob) -> tuple[int, ...]:
    return tuple(range(len(job.chunks)))


def _train_step(stage: Stage, job: RankJob, optimizer: Any, compute: torch.dtype, config: dict[str, Any],
                forward_chunks: tuple[int, ...]) -> None:
    """A forward through each of ``forward_chunks`` (the stage's in-flight ones: the schedule's warm-up), then
    their backwards, then the optimizer step. A forward that does not end in the loss backpropagates a
    received gradient. Inputs live where the stage's parameters do."""
    shape = (job.micro_batch, job.seq_len)
    device = next(stage.parameters()).device
    last_chunk = len(job.chunks) - 1
    with loss_context(job):
        outputs = []
        for chunk in forward_chunks:
            if job.first and chunk == 0:
                inputs = torch.randint(0, config["vocab_size"], shape, device=device)
            else:
                received = (job.micro_batch, job.seq_len // (job.tp if job.sequence_parallel else 1), config["hidden_size"])
                inputs = torch.empty(*received, dtype=compute, device=device, requires_grad=True)
            if job.last and chunk == last_chunk:
                labels = torch.randint(0, config["vocab_size"], shape, device=device)
                outputs.append((True, stage.loss(inputs, labels, chunk)))
            else:
                outputs.append((False, stage(inputs, chunk)))
        for is_loss, out in outputs:
            out.backward() if is_loss else out.backward(torch.empty_like(out))
        del outputs, out
    optimizer.step()
    if isinstance(optimizer, ShardedOptimizer):
        optimizer.zero_grad()
    else:
        optimizer.zero_grad(set_to_none=not job.persistent_grads)


@contextlib.contextmanager
def _untracked_sharding_propagation() -> Iterator[None]:
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    from torch.utils._python_dispatch import _disable_current_modes

    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def untracked(self, *args, **kwargs):
        with _disable_current_modes():
            return original(self, *args, **kwargs)

    ShardingPropagator._propagate_tensor_meta_non_cached = untracked
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original


def mechanism(job: RankJob) -> str:
    """In words, how PyTorch runs ``job`` (`dryrun.job`'s mapping)."""
    ranges = ", ".join(f"{start}-{start + count - 1}" for start, count in job.chunks)
    if len(job.chunks) == 1:
        parts = [f"stage {job.stage} of {job.pp} (layers {ranges}), {job.in_flight} micro-batch(es) in flight"]
    else:
        parts = [f"stage {job.stage} of {job.pp}, {len(job.chunks)} interleaved chunks (layers {ranges}), "
                 f"{job.in_flight} chunk forwards in flight"]
    if job.tp > 1:
        parts.append(f"DTensor tensor parallel over {job.tp} ranks (vocab-parallel embedding and loss"
                     + (", sequence parallel)" if job.sequence_parallel else ")"))
    if job.sharding in FSDP_SHARDINGS:
        how = {"zero2": "FSDP2 without resharding after forward (ZeRO-2)", "hsdp": f"FSDP2 HSDP, shards of {job.shard_size}"}
        parts.append(how.get(job.sharding, "FSDP2 fully_shard per layer") + f" over {job.dp} ranks"
                     + (", fp32 master shards with bf16 compute" if job.master_weights else ""))
    else:
        parts.append(("16-bit weights, fp32 gradient buffer, fp32 master and optimizer states" if job.master_weights
                      else "weights, gradients and optimizer states in the weight dtype")
                     + (f" of 1/{job.dp} of each parameter (ZeRO-1)" if job.sharding == "zero1" else ""))
    if job.ep > 1:
        parts.append(f"experts over {job.ep} ranks, tokens by all-to-all with balanced counts"
                     + (f" ({job.expert_load:g}x the share on this rank)" if job.expert_load != 1 else ""))
    if job.recompute_layers:
        parts.append(f"activation checkpointing on {job.recompute_layers} layer(s)")
    if job.op_recompute:
        parts.append("torchtitan's op-level selective checkpointing on every layer")
    return "; ".join(parts)
