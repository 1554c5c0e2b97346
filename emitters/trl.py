"""TRL (1.16) on Accelerate: supervised fine-tuning (full, LoRA, QLoRA) and DPO as TRL's own scripts run
them — ``trl_config.yaml`` (the script's training arguments and its ``ModelConfig``: peft's LoRA through
``use_peft``/``lora_*``, QLoRA's 4-bit base through ``load_in_4bit``, NF4 with nested quantisation),
``accelerate_config.yaml`` (the data-parallel and sharding plugin, `emitters.accelerate`) and
``launch.sh`` (``accelerate launch -m trl.scripts.sft|dpo --config trl_config.yaml``, the model and dataset
as arguments). Checked by TRL's own parsers (``trl.scripts.sft.make_parser``, ``trl.scripts.dpo.make_parser``,
then ``get_peft_config`` / ``get_quantization_config``) and accelerate's loader in the validator tests.

TRL's scripts train `transformers` models, so the search keeps to what they run (``CONSTRAINTS``): data
parallelism with ZeRO-1 (DeepSpeed plugin), ZeRO-2/3 or FSDP (FSDP2 plugin); HF's eager modules
(``kernels="unfused"``, SDPA attention); weights, gradients and optimizer states in the model dtype
(``dtype``: no fp32 master copy); ``gradient_checkpointing`` for full recompute; AdamW as torch's foreach
``adamw_torch`` (what the cost model prices for unfused kernels), 8-bit AdamW as ``adamw_bnb_8bit``.
QLoRA under FSDP stores the 4-bit weights in bf16 containers (``bnb_4bit_quant_storage``), which FSDP
needs to shard them. Packed examples (`Workload.packing`) become SFT's ``packing`` (best-fit decreasing)
with ``padding_free``: each example attends within itself only under FlashAttention's variable-length
kernel, so the script loads ``flash_attention_2`` (the flash-attn package); DPO does not pack.
"""

from __future__ import annotations

from parallelplan.emitters.accelerate import accelerate_words, yaml_text
from parallelplan.emitters.accelerate import config as accelerate_config
from parallelplan.emitters.environment import HERE, command, launch_environment, script
from parallelplan.emitters.job import Job, unsupported
from parallelplan.emitters.serving import model_lines
from parallelplan.emitters.torchrun import node_rank_lines

TARGET = "trl"
NAME = "TRL"
CONSTRAINTS = {"fixed": {"tp": 1, "pp": 1, "cp": 1, "ep": 1, "vpp": 1, "kernels": "unfused", "master_weights": False},
               "ranges": {"recompute": ["none", "full"], "sharding": ["none", "zero1", "zero2", "zero3", "fsdp"],
                          "precision": ["bf16", "fp16", "fp32", "tf32"], "optimizer": ["adamw", "adamw8bit"]},
               "allow_partial_recompute": False}
OFFLOADS_ACTIVATIONS = True
"""TRL's ``activation_offloading``."""
AGAIN = "solve for it with `plan launch --target trl`"
OPTIMIZERS = {"adamw": "adamw_torch", "adamw8bit": "adamw_bnb_8bit"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "float32"}


def check(job: Job) -> None:
    p, w = job.plan, job.workload
    if w.kind not in ("finetune", "rlhf"):
        raise unsupported(NAME, f"{w.kind} (its scripts fine-tune: SFT and DPO)", "use torchrun, megatron or torchtitan")
    fixed = {name: value for name, value in CONSTRAINTS["fixed"].items() if getattr(p, name) != value}
    if fixed:
        raise unsupported(NAME, ", ".join(f"{name} {getattr(p, name)}" for name in fixed), AGAIN)
    for name, allowed in CONSTRAINTS["ranges"].items():
        if getattr(p, name) not in allowed:
            raise unsupported(NAME, f"{name} {getattr(p, name)}", AGAIN)
    if p.recompute_layers is not None:
        raise unsupported(NAME, f"recompute of {p.recompute_layers} layers (gradient checkpointing is all or none)", AGAIN)
    if w.packing and (w.algorithm == "dpo" or p.attention_kernel == "eager"):
        raise unsupported(NAME, "packed examples " + ("for DPO (its trainer does not pack pairs)" if w.algorithm == "dpo"
                                                      else "without flash attention (padding-free packing needs it)"),
                          "solve without --packing" if w.algorithm == "dpo" else AGAIN)


