"""A prepared check for one CUDA GPU: a few bf16 GRPO steps of SmolLM2 through the project's own
trainer (HF generation through ``KVDecoder``, no vLLM), the step time split into generation, search
and optimisation, MFU of each against the bf16 matmul throughput measured in the same process, and
checks that the CPU-only tuning stays off on a GPU.

Data: the fictional mini-world (generated here, no download) with BM25 over its corpus. Model:
``--model`` (default the embedded SmolLM2); ``--random-weights`` builds the same architecture from
that model's config and tokenizer with random weights, for machines where the weights cannot be
brought (the FLOPs per token and the shapes are the same; a random policy never stops early, so
every turn runs to ``--max-turn-tokens``). FLOPs are counted as in ``benchmarks/train_step.py``.

CPU-only tuning checked (each a failed check, exit status 1, when on):

- glibc malloc tuning (``hardware.keep_freed_memory``): ``train`` logs a line when it applies it;
- the oneDNN written-out decoding step (``decode_step.build``) must not be built for a CUDA model;
- rollouts from the policy itself (bf16 on CUDA), not from a second copy in another dtype;
- the memory-cap callback (a CPU-RAM heuristic) must not have released memory during the run.

Run: ``bash benchmarks/gpu_check.sh`` (writes runs/gpu_check/gpu_check.json). Never run so far: no
GPU was available in the session that wrote it (see docs/scaling.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "bm25s", "typer",
          "yaml", "rich", "httpx")


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def cuda_matmul_flops(n: int = 8192, reps: int = 10, tries: int = 3) -> float:
    """bf16 FLOP/s of an n x n x n product on the current GPU: the best of ``tries`` means of
    ``reps`` products (CUDA events, after warm-up). The best, so every MFU is a lower bound."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(tries):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000 / reps
        best = max(best, 2 * n ** 3 / seconds)
    del a, b
    torch.cuda.empty_cache()
    return best


def step_flops(record: dict, body: int, head: int, layers: int, width: int, generations: int,
               ref: int) -> tuple[float, float]:
    """(generation FLOPs, optimisation FLOPs) of one logged step, counted as train_step.py does."""
    prompt, completion = record["tokens/prompt"], record["tokens/completion"]
    generated = record["tokens/generated"]
    gen = 2 * body * (prompt / generations + completion) + 2 * head * generated
    per_fwd = 2 * body * (prompt + completion) + 2 * head * completion
    attn_fwd = 2 * layers * width * record.get("tokens/length_sq", 0)
    return gen, (3 + ref) * (per_fwd + attn_fwd)


def train_config(policy: str, world: Path, run_dir: Path, steps: int, prompts_per_step: int,
                 num_generations: int, micro_batch_size: int, max_turn_tokens: int):
    """The run's TrainConfig: GRPO in bf16 on the mini-world with BM25, HF generation."""
    from zerosearch.train.config import load_train_config

    return load_train_config(None, {
        "model": {"name": policy},
        "data": {"train": str(world / "train.jsonl"), "limit": 512},
        "engine": {"kind": "bm25", "corpus": str(world / "corpus.jsonl"), "topk": 3},
        "rollout": {"max_turns": 2, "max_turn_tokens": max_turn_tokens,
                    "max_completion_tokens": 3 * max_turn_tokens + 400, "max_obs_tokens": 200},
        "algorithm": {"name": "grpo", "num_generations": num_generations},
        "training": {"output_dir": str(run_dir), "max_steps": steps,
                     "prompts_per_step": prompts_per_step, "micro_batch_size": micro_batch_size,
                     "generation_batch_size": prompts_per_step * num_generations,
                     "save_steps": 10_000, "report_to": [], "bf16": True, "use_vllm": False}})


