"""The small-scale run: the plan's process groups built for real — one process per rank over gloo, as
``torchrun`` would launch them — on a reduced copy of the model (the same architecture and the same head,
KV-head and expert counts, so the same divisibility; 8-wide heads, two layers per stage, a 256-token
vocabulary, fp32), one training step, checked against the unsharded model on the whole batch: the loss
and every parameter's gradient must agree to within fp32 round-off (`TOLERANCE`). A wrong group, split or
shape shows up as a disagreement or as the error PyTorch raises.

What each rank runs is `dryrun.job`'s mapping (DTensor TP, FSDP2, the pipeline stage), plus:
- data parallelism without sharding: each replica's gradients averaged by all-reduce (DDP's arithmetic);
- a pipeline: each stage's activations sent to the next rank and its gradients back by point-to-point
  (GPipe's order: all micro-batches forward, then backward);
- expert parallelism: `dryrun.experts` over groups of ep data-parallel ranks, the experts' gradients averaged
  over the expert-data-parallel ranks (dp / ep) and divided by the ep ranks whose tokens they saw.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from parallelplan.constraints import Plan, Workload
from parallelplan.dryrun.errors import DryRunError
from parallelplan.dryrun.job import RankJob, stage_job
from parallelplan.models import load_model

HEAD_DIM = 8
VOCAB = 256
SEQ_LEN = 16
SEQUENCES_PER_REPLICA = 2
TOLERANCE = 1e-4
"""Largest |sharded − unsharded| / max |unsharded| over a gradient's elements (and the loss's relative
difference) that passes: fp32 sums in another order differ by ~1e-6 here; a wrong split differs by O(1)."""


class RankResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    rank: int
    stage: int
    loss: float | None
    reference_loss: float
    gradient_error: float
    worst_parameter: str
    parameters: int


class SmallRunReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    plan: Plan
    world: int
    config: dict[str, Any]
    ranks: tuple[RankResult, ...]
    loss: float
    reference_loss: float
    loss_error: float
    gradient_error: float
    worst_parameter: str
    passed: bool
    seconds: float


def reduced_config(config: dict[str, Any], plan: Plan, layers: int) -> dict[str, Any]:
    """``config`` narrowed: same model type and head, KV-head and expert counts; ``layers`` layers."""
    heads = config.get("num_attention_heads", 1)
    hidden = heads * HEAD_DIM
    out = {**config, "hidden_size": hidden, "head_dim": HEAD_DIM, "intermediate_size": 2 * hidden,
           "num_hidden_layers": layers, "vocab_size": VOCAB * plan.tp, "max_position_embeddings": 4 * SEQ_LEN,
           "tie_word_embeddings": config.get("tie_word_embeddings", False) and plan.pp == 1}
    for key in ("layer_types", "mlp_only_layers"):
        if isinstance(out.get(key), list):
            out[key] = out[key][:layers] if key == "layer_types" else [i for i in out[key] if i < layers]
    if "moe_intermediate_size" in out:
        out["moe_intermediate_size"] = HEAD_DIM * 2
    for key in ("num_experts_per_tok",):
        if key in out:
            out[key] = min(out[key], 2)
    if config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts"):
        for key in ("num_experts", "num_local_experts", "n_routed_experts"):
            if key in out:
                out[key] = max(2 * plan.ep, 4)
    return out


def run_small(config: dict[str, Any], plan: Plan, *, time_limit_s: float = 300) -> SmallRunReport:
    """Launch tp · pp · dp gloo processes running ``plan`` on ``reduced_config(config)``, as torchrun does
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in each one's environment); their results
    compared with the unsharded model's (see the module docstring)."""
    layers = sum(plan.layers_per_stage) if plan.layers_per_stage else 2 * plan.pp
    reduced = reduced_config(config, plan, layers)
    small = load_model(reduced)
    work = Workload(kind="pretrain", seq_len=SEQ_LEN, global_batch_size=SEQUENCES_PER_REPLICA * plan.dp)
    float_plan = plan.model_copy(update={"precision": "fp32"})
    jobs = [stage_job(small, float_plan, work, stage) for stage in range(plan.pp)]
    world = plan.tp * plan.pp * plan.dp
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "results.json"
        spec = Path(folder) / "spec.json"
        spec.write_text(json.dumps({"config": reduced, "jobs": [job.__dict__ for job in jobs], "out": str(out)}))
        _launch(world, spec, time_limit_s)
        ranks = tuple(RankResult(**r) for r in json.loads(out.read_text()))
    last = [r for r in ranks if r.loss is not None]
    loss, reference = last[0].loss, last[0].reference_loss
    loss_error = abs(loss - reference) / abs(reference)
    worst = max(ranks, key=lambda r: r.gradient_error)
    return SmallRunReport(plan=plan, world=world, config=reduced, ranks=ranks, loss=loss, reference_loss=reference,
                          loss_error=loss_error, gradient_error=worst.gradient_error, worst_parameter=worst.worst_parameter,
                          passed=loss_error <= TOLERANCE and worst.gradient_error <= TOLERANCE,
                          seconds=time.perf_counter() - started)


