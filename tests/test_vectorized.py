"""The scalar `estimate` and the vectorized `evaluate` give the same numbers, exactly, for any plans
evaluated together (hypothesis draws the batches: mixed degrees, schedules, recompute, sharding,
precisions, uneven stages, serving and training)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parallelplan.constraints import Plan, PlanArrays, Workload, estimate, evaluate
from parallelplan.constraints.plan import RECOMPUTE_MODULES
from parallelplan.hardware import load_cluster
from parallelplan.models import load_model

MODELS = {name: load_model(name) for name in ("llama-3.1-8b", "mixtral-8x7b", "deepseek-v2-lite", "gpt-3-175b")}
CLUSTERS = {name: load_cluster(name, nodes=2) for name in ("dgx-h100", "dgx-a100", "gb200-nvl72")}


@st.composite
def plans(draw, layers: int) -> Plan:
    pp = draw(st.sampled_from([1, 2, 4]))
    vpp = draw(st.sampled_from([1, 2])) if pp > 1 else 1
    recompute = draw(st.sampled_from(["none", "selective", "selective_mm", "full"]))
    sharding = draw(st.sampled_from(["none", "zero1", "zero2", "zero3", "fsdp", "hsdp"]))
    dp = draw(st.sampled_from([1, 2, 4]))
    uneven = draw(st.booleans()) and vpp == 1 and pp > 1
    stages = None
    if uneven:
        cut = draw(st.integers(min_value=1, max_value=layers - pp + 1))
        stages = (cut,) + tuple([1] * (pp - 2)) + (layers - cut - (pp - 2),)
    return Plan(
        tp=draw(st.sampled_from([1, 2, 4, 8])), pp=pp, dp=dp, cp=draw(st.sampled_from([1, 2])),
        ep=draw(st.sampled_from([1, 2])), vpp=vpp, micro_batch_size=draw(st.sampled_from([1, 2])),
        sequence_parallel=draw(st.booleans()), sharding=sharding,
        hsdp_shard_size=dp if sharding == "hsdp" else None,
        recompute=recompute,
        recompute_layers=draw(st.sampled_from([None, 1, 3])) if recompute == "full" else None,
        recompute_modules=tuple(draw(st.sets(st.sampled_from(RECOMPUTE_MODULES)))) or None if recompute == "selective" else None,
        precision=draw(st.sampled_from(["bf16", "fp8", "fp32"])), master_weights=draw(st.booleans()),
        optimizer=draw(st.sampled_from(["adamw", "adamw8bit", "adafactor", "lion", "sgd", "came"])),
        offload=draw(st.sampled_from(["none", "optimizer"])) if sharding != "none" else "none",
        schedule="interleaved" if vpp > 1 else draw(st.sampled_from(["1f1b", "zero_bubble"])),
        layers_per_stage=stages, kernels=draw(st.sampled_from(["fused", "unfused"])),
        attention_kernel=draw(st.sampled_from(["flash", "eager"])), persistent_grads=draw(st.booleans()),
        tp_comm_overlap=draw(st.booleans()), grad_reduce_overlap=draw(st.booleans()),
    )


@st.composite
def batches(draw):
    model_name = draw(st.sampled_from(sorted(MODELS)))
    model = MODELS[model_name]
    workload = Workload(kind=draw(st.sampled_from(["pretrain", "finetune", "inference"])),
                        seq_len=draw(st.sampled_from([1024, 4096])), global_batch_size=draw(st.sampled_from([8, 64])))
    cluster = CLUSTERS[draw(st.sampled_from(sorted(CLUSTERS)))]
    batch = draw(st.lists(plans(model.num_layers), min_size=1, max_size=6))
    return model, cluster, workload, [p for p in batch if cluster.gpu.supports(p.precision)] or [Plan()]


@settings(max_examples=60, deadline=None)
@given(batches())
def test_scalar_and_vectorized_forms_agree_exactly(case):
    model, cluster, workload, batch = case
    together = evaluate(model, cluster, workload, PlanArrays.from_plans(batch))
    for i, plan in enumerate(batch):
        alone = estimate(model, cluster, plan, workload)
        mem, time = together.memory, together.time
        assert alone.memory.total == int(mem.total[i])
        assert (alone.memory.weights, alone.memory.gradients, alone.memory.optimizer, alone.memory.activations,
                alone.memory.kv_cache, alone.memory.overhead) == (
            int(mem.weights[i]), int(mem.gradients[i]), int(mem.optimizer[i]), int(mem.activations[i]),
            int(mem.kv_cache[i]), int(mem.overhead[i]))
        assert alone.memory.stage == int(mem.stage[i])
        assert alone.fits == bool(together.fits[i])
        assert alone.step_time_s == float(time.step[i])
        assert (alone.time.compute, alone.time.tp_comm, alone.time.cp_comm, alone.time.ep_comm, alone.time.dp_comm,
                alone.time.pp_comm, alone.time.bubble, alone.time.optimizer) == (
            float(time.compute[i]), float(time.tp_comm[i]), float(time.cp_comm[i]), float(time.ep_comm[i]),
            float(time.dp_comm[i]), float(time.pp_comm[i]), float(time.bubble[i]), float(time.optimizer[i]))
        assert alone.mfu == float(together.mfu[i])
