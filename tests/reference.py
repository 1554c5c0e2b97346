"""The reference side of the tests: HF `transformers` models built from a config dict, and what PyTorch
measures on them. Nothing here uses this project's formulas.

- Parameters: ``sum(p.numel())`` over the model built on the meta device (no memory is allocated).
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` around one forward + backward of a causal-LM loss.
  FlopCounterMode has no formula for ``grouped_mm`` (transformers' default MoE path) nor for the CPU
  flash-SDPA kernel, so attention and experts run in their "eager" implementations. Dense models run on
  the meta device at their real widths; MoE routing is data-dependent, so MoE models run on real CPU
  tensors at reduced widths (the count is exact whatever the routing, since every token visits exactly
  top-k experts).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

warnings.filterwarnings("ignore", module="transformers")
transformers.logging.set_verbosity_error()


def build(config: dict[str, Any], device: str) -> Any:
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def parameter_count(config: dict[str, Any]) -> int:
    model = build(config, "meta")
    return sum(p.numel() for p in model.parameters())


def classifier_parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the config's ``AutoModelForSequenceClassification`` (the trunk and a ``num_labels``-wide
    score head in place of the LM head: a reward model or PPO critic), built on the meta device."""
    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def training_flops(config: dict[str, Any], seq_len: int, *, device: str, batch: int = 1) -> int:
    """FLOPs FlopCounterMode counts for one forward + backward over ``batch`` sequences."""
    model = build(config, device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (batch, seq_len), generator=generator).to(device)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


def with_layers(config: dict[str, Any], layers: int, **overrides: Any) -> dict[str, Any]:
    """A copy of ``config`` with ``layers`` decoder layers (``layer_types`` cut to match) and overrides."""
    out = {**config, **overrides, "num_hidden_layers": layers}
    if "n_layer" in out:  # GPT-2 and legacy Falcon name the layer count n_layer
        out["n_layer"] = layers
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:layers]
    return out


def training_step_peak(
    config: dict[str, Any], seq_len: int, *, batch: int = 1, dtype: str = "bfloat16",
    optimizer: str = "adamw", checkpointing: bool = False, attention: str = "sdpa",
) -> dict[str, int]:
    """Peak bytes by category that `torch.distributed._tools.mem_tracker.MemTracker` records over one
    training step (forward, causal-LM loss, backward, ``optimizer.step()``, ``zero_grad()``).

    Method: build the model with ``from_config(cfg, dtype=...)`` inside ``FakeTensorMode`` (no memory is
    allocated, so real widths cost nothing; ``.to(dtype)`` does not work there; MoE models run there with
    transformers' default ``grouped_mm`` experts, whose routing has no data-dependent control flow,
    unlike the ``eager`` experts loop); optionally ``gradient_checkpointing_enable()``; ``MemTracker().track_external(model, optimizer)``; run two steps
    and ``reset_mod_stats()`` after the first, so the peak is that of a steady-state step (optimizer
    states exist, gradients were freed by ``zero_grad(set_to_none=True)``). The optimizers are torch's
    AdamW and SGD (momentum 0.9), both ``foreach=True``. Returns the peak snapshot's categories
    (``PARAM``, ``GRAD``, ``OPT``, ``ACT``, ``TEMP``, ...) in bytes.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = attention
    torch.manual_seed(0)
    with FakeTensorMode():
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        params = model.parameters()
        if optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
        elif optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=True)
        else:
            raise ValueError(f"optimizer must be adamw or sgd, got {optimizer!r}")
        ids = torch.randint(0, config["vocab_size"], (batch, seq_len))
        return _two_steps_peak(MemTracker(), opt, lambda: model(input_ids=ids, labels=ids).loss, model)



class _NoHook:
    def remove(self) -> None:
        pass


def _frozen_aware_tracker() -> Any:
    """PyTorch's `MemTracker`, except that frozen parameters get no gradient hook: torch 2.13's
    ``_track_module_params_and_buffers`` registers one on every parameter of every module it enters, which
    raises for a parameter that does not require gradients. They are still counted (as ``PARAM``); they
    never have a gradient to count."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenAwareMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):  # type: ignore[override]
            for param in module.parameters():
                if not param.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(param, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return FrozenAwareMemTracker()


def lora_model(config: dict[str, Any], *, rank: int, targets: str | list[str], dropout: float = 0.0,
               dtype: str = "bfloat16", attention: str = "sdpa", device: str = "meta") -> Any:
    """A `transformers` model wrapped by `peft` (``LoraConfig(r, lora_alpha=2r, target_modules, dropout)``),
    on the meta device: peft's own defaults apply, so adapters on a 16-bit model are fp32."""
    import peft

    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = attention
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=dropout)
    return peft.get_peft_model(model, lora)