ATTN_IMPLEMENTATIONS = {"flash": "sdpa", "flash2": "flash_attention_2", "flash3": "flash_attention_3", "eager": "eager"}
"""transformers' ``attn_implementation`` for each `Plan.attention_kernel` the custom stack offers: ``sdpa``
runs PyTorch's flash backend (FlashAttention-2), the others the flash-attn packages or the eager module."""


def script_name(job: Job) -> str:
    return "dpo" if job.workload.algorithm == "dpo" else "sft"


def trl_config(job: Job) -> dict:
    """The ``trl_config.yaml`` contents: training arguments, then ``ModelConfig``."""
    check(job)
    p, w = job.plan, job.workload
    out = {"output_dir": "output", "per_device_train_batch_size": p.micro_batch_size,
           "gradient_accumulation_steps": job.gradient_accumulation, "max_length": w.seq_len,
           "bf16": p.precision == "bf16", "fp16": p.precision == "fp16", "tf32": p.precision == "tf32",
           "gradient_checkpointing": p.recompute == "full", "optim": OPTIMIZERS[p.optimizer],
           "dtype": DTYPES[p.precision], "attn_implementation": ATTN_IMPLEMENTATIONS[p.attention_kernel]}
    if p.offload_activations:
        out["activation_offloading"] = True
    if w.packing:  # padding-free packing needs the flash-attn package's variable-length kernels
        out |= {"packing": True, "packing_strategy": "bfd", "padding_free": True,
                "attn_implementation": "flash_attention_3" if p.attention_kernel == "flash3" else "flash_attention_2"}
    if w.peft is not None:
        targets = list(w.peft.target_modules)
        if not float(w.peft.alpha).is_integer():
            raise unsupported(NAME, f"lora_alpha {w.peft.alpha:g} (its ModelConfig takes an integer)", "use an integer alpha")
        out |= {"use_peft": True, "lora_r": w.peft.rank, "lora_alpha": int(w.peft.alpha), "lora_dropout": w.peft.dropout,
                "lora_target_modules": targets[0] if targets == ["all-linear"] else targets}
        if w.peft.method == "qlora":
            out |= {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True}
            if p.sharding in ("zero2", "zero3", "fsdp"):
                out["bnb_4bit_quant_storage"] = DTYPES[p.precision]
    return out


def emit(job: Job) -> dict[str, str]:
    data = trl_config(job)
    plugin = accelerate_config(job, script_checkpoints=True)
    words = accelerate_words(job) + ["-m", f"trl.scripts.{script_name(job)}", "--config", "$HERE/trl_config.yaml",
              "--model_name_or_path", "$MODEL", "--dataset_name", "$DATASET"]
    kind = "a preference dataset (prompt, chosen, rejected)" if script_name(job) == "dpo" else "a dataset"
    body = [HERE, *model_lines(job), f'DATASET="${{DATASET:?set DATASET to {kind} on the Hugging Face Hub}}"',
            *node_rank_lines(job), "exec " + command(words)]
    header = f"# {job.summary}\n# Written by `plan launch` for TRL's {script_name(job).upper()} script.\n"
    return {"trl_config.yaml": header + yaml_text(data) + "\n",
            "accelerate_config.yaml": f"# {job.summary}\n# Accelerate's {plugin['distributed_type']} plugin, for TRL.\n"
                                      + yaml_text(plugin) + "\n",
            "launch.sh": script(job.summary, launch_environment(job.plan, job.cluster), body)}