def random_model_dir(model: str, out: Path) -> str:
    """``model``'s config and tokenizer with random weights, saved to ``out`` (bf16)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from zerosearch.models import resolve_model

    path = resolve_model(model)
    config = AutoConfig.from_pretrained(path)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    lm.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return str(out)


def main(model: str = typer.Option("embedded:smollm2-135m-instruct", help="Policy model."),
         random_weights: bool = typer.Option(False, help="Random weights of --model's architecture."),
         steps: int = typer.Option(3, help="GRPO steps (the first is reported, not in the medians)."),
         prompts_per_step: int = typer.Option(16, help="Questions per step."),
         num_generations: int = typer.Option(8, help="Rollouts per question."),
         micro_batch_size: int = typer.Option(32, help="Rollouts per forward/backward."),
         max_turn_tokens: int = typer.Option(128, help="Tokens per policy turn."),
         out_dir: Path = typer.Option(ROOT / "runs" / "gpu_check", help="Run folder and results.")):
    missing = missing_packages()
    if missing:
        print(f"missing Python packages: {', '.join(missing)} (carry them as wheels; see "
              "docs/scaling.md, 'The prepared GPU check')", file=sys.stderr)
        raise typer.Exit(2)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine", file=sys.stderr)
        raise typer.Exit(2)
    checks: dict[str, dict] = {}
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}; bf16 {torch.cuda.is_bf16_supported()}")
    if importlib_has("vllm"):
        print("note: vllm is importable here; this check does not use it (training.use_vllm: false)")
    peaks = [cuda_matmul_flops()]
    print(f"bf16 matmul: {peaks[0] / 1e12:.0f} TFLOP/s")

    from zerosearch.miniworld import MiniWorldConfig, write_world
    from zerosearch.train import run as run_module

    out_dir.mkdir(parents=True, exist_ok=True)
    world = out_dir / "world"
    write_world(world, MiniWorldConfig())
    policy = random_model_dir(model, out_dir / "random-model") if random_weights else model
    run_dir = out_dir / "run"
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    cfg = train_config(policy, world, run_dir, steps, prompts_per_step, num_generations,
                       micro_batch_size, max_turn_tokens)
    lines: list[str] = []
    trainers = []
    build = run_module.build_trainer

    def capture(*args, **kwargs):  # keep the trainer to inspect it after the run
        trainers.append(build(*args, **kwargs))
        return trainers[-1]

    run_module.build_trainer = capture
    started = time.perf_counter()
    try:
        run_module.train(cfg, log=lambda m: (lines.append(m), print(m)))
    finally:
        run_module.build_trainer = build
    wall = time.perf_counter() - started
    peaks.append(cuda_matmul_flops())
    peak = sum(peaks) / len(peaks)
    trainer = trainers[0]

    from zerosearch.decode_step import build as build_decode_step

    lm = trainer.accelerator.unwrap_model(trainer.model)
    param = next(lm.parameters())
    checks["malloc tuning off"] = {"ok": not any("malloc keeps freed memory" in m for m in lines),
                                   "log": [m for m in lines if "malloc" in m]}
    checks["no oneDNN decode step for a CUDA model"] = {"ok": build_decode_step(lm) is None}
    checks["policy on CUDA in bf16, rollouts from it (no second copy)"] = {
        "ok": param.device.type == "cuda" and param.dtype == torch.bfloat16
        and trainer._gen_copy is None, "device": str(param.device), "dtype": str(param.dtype)}
    cap = next((c for c in trainer.callback_handler.callbacks if type(c).__name__ == "MemoryCap"), None)
    checks["memory-cap callback released nothing"] = {
        "ok": cap is None or type(cap).releases == 0,
        "releases": None if cap is None else type(cap).releases}

    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"reward"' in line]
    total = sum(p.numel() for p in lm.parameters())
    head = lm.get_output_embeddings().weight.numel()
    body = total - head
    layers = lm.config.num_hidden_layers
    head_dim = getattr(lm.config, "head_dim", None) or lm.config.hidden_size // lm.config.num_attention_heads
    width = lm.config.num_attention_heads * head_dim
    ref = 1 if cfg.algorithm.beta else 0
    results = []
    for r in rows:
        gen, opt = step_flops(r, body, head, layers, width, num_generations, ref)
        results.append({"step": r["step"], "step_s": r["time/step_s"],
                        "generation_s": r["time/generation_s"], "search_s": r["time/search_s"],
                        "optimisation_s": r["time/optimisation_s"],
                        "generated_tokens": r["tokens/generated"],
                        "generation_mfu": gen / r["time/generation_s"] / peak,
                        "optimisation_mfu": opt / r["time/optimisation_s"] / peak})
        print(f"step {r['step']}: {r['time/step_s']:.2f} s = generation {r['time/generation_s']:.2f} "
              f"+ search {r['time/search_s']:.2f} + optimisation {r['time/optimisation_s']:.2f}; "
              f"MFU generation {results[-1]['generation_mfu']:.1%}, optimisation "
              f"{results[-1]['optimisation_mfu']:.1%}")
    steady = results[1:] or results
    summary = {k: statistics.median(s[k] for s in steady) for k in (
        "step_s", "generation_s", "search_s", "optimisation_s", "generation_mfu", "optimisation_mfu")}
    report = {"device": device, "torch": torch.__version__, "model": model,
              "random_weights": random_weights, "parameters": total,
              "bf16_matmul_flops": peaks, "steps": results, "median_after_first": summary,
              "checks": checks, "wall_s": wall,
              "batch": {"prompts_per_step": prompts_per_step, "num_generations": num_generations,
                        "micro_batch_size": micro_batch_size, "max_turn_tokens": max_turn_tokens}}
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    for name, check in checks.items():
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {name}")
    print(f"wrote {out_dir / 'gpu_check.json'} ({wall:.0f} s of training)")
    if not all(c["ok"] for c in checks.values()):
        raise typer.Exit(1)


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    typer.run(main)