def _as_fake(model: Any, mode: Any) -> None:
    """Re-create every parameter and buffer of a meta-device ``model`` as a fake tensor of the same shape,
    dtype and ``requires_grad`` (`parallelplan.dryrun.stage.to_fake`). peft cannot wrap a model built inside
    FakeTensorMode: it calls ``nn.Module.to``, which in torch 2.13 cannot swap fake parameters."""
    from parallelplan.dryrun.stage import to_fake

    to_fake(model, mode)


def lora_training_step_peak(config: dict[str, Any], seq_len: int, *, batch: int = 1, rank: int = 16,
                            targets: str | list[str] = "all-linear", dropout: float = 0.0,
                            dtype: str = "bfloat16") -> dict[str, int]:
    """`training_step_peak`'s measurement for a `lora_model`: AdamW (foreach) over the trainable
    parameters only, two steps under MemTracker in FakeTensorMode, the second step's peak by category."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = lora_model(config, rank=rank, targets=targets, dropout=dropout, dtype=dtype)
    mode = FakeTensorMode()
    _as_fake(model, mode)
    with mode:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)
        ids = torch.randint(0, config["vocab_size"], (batch, seq_len))
        return _two_steps_peak(_frozen_aware_tracker(), opt, lambda: model(input_ids=ids, labels=ids).loss, model)


def _two_steps_peak(tracker: Any, opt: Any, loss: Any, *tracked: Any) -> dict[str, int]:
    """Two training steps — ``loss()``, backward, ``opt.step()``, ``zero_grad()`` — under ``tracker``
    (MemTracker, following ``tracked`` modules and ``opt``), its stats reset after the first: the peak of a
    steady-state step by category, in bytes. Runs inside the caller's FakeTensorMode."""
    tracker.track_external(*tracked, opt)
    with tracker:
        for step in range(2):
            loss().backward()
            opt.step()
            opt.zero_grad()
            if step == 0:
                tracker.reset_mod_stats()
    peak = tracker.get_tracker_snapshot("peak")
    (device_stats,) = peak.values()
    return {str(kind).rsplit(".", 1)[-1]: int(value) for kind, value in device_stats.items()}


def lora_training_flops(config: dict[str, Any], seq_len: int, *, rank: int = 16,
                        targets: str | list[str] = "all-linear") -> int:
    """FLOPs FlopCounterMode counts for one forward + backward of a `lora_model` (eager attention, meta
    device, one sequence)."""
    model = lora_model(config, rank=rank, targets=targets, attention="eager")
    ids = torch.randint(0, config["vocab_size"], (1, seq_len)).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


def nf4_bytes(rows: int, cols: int) -> int:
    """Bytes bitsandbytes holds for one ``rows`` × ``cols`` weight quantised the QLoRA way
    (``quantize_4bit(blocksize=64, quant_type="nf4", compress_statistics=True)``, on the CPU): the packed
    codes, the quantised absmax, the nested absmax and both code books, the offset."""
    from bitsandbytes.functional import quantize_4bit

    weight = torch.randn(rows, cols, dtype=torch.bfloat16)
    packed, state = quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    tensors = [packed, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors)


def _sequence_log_probs(logits: Any, ids: Any) -> Any:
    """Each sequence's summed log-probability of its own next tokens, through the path HF's causal-LM loss
    takes (``ForCausalLMLoss``: logits upcast to fp32, labels padded and shifted, cross-entropy), unreduced."""
    import torch.nn.functional as F  # noqa: N812

    labels = F.pad(ids, (0, 1), value=-100)[..., 1:]
    per_token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                reduction="none")
    return -per_token.view(ids.shape).sum(-1)


def _base_of(peft_model: Any, config: dict[str, Any]) -> Any:
    """The `transformers` model under ``peft_model`` without its adapters, holding the very same (frozen)
    parameter tensors: what peft runs when its adapters are disabled."""
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        base = transformers.AutoModelForCausalLM.from_config(cfg)
    shared = {name.removeprefix("base_model.model.").replace(".base_layer", ""): param
              for name, param in peft_model.named_parameters() if "lora_" not in name}
    for name, _ in list(base.named_parameters()):
        module_name, _, attribute = name.rpartition(".")
        base.get_submodule(module_name)._parameters[attribute] = shared[name]
    for name, buffer in peft_model.named_buffers():
        module_name, _, attribute = name.removeprefix("base_model.model.").replace(".base_layer", "").rpartition(".")
        base.get_submodule(module_name)._buffers[attribute] = buffer
    base.eval()
    return base


