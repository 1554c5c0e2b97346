"""Expert parallelism for `transformers`' fused experts modules (``gate_up_proj`` [E, 2I, H], ``down_proj``
[E, H, I], ``act_fn``; Qwen3-MoE, Mixtral, DeepSeek in transformers 5): this rank keeps E/ep whole experts,
and each token's copies travel to the ranks of the experts the router chose and back by all-to-all, as
Megatron-Core's ``alltoall`` token dispatcher sends them (Lepikhin et al. 2020, GShard §2.2): the copies
sorted by expert, the counts exchanged, the hidden states exchanged, the arrivals sorted by local expert
(Megatron's ``sort_chunks_by_idxs``), each local expert's rows through its MLP, the results unsorted and sent
back, weighted and summed per token (scatter-add). The all-to-alls carrying hidden states are autograd's
(``torch.distributed.nn.functional.all_to_all_single``), so the backward sends the gradients back the same way.

How many copies go where is data: the router's choices. With real tensors (the small-scale run) the counts
are the router's; fake tensors (the full-size run) carry no data, so there the counts are those of balanced
routing — every rank sends k·T/ep copies to each rank, every local expert gets an equal share — with the
measured rank receiving ``load`` times the balanced share (the busiest rank, `Workload.moe_imbalance`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_to_all_single

from parallelplan.dryrun.errors import DryRunError


def _even(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


class ExpertParallel(torch.nn.Module):
    """``experts``' share of this rank in ``group``; ``load`` None: counts from the router's choices;
    a number: balanced counts, this rank receiving ``load`` times its balanced share (see the module
    docstring)."""

    def __init__(self, experts: torch.nn.Module, group: dist.ProcessGroup, load: float | None = None) -> None:
        super().__init__()
        self.group = group
        self.load = load
        self.size = dist.get_world_size(group)
        self.num_experts = experts.gate_up_proj.shape[0]
        self.local = self.num_experts // self.size
        self.first = dist.get_rank(group) * self.local
        owned = slice(self.first, self.first + self.local)
        self.gate_up_proj = torch.nn.Parameter(experts.gate_up_proj.detach()[owned].clone())
        self.down_proj = torch.nn.Parameter(experts.down_proj.detach()[owned].clone())
        self.act_fn = experts.act_fn

    def _counts(self, expert: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
        """Copies sent to each rank, received from each rank, and received for each local expert."""
        if self.load is None:
            send = torch.bincount(expert // self.local, minlength=self.size)
            recv = torch.empty_like(send)
            dist.all_to_all_single(recv, send, group=self.group)
            return send.tolist(), recv.tolist(), []
        copies = expert.numel()
        received = round(self.load * copies)
        return _even(copies, self.size), _even(received, self.size), _even(received, self.local)

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        tokens, k = top_k_index.shape
        chosen = top_k_index.reshape(-1)
        order = torch.argsort(chosen, stable=True)
        expert = chosen[order]
        token = torch.arange(tokens, device=hidden.device).repeat_interleave(k)[order]
        send_sizes, recv_sizes, per_expert = self._counts(expert)
        arrived_expert = expert.new_empty(sum(recv_sizes))
        dist.all_to_all_single(arrived_expert, expert, recv_sizes, send_sizes, group=self.group)
        arrived = all_to_all_single(hidden.new_empty(sum(recv_sizes), hidden.shape[1]), hidden[token].contiguous(),
                                    recv_sizes, send_sizes, group=self.group)
        by_expert = torch.argsort(arrived_expert, stable=True)
        if self.load is None:
            per_expert = torch.bincount(arrived_expert - self.first, minlength=self.local).tolist()
        outputs = []
        for index, rows in enumerate(torch.split(arrived[by_expert], per_expert)):
            gate, up = torch.nn.functional.linear(rows, self.gate_up_proj[index]).chunk(2, dim=-1)
            outputs.append(torch.nn.functional.linear(self.act_fn(gate) * up, self.down_proj[index]))
        computed = torch.cat(outputs)[torch.argsort(by_expert)]
        returned = all_to_all_single(hidden.new_empty(len(token), hidden.shape[1]), computed, send_sizes, recv_sizes,
                                     group=self.group)
        weights = top_k_weights.reshape(-1)[order].to(returned.dtype)
        # scatter_add keeps only its index for backward (index_add would keep the weighted copies too), as
        # Megatron-Core's unpermute and torchtitan's MoE combine do
        rows = token[:, None].expand(-1, hidden.shape[1])
        return torch.zeros_like(hidden).scatter_add(0, rows, returned * weights[:, None])


def split_experts(stage: torch.nn.Module, group: dist.ProcessGroup, load: float | None = None) -> dict[str, slice]:
    """Replace the experts module of every MoE layer of ``stage`` by this rank's `ExpertParallel` share in
    ``group``; the names of the replaced parameters → which of the whole model's experts they hold."""
    held: dict[str, slice] = {}
    for index, layer in enumerate(stage.layers):
        experts = getattr(getattr(layer, "mlp", None), "experts", None)
        if experts is None:
            continue
        if not all(hasattr(experts, name) for name in ("gate_up_proj", "down_proj", "act_fn")):
            raise DryRunError(f"{type(experts).__name__} has no fused gate_up_proj/down_proj: the dry-run splits "
                              "transformers' fused experts modules over expert ranks; use ep=1 for this model")
        share = layer.mlp.experts = ExpertParallel(experts, group, load)
        for kind in ("gate_up_proj", "down_proj"):
            held[f"layers.{index}.mlp.experts.{kind}"] = slice(share.first, share.first + share.local)
    return held
