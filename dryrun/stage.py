"""One pipeline stage of a `transformers` causal LM as a module of its own: the decoder layers the stage
holds (built at their real widths with the model's own classes), the token embedding on the first stage,
the final norm and LM head on the last, and the rotary embedding every stage needs. Built on the meta
device (nothing allocated, no initialisation), then given the tensors the caller asks for: fake ones for
the full-size dry-run (`to_fake`), real ones at reduced widths for the multi-process run."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import transformers

from parallelplan.dryrun.errors import DryRunError
from parallelplan.dryrun.job import RankJob


class Stage(torch.nn.Module):
    """``forward(inputs, chunk)``: token ids (the first stage's first chunk) or the received hidden states (1/tp
    of the sequence under sequence parallelism) through one model chunk's layers → the logits (the last
    stage's last chunk) or the hidden states to send; ``loss`` adds the loss,
    computed outside the module's forward as torchtitan's trainer computes it (so FSDP2's root has freed its
    last all-gather buffer by then)."""

    def __init__(self, model: Any, job: RankJob) -> None:
        super().__init__()
        inner = model.model
        self.layers = torch.nn.ModuleList(inner.layers[i] for start, count in job.chunks for i in range(start, start + count))
        bounds = list(itertools.accumulate((count for _, count in job.chunks), initial=0))
        self.chunks = [range(begin, end) for begin, end in itertools.pairwise(bounds)]
        """Positions in ``layers`` of each model chunk's layers."""
        self.rotary_emb = inner.rotary_emb
        self.embed_tokens = inner.embed_tokens if job.first else None
        self.norm = inner.norm if job.last else None
        self.lm_head = model.lm_head if job.last else None
        self.recompute_layers = job.recompute_layers
        self.op_recompute = job.op_recompute
        self.sequence_shards = job.tp if job.sequence_parallel else 1
        self.vocab_size = model.config.vocab_size
        for layer in self.layers:
            for module in _selected(layer, job.recompute_modules):
                _checkpoint_forward(module)

    def forward(self, inputs: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        first, last = chunk == 0, chunk == len(self.chunks) - 1
        hidden = self.embed_tokens(inputs) if first and self.embed_tokens is not None else inputs
        # under sequence parallelism the residual stream holds 1/tp of the sequence; attention sees all of it
        positions = torch.arange(hidden.shape[1] * self.sequence_shards, device=hidden.device).unsqueeze(0)
        rotary = self.rotary_emb(hidden, positions)
        for index, position in enumerate(self.chunks[chunk]):
            layer = self.layers[position]
            if index < self.recompute_layers:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, position_ids=positions,
                                                           position_embeddings=rotary, use_reentrant=False)
            elif self.op_recompute:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, position_ids=positions, position_embeddings=rotary,
                                                           use_reentrant=False, context_fn=_op_level_policy)
            else:
                hidden = layer(hidden, position_ids=positions, position_embeddings=rotary)
        if not last or self.lm_head is None:
            return hidden
        return self.lm_head(self.norm(hidden))

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """A last stage's forward (of its last chunk), then transformers' ForCausalLMLoss on its logits:
        upcast to fp32, the cross-entropy's mean over the tokens (the labels are taken as already shifted)."""
        logits = self(inputs, chunk)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


def _selected(layer: torch.nn.Module, modules: tuple[str, ...]) -> list[torch.nn.Module]:
    """The submodules of ``layer`` that Megatron-Core's selective recompute ``modules`` name (``core_attn``
    is the attention function, switched in `hf_model`)."""
    mlp = getattr(layer, "mlp", None)
    moe = mlp is not None and hasattr(mlp, "experts")
    out = []
    if "layernorm" in modules:
        out += [getattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm") if hasattr(layer, name)]
    if ("mlp" in modules and mlp is not None and not moe) or ("moe" in modules and moe):
        out.append(mlp)
    elif "shared_experts" in modules and moe:
        out += [getattr(mlp, name) for name in ("shared_expert", "shared_experts") if hasattr(mlp, name)]
    return out


SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,  # the same attention on the CPU
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}
"""The ops whose outputs torchtitan's op-level selective checkpointing saves (its ``_op_sac_save_list``;
``activation_checkpoint.mode = "selective"``, ``selective_ac_option = "op"``); of the matmuls, every other
one (the odd-numbered) only."""


def _op_level_policy() -> tuple:
    """A fresh policy per checkpointed layer call: save `SAVED_OPS`' outputs, but recompute the
    even-numbered matmuls, counted apart in the forward and in the recompute (torchtitan's policy)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    matmuls = {False: 0, True: 0}

    def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if func == torch.ops.aten.mm.default:
            matmuls[ctx.is_recompute] += 1
            if matmuls[ctx.is_recompute] % 2 == 0:
                return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def _checkpoint_forward(module: torch.nn.Module) -> None:
    """``module`` keeps only its inputs for backward and runs its forward again there."""
    forward = module.forward

    def recomputed(*args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed


def _recomputed_sdpa(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """transformers' SDPA attention under ``torch.utils.checkpoint``: selective recompute's ``core_attn``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return torch.utils.checkpoint.checkpoint(ALL_ATTENTION_FUNCTIONS["sdpa"], module, *args, use_reentrant=False, **kwargs)


RECOMPUTED_SDPA = "dryrun_recomputed_sdpa"
transformers.AttentionInterface.register(RECOMPUTED_SDPA, _recomputed_sdpa)


def hf_model(config: dict[str, Any], job: RankJob, dtype: torch.dtype, device: str = "meta") -> Any:
    """The `transformers` causal LM of ``config`` with as many layers as the stage reaches, on ``device``
    (meta: nothing allocated or initialised; cpu: initialised from the current seed), in ``dtype``, with SDPA
    attention (memory as a flash kernel's: no s×s scores kept); on the CPU, experts as transformers' eager
    loop (``grouped_mm`` needs a GPU)."""
    try:
        cfg = transformers.AutoConfig.for_model(**config)
    except (ValueError, KeyError) as err:
        raise DryRunError(f"transformers cannot build model_type {config.get('model_type')!r} ({err}); "
                          "pass a config.json of a model transformers knows") from None
    cfg.num_hidden_layers = job.layer_end
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    cfg._attn_implementation = RECOMPUTED_SDPA if "core_attn" in job.recompute_modules else "sdpa"
    if device != "meta":
        cfg._experts_implementation = "eager"
    cfg.use_cache = False
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except ValueError as err:
            raise DryRunError(f"model_type {config.get('model_type')!r} has no transformers causal-LM class ({err})") from None
    if not hasattr(model, "model") or not hasattr(model.model, "layers") or not hasattr(model.model, "rotary_emb"):
        raise DryRunError(f"{type(model).__name__}: the dry-run splits decoder-only models with rotary positions "
                          "(model.layers, model.rotary_emb); this one has another layout")
    return model


def to_fake(module: torch.nn.Module, mode: Any) -> None:
    """Replace every meta parameter and buffer of ``module`` by a fake tensor of the same shape, dtype and
    ``requires_grad`` (shared ones stay shared); buffers that carry values (rotary inverse frequencies)
    become zeros of their shape — the values do not change what is allocated."""
    made: dict[int, torch.Tensor] = {}
    with mode:
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in made:
                        fake = torch.zeros(tensor.shape, dtype=tensor.dtype)
                        made[id(tensor)] = torch.nn.Parameter(fake, requires_grad=tensor.requires_grad) if (
                            isinstance(tensor, torch.nn.Parameter)) else fake
                    store[name] = made[id(tensor)]