def dpo_training_step_peak(config: dict[str, Any], seq_len: int, *, batch: int = 1, beta: float = 0.1,
                           lora_rank: int | None = None) -> dict[str, int]:
    """MemTracker's peak over a DPO step as TRL's ``DPOTrainer`` runs it, by category: the chosen and
    rejected sequences of ``batch`` examples concatenated into one batch of 2·batch; the frozen reference
    scores them under ``no_grad`` — a bf16 copy in eval mode, or with ``lora_rank`` (a `lora_model` on
    all linears) the policy with its adapters disabled (TRL's ``null_ref_context``), here the base model
    holding the policy's own frozen tensors (MemTracker refuses a module called twice in a step); the policy's forward,
    the DPO loss −log σ(β·((π_c − ref_c) − (π_r − ref_r))) (Rafailov et al. 2023, eq. 7), backward, AdamW
    (foreach) over the trained parameters. Built in bf16 in FakeTensorMode; two steps, the second's peak."""
    from contextlib import nullcontext

    import torch.nn.functional as F  # noqa: N812
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    if lora_rank is not None:
        policy = lora_model(config, rank=lora_rank, targets="all-linear")
        _as_fake(policy, mode)
        reference = _base_of(policy, config)
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with mode:
        if lora_rank is None:
            policy = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            reference = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            reference.requires_grad_(False)
            reference.eval()
            external, disabled = (policy, reference), nullcontext
        else:
            external, disabled = (policy, reference), nullcontext
        policy.train()
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6, foreach=True)
        ids = torch.randint(0, config["vocab_size"], (2 * batch, seq_len))  # chosen, then rejected

        def loss() -> Any:
            with torch.no_grad(), disabled():
                ref_logps = _sequence_log_probs(reference(input_ids=ids).logits, ids)
            logps = _sequence_log_probs(policy(input_ids=ids).logits, ids)
            margin = (logps[:batch] - ref_logps[:batch]) - (logps[batch:] - ref_logps[batch:])
            return -F.logsigmoid(beta * margin).mean()

        return _two_steps_peak(_frozen_aware_tracker(), opt, loss, *external)


def _fake_model(config: dict[str, Any], mode: Any) -> Any:
    """The HF causal LM of ``config`` in bf16 and eval mode, frozen, built inside FakeTensorMode ``mode``."""
    cfg = transformers.AutoConfig.for_model(**config)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with mode:
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.requires_grad_(False)
    model.eval()
    return model


def _peak(tracker: Any) -> dict[str, int]:
    (device_stats,) = tracker.get_tracker_snapshot("peak").values()
    return {str(kind).rsplit(".", 1)[-1]: int(value) for kind, value in device_stats.items()}


def scoring_forward_peak(config: dict[str, Any], seq_len: int, *, batch: int = 1) -> dict[str, int]:
    """MemTracker's peak by category over an RL scoring forward as verl and OpenRLHF run it for the
    reference or the old policy: ``no_grad``, ``use_cache=False``, the logits of ``batch`` full sequences,
    then each token's log-probability (``log_softmax`` in fp32, gathered). bf16 weights, FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    model = _fake_model(config, mode)
    with mode:
        ids = torch.randint(0, config["vocab_size"], (batch, seq_len))
        tracker = _frozen_aware_tracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            _sequence_log_probs(model(input_ids=ids, use_cache=False).logits, ids)
        return _peak(tracker)


def generation_peak(config: dict[str, Any], prompt: int, new_tokens: int, *, batch: int = 1) -> tuple[dict[str, int], int]:
    """MemTracker's peak by category over greedy generation — the prefill of ``batch`` prompts of
    ``prompt`` tokens keeping only the last position's logits (``logits_to_keep=1``, as ``generate`` does),
    then the decode steps through a ``DynamicCache`` that generate the other ``new_tokens`` − 1 — and the bytes the cache holds at the end
    (every layer's keys and values). The peak is the largest of the calls' (MemTracker follows one call of
    each module between resets). bf16 weights, no_grad, FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    model = _fake_model(config, mode)
    with mode:
        ids = torch.randint(0, config["vocab_size"], (batch, prompt))
        cache = transformers.DynamicCache(config=model.config)
        tracker = _frozen_aware_tracker()
        tracker.track_external(model)
        peaks = []
        with tracker, torch.no_grad():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            for _ in range(new_tokens - 1):  # the prefill's logits gave the first new token
                peaks.append(_peak(tracker))
                tracker.reset_mod_stats()  # MemTracker follows one call of a module per reset
                token = out.logits[:, -1:].argmax(-1)
                out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            peaks.append(_peak(tracker))
        held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        return max(peaks, key=lambda p: sum(p.values())), held