def _launch(world: int, spec: Path, time_limit_s: float) -> None:
    """One ``python -m parallelplan.dryrun.small SPEC`` per rank, torchrun's environment in each."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "parallelplan.dryrun.small", str(spec)],
                                  env={**base, "RANK": str(rank)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for rank in range(world)]
    deadline = time.monotonic() + time_limit_s
    try:
        for rank, process in enumerate(processes):
            try:
                _, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise DryRunError(f"the small-scale run passed its time limit of {time_limit_s:g} s") from None
            if process.returncode != 0:
                lines = [line for line in stderr.strip().splitlines() if line.strip()]
                raise DryRunError(f"rank {rank} of the small-scale run failed: {lines[-1] if lines else process.returncode}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def _worker(spec_path: str) -> None:
    import copy

    import torch
    import torch.distributed as dist

    from parallelplan.dryrun.experts import split_experts
    from parallelplan.dryrun.parallelize import device_meshes, shard, tensor_parallel
    from parallelplan.dryrun.stage import Stage, hf_model

    spec = json.loads(Path(spec_path).read_text())
    config, jobs, out = spec["config"], [RankJob(**job) for job in spec["jobs"]], spec["out"]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    pp, dp, tp, ep = jobs[0].pp, jobs[0].dp, jobs[0].tp, jobs[0].ep
    meshes = device_meshes("cpu", jobs[0], pipeline=pp)
    stage_index, replica = rank // (dp * tp), (rank // tp) % dp
    job = jobs[stage_index]
    whole = RankJob(**{**job.__dict__, "stage": 0, "pp": 1, "chunks": ((0, sum(j.layer_count for j in jobs)),),
                       "forward_chunks": (0,), "recompute_layers": 0,
                       "recompute_modules": (), "op_recompute": False, "tp": 1, "sequence_parallel": False})

    torch.manual_seed(0)
    model = hf_model(config, whole, torch.float32, device="cpu")
    reference = Stage(copy.deepcopy(model), whole)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab_size"], (SEQUENCES_PER_REPLICA * dp, SEQ_LEN), generator=generator)
    labels = torch.randint(0, config["vocab_size"], ids.shape, generator=generator)
    reference_loss = reference.loss(ids, labels)
    reference_loss.backward()
    reference_grads = {name: p.grad for name, p in reference.named_parameters()}

    stage = Stage(model, job)
    named_in_whole = {id(p): name for name, p in Stage(model, whole).named_parameters()}
    whole_name = {name: named_in_whole[id(p)] for name, p in stage.named_parameters()}
    experts: dict[str, slice] = {}
    if ep > 1:
        experts = split_experts(stage, meshes["ep"].get_group())
    if tp > 1:
        tensor_parallel(stage, meshes["tp"], job.sequence_parallel)
    fsdp = job.sharding in ("zero2", "zero3", "fsdp", "hsdp")
    if fsdp:
        shard(stage, meshes, job, torch.float32)

    rows = slice(replica * SEQUENCES_PER_REPLICA, (replica + 1) * SEQUENCES_PER_REPLICA)
    loss = _pipeline_step(stage, job, ids[rows], labels[rows], rank, dp * tp, config["hidden_size"])
    if loss is not None:
        dist.all_reduce(loss, group=meshes["dp"].get_group())
        loss = loss / dp
    if not fsdp and dp > 1:
        for name, p in stage.named_parameters():
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            if name in experts:  # the experts' data-parallel group: ranks holding the same experts
                if dp // ep > 1:
                    dist.all_reduce(grad, group=meshes["edp"].get_group())
                grad /= dp
            else:
                dist.all_reduce(grad, group=meshes["dp"].get_group())
                grad /= dp
    worst, error = "", 0.0
    for name, p in stage.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        expected = reference_grads[whole_name[name]]
        if name in experts:
            expected = expected[experts[name]]
        scale = expected.abs().max().item() or 1.0
        gap = (grad - expected).abs().max().item() / scale
        if not math.isfinite(gap) or gap > error:
            worst, error = whole_name[name], gap if math.isfinite(gap) else math.inf
    result = dict(rank=rank, stage=stage_index, loss=None if loss is None else loss.item(),
                  reference_loss=reference_loss.item(), gradient_error=error, worst_parameter=worst,
                  parameters=sum(1 for _ in stage.parameters()))
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    # every rank reaches the teardown before any tears its connections down: gloo aborts a process whose
    # peer closed first ("terminate called without an active exception", seen once in CI)
    dist.barrier()
    dist.destroy_process_group()


def _pipeline_step(stage: Any, job: RankJob, ids: Any, labels: Any, rank: int, stride: int, hidden: int) -> Any:
    """Forward and backward of this rank's stage over the replica's sequences; activations to the next
    stage's rank (``rank + stride``) and gradients back by send/recv. The loss on the last stage, else None."""
    import torch
    import torch.distributed as dist

    if job.first:
        inputs = ids
    else:
        inputs = torch.empty(ids.shape[0], ids.shape[1] // (job.tp if job.sequence_parallel else 1), hidden)
        dist.recv(inputs, src=rank - stride)
        inputs.requires_grad_()
    from parallelplan.dryrun.parallelize import loss_context

    if job.last:
        with loss_context(job):
            out = stage.loss(inputs, labels)
            out.backward()
        loss = out.detach().clone()
        loss = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
    else:
        out = stage(inputs)
        dist.send(out.detach().contiguous(), dst=rank + stride)
        grad = torch.empty_like(out)
        dist.recv(grad, src=rank + stride)
        out.backward(grad)
        loss = None
    if not job.first:
        dist.send(inputs.grad.contiguous(), dst=rank - stride)
    return loss


if __name__ == "__main__":
    import sys

    _worker(sys.argv[1])
    # The results are written and every rank has left the process group: leave without running the C++
    # static destructors, where a gloo thread still joinable at interpreter exit calls std::terminate
    # ("terminate called without an active exception": twice in CI after the barrier above, never during a step)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
