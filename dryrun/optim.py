"""The optimizer of a plan that does not shard parameters (no sharding, ZeRO-1), laid out as Megatron-Core's
distributed optimizer lays it out (Megatron-Core ``DistributedOptimizer`` docs: "bf16 parameters, fp32
gradient buffer, fp32 main parameters and optimizer states sharded over the data-parallel ranks"):

- with master weights: the model keeps its 16-bit parameters; each gradient is accumulated into an fp32
  buffer of the parameter's size (``main_grad``) and freed; this rank owns 1/d of every parameter (d = dp
  under ZeRO-1, 1 otherwise): an fp32 master copy of that share and the optimizer's states for it; the
  step updates the master share and copies it back into the 16-bit parameter;
- without: torch's optimizer over the rank's share of each parameter in place, its states in the
  parameter's dtype, the gradients the parameters' own.

Gradients persist between steps (zeroed) when ``persistent_grads``, as Megatron's buffer does; otherwise
they are freed after the step, as ``zero_grad(set_to_none=True)`` frees them."""

from __future__ import annotations

import math

import torch


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _local_grad(param: torch.nn.Parameter) -> torch.Tensor:
    """This rank's part of ``param``'s gradient, laid out as the parameter (DTensor computes a vocab-parallel
    embedding's gradient replicated; the optimizer redistributes it to the parameter's shards)."""
    grad = param.grad
    if hasattr(grad, "placements") and grad.placements != param.placements:
        grad = grad.redistribute(placements=param.placements)
    return _local(grad)


class ShardedOptimizer:
    def __init__(self, params: list[torch.nn.Parameter], *, shards: list[int], master: bool, optimizer: str,
                 persistent_grads: bool) -> None:
        """``shards[i]``: the ranks sharing ``params[i]``'s optimizer states (1 without ZeRO-1)."""
        self.params = params
        self.master = master
        self.persistent = persistent_grads
        self.shares = [math.ceil(_local(p).numel() / n) for p, n in zip(params, shards, strict=True)]
        if master:
            self.owned = [torch.nn.Parameter(_local(p).detach().reshape(-1)[:n].float().clone()) for p, n in zip(params, self.shares, strict=True)]
            self.main_grads: list[torch.Tensor | None] = [
                torch.zeros(_local(p).numel(), dtype=torch.float32, device=_local(p).device) if persistent_grads else None
                for p in params]
            for index, p in enumerate(params):
                p.register_post_accumulate_grad_hook(self._accumulator(index))
        else:
            self.owned = [torch.nn.Parameter(_local(p).detach().reshape(-1)[:n]) for p, n in zip(params, self.shares, strict=True)]
        self.held = torch.nn.Module()
        """What the optimizer holds before the first step (master copies, persistent gradient buffers), for a
        memory tracker to follow like a module's parameters and buffers."""
        if master:
            self.held.masters = torch.nn.ParameterList(self.owned)
            for index, grad in enumerate(self.main_grads):
                if grad is not None:
                    self.held.register_buffer(f"main_grad_{index}", grad)
        self.inner = (torch.optim.AdamW(self.owned, lr=1e-4, foreach=True) if optimizer == "adamw"
                      else torch.optim.SGD(self.owned, lr=1e-4, momentum=0.9, foreach=True))

    def _accumulator(self, index: int):
        def accumulate(param: torch.nn.Parameter) -> None:
            grad = _local_grad(param).reshape(-1)
            if self.main_grads[index] is None:
                self.main_grads[index] = grad.float()
            else:
                self.main_grads[index].add_(grad)
            param.grad = None
        return accumulate

    def step(self) -> None:
        grads = self.main_grads if self.master else [_local_grad(p).reshape(-1) for p in self.params]
        for owned, grad, n in zip(self.owned, grads, self.shares, strict=True):
            owned.grad = grad[:n]
        self.inner.step()
        if self.master:
            for p, owned, n in zip(self.params, self.owned, self.shares, strict=True):
                _local(p).detach().reshape(-1)[:n].copy_(owned)

    def zero_grad(self) -> None:
        for owned in self.owned:
            owned.grad = None
        if self.master:
            for grad in self.main_grads:
                if grad is not None:
                    grad.zero_()
            if not self.persistent:
                self.main_grads = [None] * len(self.params)
        for p in self.params:
            if p.grad is not None:
                if self.persistent:
                    p.grad.zero_()
                else:
                    p.grad = None
