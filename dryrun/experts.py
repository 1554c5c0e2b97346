"""Expert parallelism for `transformers`' fused experts modules (``gate_up_proj`` [E, 2I, H], ``down_proj``
[E, H, I], ``act_fn``; Qwen3-MoE, Mixtral, DeepSeek in transformers 5): this rank keeps E/ep whole experts,
and each token's copies travel to the ranks of the experts the router chose and back by all-to-all, as
Megatron-Core's ``alltoall`` token dispatcher sends them (Lepikhin et al. 2020, GShard §2.2). The
all-to-alls carrying hidden states are autograd's (``torch.distributed.nn.functional.all_to_all_single``),
so the backward sends the gradients back the same way."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_to_all_single


class ExpertParallel(torch.nn.Module):
    def __init__(self, experts: torch.nn.Module, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.group = group
        self.size = dist.get_world_size(group)
        self.num_experts = experts.gate_up_proj.shape[0]
        self.local = self.num_experts // self.size
        self.first = dist.get_rank(group) * self.local
        owned = slice(self.first, self.first + self.local)
        self.gate_up_proj = torch.nn.Parameter(experts.gate_up_proj.detach()[owned].clone())
        self.down_proj = torch.nn.Parameter(experts.down_proj.detach()[owned].clone())
        self.act_fn = experts.act_fn

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        tokens, k = top_k_index.shape
        expert = top_k_index.reshape(-1)
        order = torch.argsort(expert, stable=True)
        token = torch.arange(tokens, device=hidden.device).repeat_interleave(k)[order]
        send = torch.bincount(expert[order] // self.local, minlength=self.size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        arrived_expert = torch.empty(sum(recv_sizes), dtype=expert.dtype, device=hidden.device)
        dist.all_to_all_single(arrived_expert, expert[order].contiguous(), recv_sizes, send_sizes, group=self.group)
        arrived = all_to_all_single(hidden.new_empty(sum(recv_sizes), hidden.shape[1]), hidden[token].contiguous(),
                                    recv_sizes, send_sizes, group=self.group)
        computed = torch.zeros_like(arrived)
        for index in range(self.local):
            rows = (arrived_expert == self.first + index).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            gate, up = torch.nn.functional.linear(arrived[rows], self.gate_up_proj[index]).chunk(2, dim=-1)
            out = torch.nn.functional.linear(self.act_fn(gate) * up, self.down_proj[index])
            computed = computed.index_add(0, rows, out)
        returned = all_to_all_single(hidden.new_empty(len(token), hidden.shape[1]), computed, send_sizes, recv_sizes,
                                     group=self.group)
        weights = top_k_weights.reshape(-1)[order].to(returned.dtype)
        return torch.zeros_like(hidden).index_add(0, token, returned * weights[:, None])
