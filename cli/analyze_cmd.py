"""`plan analyze`: architecture, parameter breakdown, FLOPs per token and weight memory of one model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from parallelplan.cli.format import count, flops, gib, table

if TYPE_CHECKING:
    from parallelplan.models.report import ModelReport


@click.command()
@click.option("--model", "-m", "model_ref", required=True,
              help="Preset name or alias (see `plan presets`), a config.json or its folder, or a HF repo id.")
@click.option("--seq-len", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Sequence length for FLOPs per token (tokens).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON (models.report.ModelReport).")
def analyze(model_ref: str, seq_len: int, as_json: bool) -> None:
    """Parameters, FLOPs per token and weight memory of a model.

    \b
    Examples:
      plan analyze --model llama-3.1-405b
      plan analyze --model deepseek-v3 --seq-len 4096 --json
      plan analyze --model ./my-model/config.json
    """
    from parallelplan.models import load_model
    from parallelplan.models.report import analyze_model

    report = analyze_model(load_model(model_ref), seq_len)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    click.echo(_render(report))


def _render(report: ModelReport) -> str:
    spec, p, f = report.model, report.params, report.flops
    title = spec.display_name or spec.name
    lines = [f"{title}  [{spec.name}, {spec.architecture}]"]
    if spec.is_estimate:
        lines.append("ESTIMATE: not an official architecture (see the preset's sources).")
    attn = report.attention_kind.upper()
    heads = f"{spec.num_attention_heads} heads"
    if spec.mla is None:
        heads += f" x {spec.head_dim}, {spec.num_kv_heads} KV heads"
    else:
        heads += f", kv_lora_rank {spec.mla.kv_lora_rank}, q_lora_rank {spec.mla.q_lora_rank}"
    mlp = ("gated " if spec.mlp_gated else "") + spec.activation
    shape = [
        ("layers", f"{spec.num_layers}" + (f" ({report.num_moe_layers} MoE)" if spec.moe else "")),
        ("hidden size", spec.hidden_size),
        ("attention", f"{attn}, {heads}"),
        ("MLP", f"{mlp}, ffn {spec.ffn_hidden_size}" if spec.ffn_hidden_size else mlp),
        ("vocabulary", f"{spec.vocab_size} ({'tied' if spec.head_tied else 'untied'} embeddings)"),
    ]
    if spec.num_labels:
        shape.append(("head", f"{spec.num_labels}-wide classification head (a reward model or critic), not the LM head"))
    if spec.moe:
        m = spec.moe
        shared = f" + {m.num_shared_experts} shared ({m.shared_expert_ffn_hidden_size})" if m.num_shared_experts else ""
        shape.append(("experts", f"{m.num_experts} x ffn {m.expert_ffn_hidden_size}, top-{m.experts_per_token}{shared}"))
    if spec.sliding_window:
        shape.append(("sliding window", f"{spec.sliding_window} tokens on {spec.sliding_window_layers} layers"))
    if spec.mtp_layers:
        shape.append(("MTP modules", f"{spec.mtp_layers} (+{count(p.mtp)} params, not in the total)"))
    lines += ["", table(["architecture", ""], shape)]

    components = [
        ("embedding", p.embedding), ("attention", p.attention), ("dense MLP", p.dense_mlp), ("router", p.router),
        ("routed experts", p.routed_experts), ("shared experts", p.shared_experts), ("norms", p.norms),
        ("LM head", p.lm_head),
    ]
    rows = [(name, count(n), f"{100 * n / report.total_params:.1f}%") for name, n in components if n]
    rows.append(("total", count(report.total_params), "100.0%"))
    if spec.moe:
        rows.append(("active per token", count(report.active_params), f"{100 * report.active_params / report.total_params:.1f}%"))
    lines += ["", table(["parameters", "count", "share"], rows, right=(1, 2))]

    lines += ["", table(
        [f"FLOPs per token at seq {f.seq_len}", "FLOP"],
        [
            ("training, full attention (Megatron/PaLM convention)", flops(f.training_per_token)),
            ("training, causal attention (flash kernels)", flops(f.training_per_token_causal)),
            ("inference prefill (causal)", flops(f.prefill_per_token)),
            (f"inference decode, {f.seq_len}-token context", flops(f.decode_per_token)),
        ],
        right=(1,),
    )]
    weights = [(prec, gib(b)) for prec, b in report.weight_bytes.items()]
    weights.append(("KV cache per token (bf16)", f"{report.kv_cache_bytes_per_token / 2**10:.1f} KiB"))
    lines += ["", table(["weights in memory", "size"], weights, right=(1,))]
    return "\n".join(lines)
