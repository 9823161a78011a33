"""Time per RL step, its split, and model FLOP utilisation (MFU) of generation and optimisation,
each as a ratio to the matmul throughput measured in the same process.

Runs real training steps (GRPO, the embedded SmolLM2 policy, BM25 over ../shared/data/corpus) and
reads the per-step metrics the trainer logs. FLOPs are counted per token, not with 6N shortcuts that
flatter: the transformer body costs 2*(P - E) per token forward, the tied lm_head 2*E only where
logits are computed (generated tokens; completion tokens in training), backward twice the forward,
and the reference model's forward (beta > 0) counts as work. In generation each distinct context
token counts once: the prompt a GRPO group shares counts once per group, and re-reading the context
at every turn is overhead, not useful work. In the optimisation the attention matmuls count too
(causal, over each packed row: 2 * layers * width * L^2 a row forward, from the trainer's
``tokens/length_sq``; the JSON keeps the figure without them as well); in generation they are left
out (a few percent at these lengths), so the generation MFU is a lower bound.

For comparison it also measures, on one prefill-heavy batch (32 distinct 200-token prompts, 64 new
tokens), plain HF ``generate`` with its dynamic KV cache and our ``KVDecoder`` (what rollouts use),
counted the same way, and ``KVDecoder`` on bf16 weights (where it runs the written-out
``DecodeStep``); the same greedy rollouts with each; and one decoding step alone by batch size:
fp32, bf16 through the model's forward, and bf16 through ``DecodeStep``.

The issue's yardstick is the fp32 matmul (plain fp32 ``generate`` reaches about 20% of it), and
the batch-32 comparisons are all against it. Every MFU is also given as a ratio to the matmul
throughput *in the dtype that did the work*, which says how well the work used the hardware: with
``--generation-dtype bfloat16`` the rollouts run on a bf16 copy of the policy and their MFU is
against the bf16 matmul (about 6x the fp32 one here); the JSON also keeps each against the fp32
matmul, which says how much faster than an fp32 machine-limit the work ran, not how well it used
the hardware. ``--bf16`` runs the optimisation in bf16 mixed precision, its MFU likewise against
bf16. ``--compile`` sets ``training.compile``; ``--no-baselines`` times the training steps only.
Run: ``.venv/bin/python benchmarks/train_step.py [--bf16] [--generation-dtype bfloat16] [--compile]``
(about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
console = Console()


def matmul_flops(dtype=torch.float32, n: int = 2048, reps: int = 10, tries: int = 3) -> float:
    """FLOP/s of an n x n matmul in ``dtype``: the best of ``tries`` timings of ``reps`` products
    (single timings here vary by up to a third; the best is the machine's, and the MFU's
    denominator, so the best makes every MFU smaller, not larger)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(tries):
        started = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - started))
    return best


