"""`read_arguments(words, world_size, num_layers)`: a Megatron-LM command line read back into `Plan` fields —
the inverse of `emitters.megatron.arguments`, for `plan validate --megatron` on the flags users run.

``words`` are shell words (`words_from_text` splits a launch script or an argument file; the launcher's own
flags and anything else Megatron's parser would not use are ignored). Flags read, with Megatron-Core 0.19's
defaults where absent: ``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``,
``--context-parallel-size`` (+ ``--cp-comm-type``), ``--expert-model-parallel-size``,
``--expert-tensor-parallel-size`` (Megatron's default: the TP size), ``--sequence-parallel``,
``--tp-comm-overlap``, virtual stages (``--num-layers-per-virtual-pipeline-stage`` or
``--virtual-pipeline-model-parallel-size``), uneven stages (``--decoder-first/last-pipeline-num-layers``),
recompute (``--recompute-granularity``, ``--recompute-method``, ``--recompute-num-layers``,
``--recompute-modules``), ``--cpu-offloading-num-layers``, precision (``--fp8-format`` with ``--fp8-recipe`` and ``--first-last-layers-bf16`` /
``--fp16`` / ``--bf16``; none of them: fp32), ``--attention-backend``, ``--optimizer``, sharding
(``--use-distributed-optimizer``: ZeRO-1; ``--use-megatron-fsdp`` with ``--data-parallel-sharding-strategy``
and ``--num-distributed-optimizer-instances``), ``--optimizer-cpu-offload``, ``--overlap-grad-reduce`` /
``--overlap-param-gather``, ``--micro-batch-size``, ``--global-batch-size``, ``--seq-length`` and
``--num-layers``. The data-parallel size is what Megatron derives: world / (tp · pp · cp).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from parallelplan.constraints import Violation
from parallelplan.constraints.fp8 import stack_recipes
from parallelplan.emitters.errors import EmitError
from parallelplan.emitters.megatron import FSDP_STRATEGY, OPTIMIZERS
from parallelplan.emitters.reading import ReadConfig

SHARDING_OF_STRATEGY = {"optim_grads": "zero2", "optim_grads_params": "fsdp"}
"""Megatron-FSDP's strategies (the emitter's `FSDP_STRATEGY` inverted: ZeRO-3 and FSDP are one strategy)."""
OPTIMIZER_OF = {flag: name for name, flag in OPTIMIZERS.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise EmitError(f"Megatron arguments: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(add_help=False, allow_abbrev=False)
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
                 "--expert-model-parallel-size"):
        parser.add_argument(flag, type=int, default=1)
    for flag in ("--expert-tensor-parallel-size", "--num-layers-per-virtual-pipeline-stage",
                 "--virtual-pipeline-model-parallel-size", "--decoder-first-pipeline-num-layers",
                 "--decoder-last-pipeline-num-layers", "--num-layers", "--recompute-num-layers", "--micro-batch-size",
                 "--global-batch-size", "--seq-length"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--cpu-offloading-num-layers", type=int, default=0)
    parser.add_argument("--num-distributed-optimizer-instances", type=int, default=1)
    parser.add_argument("--cp-comm-type", nargs="+", default=["p2p"])
    parser.add_argument("--hierarchical-context-parallel-sizes", nargs="+", type=int)
    parser.add_argument("--recompute-granularity", choices=["full", "selective"])
    parser.add_argument("--recompute-method", choices=["uniform", "block"])
    parser.add_argument("--recompute-modules", nargs="*")
    parser.add_argument("--fp8-format")
    parser.add_argument("--fp8-recipe", choices=["tensorwise", "delayed", "mxfp8", "blockwise"], default="delayed")
    parser.add_argument("--first-last-layers-bf16", action="store_true")
    parser.add_argument("--num-layers-at-start-in-bf16", type=int, default=1)
    parser.add_argument("--num-layers-at-end-in-bf16", type=int, default=1)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--data-parallel-sharding-strategy", default="no_shard")
    for flag in ("--sequence-parallel", "--tp-comm-overlap", "--fp16", "--bf16", "--use-distributed-optimizer",
                 "--use-megatron-fsdp", "--optimizer-cpu-offload", "--overlap-grad-reduce", "--overlap-param-gather",
                 "--fp8-param-gather"):
        parser.add_argument(flag, action="store_true")
    return parser


def words_from_text(text: str) -> list[str]:
    """Shell words of a launch script or an argument file (line continuations joined, comments dropped)."""
    try:
        return shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as err:
        raise EmitError(f"Megatron arguments: cannot split them as shell words ({err})") from None


def read_arguments(words: Sequence[str], world_size: int, num_layers: int | None = None) -> ReadConfig:
    """The plan ``words`` run on ``world_size`` GPUs; ``num_layers`` (the model's) resolves virtual stages
    and checks ``--num-layers``. Raises `EmitError` for flags Megatron's parser would refuse."""
    # a bare "--" (a shell's ``set --``) would end argparse's options: the flags after it are still Megatron's
    args, _ = _parser().parse_known_args([word for word in words if word != "--"])
    notes: list[str] = []
    findings: list[Violation] = []
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    for name, value in (("tensor-model-parallel-size", tp), ("pipeline-model-parallel-size", pp),
                        ("context-parallel-size", cp), ("expert-model-parallel-size", args.expert_model_parallel_size)):
        if value < 1:
            raise EmitError(f"Megatron arguments: --{name} must be a positive integer, got {value}")
    if world_size % (tp * pp * cp):
        raise EmitError(f"Megatron arguments: the world size {world_size} is not divisible by tp·pp·cp = {tp}·{pp}·{cp} "
                        "(Megatron's initialize_model_parallel asserts it); give a cluster of a multiple of their product")
    dp = world_size // (tp * pp * cp)
    layers = args.num_layers or num_layers
    if args.num_layers is not None and num_layers is not None and args.num_layers != num_layers:
        findings.append(Violation(rule="megatron_num_layers", message=f"--num-layers {args.num_layers} but the model has {num_layers} layers",
                                  fix=f"--num-layers={num_layers}, or validate the model those flags describe"))
    fields: dict = {"tp": tp, "pp": pp, "cp": cp, "dp": dp, "ep": args.expert_model_parallel_size,
                    "etp": args.expert_tensor_parallel_size or tp, "sequence_parallel": args.sequence_parallel}
    if cp > 1:
        fields["cp_comm"] = args.cp_comm_type[0]
        if len(set(args.cp_comm_type)) > 1:
            notes.append("--cp-comm-type per layer is not modelled: the first layer's exchange is priced for every layer")
    if args.sequence_parallel:
        fields["tp_comm_overlap"] = args.tp_comm_overlap
    fields |= _stages(args, pp, layers, notes)
    fields |= _recompute(args, layers, notes)
    fields["precision"] = "fp8" if args.fp8_format else "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    if args.fp8_format:  # Megatron's default recipe is the megatron stack's: a plan that names none
        fields["fp8_recipe"] = None if args.fp8_recipe == stack_recipes("megatron")[0] else args.fp8_recipe
        if args.first_last_layers_bf16:
            start, end = args.num_layers_at_start_in_bf16, args.num_layers_at_end_in_bf16
            fields["fp8_bf16_layers"] = max(start, end)
            if start != end:
                notes.append(f"--num-layers-at-start-in-bf16 {start} and --num-layers-at-end-in-bf16 {end} differ: "
                             f"priced as {max(start, end)} at each end")
    fields["master_weights"] = True
    fields["attention_kernel"] = {"unfused": "eager", "fused": "cudnn", "flash": "flash2"}.get(args.attention_backend, "flash")
    if args.attention_backend == "flash":
        notes.append("--attention-backend flash read as FlashAttention-2 (Transformer Engine runs FlashAttention-3 "
                     "instead where flash-attn 3 is installed: --attention-kernel flash3 prices that)")
    if args.optimizer not in OPTIMIZER_OF:
        raise EmitError(f"Megatron arguments: --optimizer {args.optimizer!r} is not modelled; use one of {', '.join(OPTIMIZER_OF)}")
    fields["optimizer"] = OPTIMIZER_OF[args.optimizer]
    fields |= _sharding(args, dp * cp, notes)
    if args.optimizer_cpu_offload:
        fields["offload"] = "optimizer"
    if args.fp8_format and fields["sharding"] != "none" and not args.fp8_param_gather:
        notes.append("fp8 without --fp8-param-gather: Transformer Engine keeps an fp8 copy and transpose of every GEMM "
                     "weight beside the bf16 one (2 bytes per parameter) that the estimate, pricing fp8 parameters, does "
                     "not count; add --fp8-param-gather")
    if dp * cp > 1:
        fields["grad_reduce_overlap"] = args.overlap_grad_reduce
        if fields["sharding"] != "none":
            fields["param_gather_overlap"] = args.overlap_param_gather
    if args.micro_batch_size is not None:
        fields["micro_batch_size"] = args.micro_batch_size
    global_batch = args.global_batch_size
    if global_batch is not None and args.micro_batch_size and global_batch % (args.micro_batch_size * dp):
        findings.append(Violation(
            rule="megatron_batch", message=f"--global-batch-size {global_batch} is not divisible by --micro-batch-size "
                                           f"{args.micro_batch_size} × {dp} data-parallel ranks (Megatron asserts it)",
            fix=f"a global batch that is a multiple of {args.micro_batch_size * dp}"))
    if global_batch is None:
        notes.append("no --global-batch-size: Megatron uses micro-batch × dp; the global batch is left to the caller")
    return ReadConfig(plan_fields=fields, global_batch_size=global_batch, findings=tuple(findings), notes=tuple(notes),
                      seq_len=args.seq_length)


def _stages(args: argparse.Namespace, pp: int, layers: int | None, notes: list[str]) -> dict:
    out: dict = {}
    if args.virtual_pipeline_model_parallel_size:
        out["vpp"] = args.virtual_pipeline_model_parallel_size
    elif args.num_layers_per_virtual_pipeline_stage:
        if layers is None:
            raise EmitError("Megatron arguments: --num-layers-per-virtual-pipeline-stage needs the layer count (--num-layers)")
        out["vpp"] = layers // (pp * args.num_layers_per_virtual_pipeline_stage)
    first, last = args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers
    if first is not None or last is not None:
        if layers is None:
            raise EmitError("Megatron arguments: uneven pipeline stages need the layer count (--num-layers)")
        first = first if first is not None else None
        ends = (first or 0) + (last or 0)
        middle_count = pp - (first is not None) - (last is not None)
        middle = (layers - ends) // middle_count if middle_count else 0
        if middle_count and (layers - ends) % middle_count:
            raise EmitError(f"Megatron arguments: the {layers - ends} layers between the first and last stages do not "
                            f"split evenly over {middle_count} stages (Megatron asserts it)")
        stages = [middle] * pp
        if first is not None:
            stages[0] = first
        if last is not None:
            stages[-1] = last
        out["layers_per_stage"] = tuple(stages)
    return out


def _recompute(args: argparse.Namespace, layers: int | None, notes: list[str]) -> dict:
    if args.recompute_granularity == "full":
        if args.recompute_method == "block":
            return {"recompute": "full", "recompute_layers": args.recompute_num_layers or 1}
        if args.recompute_method is None:
            notes.append("--recompute-granularity full without --recompute-method: Megatron refuses it; uniform assumed")
        return {"recompute": "full"}  # uniform: every layer, in chunks of --recompute-num-layers
    if args.recompute_granularity == "selective":
        return {"recompute": "selective", "recompute_modules": tuple(args.recompute_modules or ("core_attn",))}
    if args.cpu_offloading_num_layers > 0:
        if layers is not None and args.cpu_offloading_num_layers != layers - 1:
            notes.append(f"--cpu-offloading-num-layers {args.cpu_offloading_num_layers}: priced as every layer's "
                         "activations but the last one's offloaded")
        return {"recompute": "none", "offload_activations": True}
    return {"recompute": "none"}


def _sharding(args: argparse.Namespace, data_ranks: int, notes: list[str]) -> dict:
    if args.use_megatron_fsdp:
        strategy = args.data_parallel_sharding_strategy
        if strategy not in SHARDING_OF_STRATEGY:
            allowed = ", ".join(sorted(set(FSDP_STRATEGY.values())))
            raise EmitError(f"Megatron arguments: --data-parallel-sharding-strategy {strategy!r} is not modelled with "
                            f"--use-megatron-fsdp; use one of {allowed}")
        instances = args.num_distributed_optimizer_instances
        if instances > 1:
            return {"sharding": "hsdp", "hsdp_shard_size": data_ranks // instances}
        return {"sharding": SHARDING_OF_STRATEGY[strategy]}
    if args.use_distributed_optimizer:
        if args.num_distributed_optimizer_instances > 1:
            notes.append("--num-distributed-optimizer-instances with the distributed optimizer: states priced as "
                         "sharded over all data-parallel ranks")
        return {"sharding": "zero1"}
    return {"sharding": "none"}
