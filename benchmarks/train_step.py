"""Time per RL step, its split, and model FLOP utilisation (MFU) of generation and optimisation,
each as a ratio to the matmul throughput measured in the same process.

Runs real training steps (GRPO, the embedded SmolLM2 policy, BM25 over ../shared/data/corpus) and
reads the per-step metrics the trainer logs. FLOPs are counted per token, not with 6N shortcuts that
flatter: the transformer body costs 2*(P - E) per token forward, the tied lm_head 2*E only where
logits are computed (generated tokens; completion tokens in training), backward twice the forward,
and the reference model's forward (beta > 0) counts as work. Each context token counts once in
generation: re-reading the context at every turn is overhead, not useful work. Attention's
sequence-squared terms are left out (a few percent at these lengths), so the MFU is a lower bound.

For comparison it also measures plain HF ``generate`` (batch 32, 200-token prompts, 64 new tokens)
the same way, with transformers' dynamic KV cache (what rollouts use) and with its static cache.
``--bf16`` runs the optimisation in bf16 mixed precision (CPUs with AMX / AVX512-BF16); its MFU is
then a ratio to the bf16 matmul throughput, measured in the same process too.
Run: ``.venv/bin/python benchmarks/train_step.py [--bf16]`` (about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
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


def matmul_flops(dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - started)


def plain_generate_mfu(model, tokenizer, peak: float, body: int, head: int, cache: str) -> float:
    ids = torch.randint(100, 20000, (32, 200))
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :16], attention_mask=torch.ones_like(ids[:, :16]),
                       max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        started = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64,
                       min_new_tokens=64, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                       cache_implementation="static" if cache == "static" else None)
        seconds = time.perf_counter() - started
    flops = 2 * body * (ids.numel() + 32 * 64) + 2 * head * 32 * 64
    return flops / seconds / peak


def main(steps: int = typer.Option(2, help="Training steps to time (the first is reported too)."),
         prompts_per_step: int = typer.Option(8, help="Questions per step."),
         num_generations: int = typer.Option(4, help="Rollouts per question (8 x 4 = batch 32)."),
         micro_batch_size: int = typer.Option(8, help="Rollouts per forward/backward."),
         bf16: bool = typer.Option(False, "--bf16/--fp32", help="Optimisation precision."),
         out: Optional[Path] = typer.Option(None, help="Default runs/bench/train_step[_bf16].json.")):
    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import train

    out = out or ROOT / "runs" / "bench" / f"train_step{'_bf16' if bf16 else ''}.json"
    torch.manual_seed(0)
    peak = matmul_flops()
    console.print(f"matmul fp32: {peak / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    peak_bf16 = matmul_flops(torch.bfloat16) if bf16 else None
    if peak_bf16:
        console.print(f"matmul bf16: {peak_bf16 / 1e9:.0f} GFLOP/s")
    run_dir = ROOT / "runs" / "bench" / "train_step_run"
    cfg = load_train_config(ROOT / "configs" / "cpu-smollm2.yaml", {
        "data": {"train": str(SHARED / "qa" / "train" / "hotpot_2wiki.jsonl"), "limit": 256},
        "engine": {"kind": "bm25", "corpus": str(SHARED / "corpus" / "wiki_passages.jsonl")},
        "algorithm": {"num_generations": num_generations},
        "training": {"output_dir": str(run_dir), "max_steps": steps,
                     "prompts_per_step": prompts_per_step, "micro_batch_size": micro_batch_size,
                     "save_steps": 10_000, "report_to": [], "generation_batch_size": 64,
                     "bf16": bf16}})
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    train(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"reward"' in line]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.models import resolve_model

    path = resolve_model(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = total - head
    baseline = {cache: plain_generate_mfu(model, tokenizer, peak, body, head, cache)
                for cache in ("dynamic", "static")}
    peak_end = matmul_flops()
    peak = (peak + peak_end) / 2
    if peak_bf16:
        peak_bf16 = (peak_bf16 + matmul_flops(torch.bfloat16)) / 2
    opt_peak = peak_bf16 or peak
    ref = 1 if cfg.algorithm.beta else 0
    table = Table(title=f"RL step on the CPU ({prompts_per_step} x {num_generations} rollouts, "
                        f"optimisation in {'bf16' if bf16 else 'fp32'})")
    for col in ("step", "step s", "generation s", "search s", "optimisation s", "gen MFU", "opt MFU"):
        table.add_column(col, justify="right")
    results = []
    for r in rows:
        prompt, completion, generated = r["tokens/prompt"], r["tokens/completion"], r["tokens/generated"]
        gen_flops = 2 * body * (prompt + completion) + 2 * head * generated
        per_fwd = 2 * body * (prompt + completion) + 2 * head * completion
        opt_flops = 3 * per_fwd + ref * per_fwd
        gen_mfu = gen_flops / r["time/generation_s"] / peak
        opt_mfu = opt_flops / r["time/optimisation_s"] / opt_peak
        results.append({"step": r["step"], "step_s": r["time/step_s"],
                        "generation_s": r["time/generation_s"], "search_s": r["time/search_s"],
                        "optimisation_s": r["time/optimisation_s"], "tokens": {
                            "prompt": prompt, "completion": completion, "generated": generated},
                        "generation_mfu": gen_mfu, "optimisation_mfu": opt_mfu})
        table.add_row(str(r["step"]), f"{r['time/step_s']:.1f}", f"{r['time/generation_s']:.1f}",
                      f"{r['time/search_s']:.2f}", f"{r['time/optimisation_s']:.1f}",
                      f"{gen_mfu:.1%}", f"{opt_mfu:.1%}")
    console.print(table)
    for cache, mfu in baseline.items():
        console.print(f"plain HF generate, batch 32 (200-token prompts, 64 new), {cache} cache: "
                      f"{mfu:.1%} of matmul")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "matmul_gflops": peak / 1e9,
                               "matmul_bf16_gflops": peak_bf16 / 1e9 if peak_bf16 else None,
                               "optimisation_precision": "bf16" if bf16 else "fp32",
                               "threads": torch.get_num_threads(), "steps": results,
                               "plain_generate_mfu": baseline}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