def read_bandwidth(megabytes: int = 256, reps: int = 10) -> float:
    """Bytes per second this process reads from memory (summing a tensor much larger than caches)."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    started = time.perf_counter()
    for _ in range(reps):
        data.sum()
    return data.numel() * 4 * reps / (time.perf_counter() - started)


def decode_roofline(model, peak: float, bandwidth: float, batch: int, context: int = 300) -> float:
    """The highest MFU one decoding step can reach at ``batch`` rows over a ``context``-token cache
    if it ran at full matmul speed and full read bandwidth at once: its FLOPs / peak against the time
    to read every weight once and every row's keys and values (in the model's dtype)."""
    cfg = model.config
    size = torch.finfo(model.dtype).bits // 8
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    params = sum(p.numel() for p in model.parameters())
    weights, flops = params * size, 2 * params * batch
    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * context * head_dim * size
    return (flops / peak) / max(flops / peak, (weights + kv) / bandwidth)


def baseline_mfu(model, tokenizer, peak: float, body: int, head: int, how: str) -> float:
    """MFU of one batch (32 distinct 200-token prompts, up to 64 sampled tokens each) against
    ``peak``; ``how``: ``generate`` or ``KVDecoder`` (which runs ``DecodeStep`` where it applies)."""
    from zerosearch.decoding import KVDecoder

    ids = torch.randint(100, 20000, (32, 200))
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :16], attention_mask=torch.ones_like(ids[:, :16]),
                       max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        started = time.perf_counter()
        if how == "generate":
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=64, min_new_tokens=64, do_sample=True,
                                 pad_token_id=tokenizer.pad_token_id)
            generated = out[:, ids.shape[1]:].numel()
        else:  # stops only at EOS, which random prompts rarely reach: count what it generated
            decoder = KVDecoder(model, tokenizer)
            generated = sum(len(g) for g in decoder.generate(ids.tolist(), 64, 1.0, 1.0))
        seconds = time.perf_counter() - started
    flops = 2 * body * (ids.numel() + generated) + 2 * head * generated
    return flops / seconds / peak


def decode_step_seconds(model, batch: int, context: int = 300, steps: int = 8,
                        written_out: bool = False) -> float:
    """Seconds of one decoding step alone (median of ``steps``) at ``batch`` rows over a
    ``context``-token cache, with KVDecoder's in-place cache: the ceiling of rollout decoding at that
    batch size (its MFU: (2 * body + 2 * head) * batch / seconds / peak). ``written_out``: through
    :class:`zerosearch.decode_step.DecodeStep` (what KVDecoder runs where it applies) instead of
    the model's forward."""
    from transformers.cache_utils import Cache

    from zerosearch.decoding import BufferLayer

    layers = []
    for layer in range(model.config.num_hidden_layers):
        buffer = BufferLayer(batch, context + steps)
        buffer.allocate(torch.empty(model.config.num_key_value_heads, 1,
                                    model.config.hidden_size // model.config.num_attention_heads,
                                    dtype=model.dtype))
        buffer.buf_k.normal_()
        buffer.buf_v.normal_()
        buffer.length = context
        layers.append(buffer)
    cache, mask = Cache(layers=layers), torch.ones(batch, context + steps, dtype=torch.long)
    tokens, times = torch.randint(100, 20000, (batch, 1)), []
    written = None
    if written_out:
        from zerosearch.cpu.decode_step import build

        written = build(model, batch)
        written.refresh()
    with torch.inference_mode():
        for step in range(steps):
            started = time.perf_counter()
            if written is not None:
                logits = written(tokens[:, 0], torch.full((batch,), context + step),
                                 mask[:, :context + step + 1], layers)
            else:
                logits = model(input_ids=tokens, attention_mask=mask[:, :context + step + 1],
                               position_ids=torch.full((batch, 1), context + step),
                               past_key_values=cache, use_cache=True).logits[:, -1]
            tokens = logits.argmax(-1, keepdim=True)
            times.append(time.perf_counter() - started)
    return sorted(times)[steps // 2]


def rollout_comparison(model, model_bf16, tokenizer, cfg, body: int, head: int,
                       num_generations: int, prompts: int) -> dict[str, dict]:
    """The same greedy rollouts (the first training questions, the preset's budgets, BM25) generated by
    ``generate`` and ``KVDecoder`` in fp32 and ``KVDecoder`` on bf16 weights, back to back: time,
    tokens/s and FLOPs of each (``main`` turns them into MFU)."""
    from zerosearch.engines.factory import build_engine
    from zerosearch.generation import HFGenerator
    from zerosearch.qa import load_qa
    from zerosearch.rollout import RolloutTimings, run_rollouts

    rows = [r for r in load_qa(cfg.data.train, limit=prompts) for _ in range(num_generations)]
    engine = build_engine(cfg.engine, log=lambda m: None)
    rollout = dataclasses.replace(cfg.rollout, temperature=0.0)
    eos = [tokenizer.eos_token_id]
    results, outputs = {}, {}
    runs = [("generate", model, False, "float32"), ("KVDecoder", model, True, "float32"),
            ("KVDecoder bf16", model_bf16, True, "bfloat16")]
    for name, lm, fast, dtype in runs:
        timings = RolloutTimings()
        trajs = run_rollouts(rows, HFGenerator(lm, tokenizer, 64, fast=fast), tokenizer, engine,
                             rollout, timings=timings, eos_token_ids=eos)
        generated = sum(sum(t.env_mask) for t in trajs)
        completion = sum(len(t.completion_ids) for t in trajs)
        distinct_prompt = sum(len(t.prompt_ids) for t in trajs) / num_generations
        flops = 2 * body * (distinct_prompt + completion) + 2 * head * generated
        results[name] = {"dtype": dtype, "generation_s": timings.generation_s, "flops": flops,
                         "generated_tokens": generated, "tokens_per_s": generated / timings.generation_s}
        outputs[name] = [t.completion_ids for t in trajs]
    results["same_tokens"] = outputs["generate"] == outputs["KVDecoder"]
    return results


def main(steps: int = typer.Option(2, help="Training steps to time (the first is reported too)."),
         prompts_per_step: int = typer.Option(8, help="Questions per step."),
         num_generations: int = typer.Option(4, help="Rollouts per question (8 x 4 = batch 32)."),
         micro_batch_size: int = typer.Option(8, help="Rollouts per forward/backward."),
         bf16: bool = typer.Option(False, "--bf16/--fp32", help="Optimisation precision."),
         generation_dtype: str = typer.Option("auto", help="training.generation_dtype of the run."),
         compile_layers: bool = typer.Option(False, "--compile/--no-compile",
                                             help="training.compile: torch.compile the decoder layers."),
         baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                        help="Also time generate / KVDecoder / decoding steps after training."),
         out: Optional[Path] = typer.Option(None, help="Default runs/bench/train_step[_bf16][_compile].json.")):
    from zerosearch.generation import generation_copy
    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import train
    from zerosearch.train.trainer import generation_dtype as resolve_generation_dtype

    out = out or ROOT / "runs" / "bench" / f"train_step{'_bf16' if bf16 else ''}{'_compile' if compile_layers else ''}.json"
    torch.manual_seed(0)
    peaks = {"float32": [matmul_flops()], "bfloat16": [matmul_flops(torch.bfloat16)]}
    console.print(f"matmul on {torch.get_num_threads()} threads: fp32 {peaks['float32'][0] / 1e9:.0f}, "
                  f"bf16 {peaks['bfloat16'][0] / 1e9:.0f} GFLOP/s")
    run_dir = ROOT / "runs" / "bench" / "train_step_run"
    cfg = load_train_config(ROOT / "configs" / "cpu-smollm2.yaml", {
        "data": {"train": str(SHARED / "qa" / "train" / "hotpot_2wiki.jsonl"), "limit": 256},
        "engine": {"kind": "bm25", "corpus": str(SHARED / "corpus" / "wiki_passages.jsonl")},
        "algorithm": {"num_generations": num_generations},
        "training": {"output_dir": str(run_dir), "max_steps": steps,
                     "prompts_per_step": prompts_per_step, "micro_batch_size": micro_batch_size,
                     "save_steps": 10_000, "report_to": [], "generation_batch_size": 64,
                     "bf16": bf16, "generation_dtype": generation_dtype, "compile": compile_layers}})
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    train(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"reward"' in line]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.models import resolve_model

    path = resolve_model(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gen_dtype = str(resolve_generation_dtype(generation_dtype, model) or model.dtype).removeprefix("torch.")
    model_bf16 = generation_copy(model, torch.bfloat16)
    models = {"float32": model, "bfloat16": model_bf16}
    tokenizer = AutoTokenizer.from_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = total - head
    layers = model.config.num_hidden_layers
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    width = model.config.num_attention_heads * head_dim  # query width of the attention matmuls
    baseline, rollouts, decode, roofline, bandwidth = {}, {}, {}, {}, 0.0
    batches = (4, 8, 16, 32, 64)
    if baselines:
        # every baseline against the fp32 matmul: the yardstick (plain fp32 generate ~20%)
        baseline = {how: baseline_mfu(lm, tokenizer, peaks["float32"][0], body, head, kind)
                    for how, lm, kind in (("generate", model, "generate"), ("KVDecoder", model, "KVDecoder"),
                                          ("KVDecoder bf16", model_bf16, "KVDecoder"))}
        baseline["KVDecoder bf16 vs bf16 matmul"] = (baseline["KVDecoder bf16"] * peaks["float32"][0]
                                                     / peaks["bfloat16"][0])
        rollouts = rollout_comparison(model, model_bf16, tokenizer, cfg, body, head, num_generations,
                                      prompts_per_step)
        decode = {dtype: {b: decode_step_seconds(lm, b) for b in batches} for dtype, lm in models.items()}
        from zerosearch.cpu.decode_step import build

        if build(model_bf16) is not None:  # the written-out step KVDecoder runs on bf16 weights here
            decode["bfloat16 DecodeStep"] = {b: decode_step_seconds(model_bf16, b, written_out=True)
                                             for b in batches}
    peaks["float32"].append(matmul_flops())
    peaks["bfloat16"].append(matmul_flops(torch.bfloat16))
    peak = {dtype: sum(v) / len(v) for dtype, v in peaks.items()}
    peak["bfloat16 DecodeStep"] = peak["bfloat16"]
    if baselines:
        bandwidth = read_bandwidth()
        roofline = {dtype: {b: decode_roofline(lm, peak[dtype], bandwidth, b) for b in batches}
                    for dtype, lm in models.items()}
    opt_dtype = "bfloat16" if bf16 else "float32"
    ref = 1 if cfg.algorithm.beta else 0
    table = Table(title=f"RL step on the CPU ({prompts_per_step} x {num_generations} rollouts; "
                        f"generation in {gen_dtype}, optimisation in {opt_dtype})")
    for col in ("step", "step s", "generation s", "gen tok/s", "search s", "optimisation s",
                "gen MFU", "gen vs fp32 mm", "opt MFU"):
        table.add_column(col, justify="right")
    results = []
    for r in rows:
        prompt, completion, generated = r["tokens/prompt"], r["tokens/completion"], r["tokens/generated"]
        distinct_prompt = prompt / num_generations  # a group's rollouts share one prompt
        gen_flops = 2 * body * (distinct_prompt + completion) + 2 * head * generated
        per_fwd = 2 * body * (prompt + completion) + 2 * head * completion
        # causal attention over each packed row: QK^T and PV, L^2 / 2 query-key pairs each
        attn_fwd = 2 * layers * width * r.get("tokens/length_sq", 0)
        opt_flops = (3 + ref) * (per_fwd + attn_fwd)
        gen_rate = gen_flops / r["time/generation_s"]
        gen_mfu, opt_mfu = gen_rate / peak[gen_dtype], opt_flops / r["time/optimisation_s"] / peak[opt_dtype]
        results.append({"step": r["step"], "step_s": r["time/step_s"],
                        "generation_s": r["time/generation_s"], "search_s": r["time/search_s"],
                        "generated_tokens_per_s": generated / r["time/generation_s"],
                        "optimisation_s": r["time/optimisation_s"], "tokens": {
                            "prompt": prompt, "completion": completion, "generated": generated},
                        "generation_mfu": gen_mfu, "optimisation_mfu": opt_mfu,
                        "optimisation_mfu_without_attention": (3 + ref) * per_fwd
                        / r["time/optimisation_s"] / peak[opt_dtype],
                        "generation_mfu_vs_fp32_matmul": gen_rate / peak["float32"],
                        # the definition used before 2026-11-21's KVDecoder: every prompt counted
                        "generation_mfu_every_prompt": (gen_flops + 2 * body * (prompt - distinct_prompt))
                        / r["time/generation_s"] / peak[gen_dtype]})
        table.add_row(str(r["step"]), f"{r['time/step_s']:.1f}", f"{r['time/generation_s']:.1f}",
                      f"{generated / r['time/generation_s']:.0f}",
                      f"{r['time/search_s']:.2f}", f"{r['time/optimisation_s']:.1f}",
                      f"{gen_mfu:.1%}", f"{gen_rate / peak['float32']:.1%}", f"{opt_mfu:.1%}")
    console.print(table)
    steady = results[1:] or results  # the first step also pays for first-touch memory
    summary = {key: statistics.median(r[key] for r in steady) for key in (
        "step_s", "generation_s", "optimisation_s", "generation_mfu", "generation_mfu_vs_fp32_matmul",
        "optimisation_mfu", "optimisation_mfu_without_attention")}
    summary["steps"] = [r["step"] for r in steady]
    console.print(f"median of steps {summary['steps']} (step 1 also faults in its memory): "
                  f"step {summary['step_s']:.1f} s, generation {summary['generation_mfu']:.1%} "
                  f"({summary['generation_mfu_vs_fp32_matmul']:.1%} of fp32 matmul), "
                  f"optimisation {summary['optimisation_mfu']:.1%} "
                  f"({summary['optimisation_mfu_without_attention']:.1%} without attention's matmuls)")
    for how, mfu in baseline.items():
        console.print(f"{how}, batch 32 (200-token prompts, 64 new): {mfu:.1%}"
                      + ("" if "vs" in how else " of the fp32 matmul"))
    for how, r in rollouts.items():
        if how == "same_tokens":
            continue
        r["mfu"] = r["flops"] / r["generation_s"] / peak[r["dtype"]]
        r["mfu_vs_fp32_matmul"] = r["flops"] / r["generation_s"] / peak["float32"]
        console.print(f"greedy rollouts of the step's questions with {how}: {r['generation_s']:.1f} s, "
                      f"{r['generated_tokens']} tokens, {r['tokens_per_s']:.0f} tokens/s, "
                      f"{r['mfu']:.1%} of the {r['dtype']} matmul ({r['mfu_vs_fp32_matmul']:.1%} of fp32's)")
    if rollouts:
        console.print(f"identical tokens (generate, KVDecoder fp32): {rollouts['same_tokens']}")
    decode_mfu = {dtype: {b: (2 * body + 2 * head) * b / sec / peak[dtype] for b, sec in v.items()}
                  for dtype, v in decode.items()}
    decode_vs_fp32 = {dtype: {b: (2 * body + 2 * head) * b / sec / peak["float32"]
                              for b, sec in v.items()} for dtype, v in decode.items()}
    for dtype, v in decode.items():
        console.print(f"one decoding step alone ({dtype}, 300-token cache), by batch size: " + ", ".join(
            f"{b}: {1000 * sec:.0f} ms, {decode_mfu[dtype][b]:.1%}"
            + (f" ({decode_vs_fp32[dtype][b]:.1%} of fp32 matmul)" if dtype != "float32" else "")
            for b, sec in v.items()))
        if dtype in roofline:
            console.print(f"  its roofline at {bandwidth / 1e9:.0f} GB/s read bandwidth (weights and "
                          "KV read once, at full matmul speed): " + ", ".join(
                              f"{b}: {r:.1%}" for b, r in roofline[dtype].items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "matmul_gflops": peak["float32"] / 1e9,
                               "matmul_bf16_gflops": peak["bfloat16"] / 1e9,
                               "generation_dtype": gen_dtype, "optimisation_precision": opt_dtype,
                               "compile": compile_layers,
                               "threads": torch.get_num_threads(), "steps": results,
                               "steady_state_median": summary,
                               "baseline_mfu": baseline, "greedy_rollouts": rollouts,
                               "decode_step_seconds": decode, "decode_step_mfu": decode_mfu,
                               "decode_step_mfu_vs_fp32_matmul": decode_vs_fp32,
                               "read_bandwidth_gbs": bandwidth / 1e9, "decode_step_roofline": roofline},
                              indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
