"""Time per RL step of the CPU preset in two configurations, alternating in one process on the
same rollouts, and how close each part runs to the machine's limits.

The two arms: ``before``, the preset with the optimisation in fp32 (the default until bf16
autocast), and ``after``, the same with bf16 autocast (``training.bf16``; fp32 master weights and
optimizer state). Each step starts both arms from the same weights, optimizer state and torch RNG
state, so they sample the same rollouts (checked token for token and reported); which arm goes
first alternates from step to step, and the run continues from the ``after`` arm's weights. Each
arm's step runs the trainer's own code (``training_step`` generates and scores the batch on its
first micro-batch, then clipping, the optimizer and the scheduler as HF's loop runs them); steps
2..N are summarised (median and range), step 1 also pays for memory touched for the first time.

Model FLOP utilisation of the optimisation is against the matmul throughput of the dtype doing the
work (fp32 before, bf16 after), measured in the same process before and after the steps. FLOPs are
counted per token: the body 2*(P - E) per token forward, the tied LM head 2*E only on completion
tokens, backward twice the forward, the reference model's forward (beta > 0), and attention's
matmuls (causal, over each packed row: 2 * layers * width * L^2 a row forward, from the trainer's
``tokens/length_sq``). Rollout decoding is reported as the fraction of the memory-bandwidth
roofline one decoding step reaches at batch 32 over a 300-token cache (every weight and every
cached key and value read once, at the streaming rate a plain sum reaches in the same process),
and as the fraction of the rollouts' decoding steps that ran below half their batch.
``--baselines`` adds plain ``generate`` against ``KVDecoder`` on one batch and on the step's
greedy rollouts.

Run: ``python benchmarks/train_step.py [--steps 4] [--out docs/results/train_step.json]``.
"""

from __future__ import annotations

import dataclasses
import os
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


def baseline_mfu(model, tokenizer, peak: float, body: int, head: int, how: str) -> float:
    """MFU of one batch (32 distinct 200-token prompts, up to 64 sampled tokens each) against
    ``peak``; ``how``: ``generate`` or ``KVDecoder`` (which runs ``DecodeStep`` where it applies)."""
    from zerosearch.generation.kv import KVDecoder

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
    :class:`zerosearch.cpu.decode_step.DecodeStep` (what KVDecoder runs where it applies) instead of
    the model's forward."""
    from transformers.cache_utils import Cache

    from zerosearch.generation.kv import BufferLayer

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
    from zerosearch.generation.hf import HFGenerator
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


def decode_bytes(model, batch: int, context: int = 300) -> int:
    """Bytes one decoding step must read at least: every weight once and every row's cached keys
    and values (in the model's dtype)."""
    cfg = model.config
    size = torch.finfo(model.dtype).bits // 8
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    params = sum(p.numel() for p in model.parameters())
    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * context * head_dim * size
    return params * size + kv


ARMS = {"before": False, "after": True}
"""The two configurations timed: the CPU preset with fp32 optimisation (the default before bf16
autocast) and with bf16 autocast (``training.bf16`` on); everything else is the preset's."""


def _inputs(rows, num_generations: int) -> list[dict]:
    """One generation batch as TRL's sampler hands it over: each question ``num_generations``
    times in a row."""
    return [{"prompt": r.question, "question": r.question, "golden_answers": r.golden_answers,
             "id": str(r.id)} for r in rows for _ in range(num_generations)]


def _state(trainer) -> dict:
    """A copy of everything a step changes: weights, optimizer and scheduler state, torch RNG."""
    import copy

    return {"model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.lr_scheduler.state_dict()),
            "rng": torch.get_rng_state()}


def _restore(trainer, state: dict) -> None:
    import copy

    with torch.no_grad():
        trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    trainer.lr_scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
    torch.set_rng_state(state["rng"])


def timed_step(trainer, inputs: list[dict], step: int, accumulation: int) -> dict:
    """One optimizer step through the trainer's own code (``training_step`` generates and scores
    the batch on its first micro-batch, as in ``train()``), then clipping, the optimizer and the
    scheduler as HF's loop runs them. Returns its time split, token counts and decoding stats."""
    trainer.state.global_step = step - 1
    trainer._step, trainer._buffered_inputs = 0, None
    decoders = []
    original = trainer._generator

    def spy(model):
        generator = original(model)
        decoders.append(generator.decoder)
        return generator

    trainer._generator = spy
    gen0, search0 = trainer.timings.generation_s, trainer.timings.search_s
    trainer.model.train()
    started = time.perf_counter()
    for _ in range(accumulation):
        trainer.training_step(trainer.model, inputs, None)
    trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad(set_to_none=True)
    total = time.perf_counter() - started
    trainer._generator = original
    metrics = trainer._metrics["train"]
    gen = trainer.timings.generation_s - gen0
    search = trainer.timings.search_s - search0
    batch = trainer._buffered_inputs
    completions = torch.cat([b["completion_ids"] * b["completion_mask"] for b in batch]) if batch else None
    out = {"step": step, "step_s": total, "generation_s": gen, "search_s": search,
           "optimisation_s": max(total - gen - search, 0.0),
           "tokens": {key: metrics[f"tokens/{key}"][-1] for key in
                      ("prompt", "completion", "generated", "length_sq")},
           "decode_steps": sum(d.decode_steps for d in decoders if d is not None),
           "decode_steps_below_half": sum(d.decode_steps_below_half for d in decoders if d is not None),
           "decoded_rows": sum(d.decoded_rows for d in decoders if d is not None),
           "completion_ids": sorted(map(tuple, completions.tolist())) if completions is not None else []}
    for values in metrics.values():
        values.clear()
    return out


def optimisation_flops(tokens: dict, body: int, head: int, layers: int, width: int, ref: int,
                       num_generations: int) -> tuple[float, float]:
    """(optimisation FLOPs with attention's matmuls, without) for one step's tokens: forward of the
    body over every token, the LM head over completion tokens, backward twice the forward, the
    reference forward when ``ref``; causal attention 2 * layers * width * L^2 per packed row."""
    per_fwd = 2 * body * (tokens["prompt"] + tokens["completion"]) + 2 * head * tokens["completion"]
    attn_fwd = 2 * layers * width * tokens["length_sq"]
    return (3 + ref) * (per_fwd + attn_fwd), (3 + ref) * per_fwd


def main(steps: int = typer.Option(4, help="Steps per configuration (step 1 is reported, not summarised)."),
         prompts_per_step: int = typer.Option(8, help="Questions per step."),
         num_generations: int = typer.Option(4, help="Rollouts per question (8 x 4 = batch 32)."),
         micro_batch_size: int = typer.Option(8, help="Rollouts per forward/backward."),
         max_completion_tokens: Optional[int] = typer.Option(
             None, help="Override the preset's rollout budget (smaller: a quicker, less faithful run)."),
         baselines: bool = typer.Option(False, "--baselines/--no-baselines",
                                        help="Also time generate / KVDecoder on one batch and the greedy rollouts."),
         shared: Path = typer.Option(SHARED, help="The shared data folder (qa/, corpus/)."),
         out: Optional[Path] = typer.Option(None, help="Default runs/bench/train_step.json.")):
    from zerosearch.generation.hf import generation_copy
    from zerosearch.qa import load_qa
    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import build_trainer

    out = out or ROOT / "runs" / "bench" / "train_step.json"
    if steps < 2:
        raise typer.BadParameter("--steps must be >= 2 (step 1 pays for first-touch memory)")
    torch.manual_seed(0)
    peaks = {"float32": [matmul_flops()], "bfloat16": [matmul_flops(torch.bfloat16)]}
    console.print(f"matmul on {torch.get_num_threads()} threads: fp32 {peaks['float32'][0] / 1e9:.0f}, "
                  f"bf16 {peaks['bfloat16'][0] / 1e9:.0f} GFLOP/s")
    run_dir = ROOT / "runs" / "bench" / "train_step_run"
    rollout = {} if max_completion_tokens is None else {"max_completion_tokens": max_completion_tokens}
    # the "before" arm's trainer: fp32 optimisation (training.bf16 off, so accelerate adds no
    # autocast of its own); the "after" arm switches the trainer's bf16 autocast on
    cfg = load_train_config(ROOT / "configs" / "cpu-smollm2.yaml", {
        "data": {"train": str(shared / "qa" / "train" / "hotpot_2wiki.jsonl"), "limit": 256},
        "engine": {"kind": "bm25", "corpus": str(shared / "corpus" / "wiki_passages.jsonl")},
        "rollout": rollout,
        "algorithm": {"num_generations": num_generations},
        "training": {"output_dir": str(run_dir), "max_steps": steps,
                     "prompts_per_step": prompts_per_step, "micro_batch_size": micro_batch_size,
                     "save_steps": 10_000, "report_to": [], "generation_batch_size": 64,
                     "bf16": False}})
    from zerosearch.hardware import runtime_choices

    if not runtime_choices("cpu").bf16_native:
        console.print("[yellow]this CPU has no native bf16: the after arm is emulated bf16[/]")
    trainer = build_trainer(cfg, log=lambda m: console.print(f"[dim]{m}[/]"))
    accumulation = trainer.args.gradient_accumulation_steps
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    trainer.state.max_steps = steps
    trainer.current_gradient_accumulation_steps = accumulation
    questions = load_qa(cfg.data.train, limit=cfg.data.limit)
    model = trainer.model
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    body = total - head
    layers = model.config.num_hidden_layers
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    width = model.config.num_attention_heads * head_dim
    ref = 1 if cfg.algorithm.beta else 0

    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    identical = []
    try:
        for step in range(1, steps + 1):
            rows = questions[(step - 1) * prompts_per_step: step * prompts_per_step]
            inputs = _inputs(rows, num_generations)
            start = _state(trainer)
            order = list(ARMS) if step % 2 else list(ARMS)[::-1]  # alternate which arm goes first
            kept = None
            for arm in order:
                _restore(trainer, start)
                trainer.autocast_bf16 = ARMS[arm]
                r = timed_step(trainer, inputs, step, accumulation)
                results[arm].append(r)
                console.print(f"step {step} {arm}: {r['step_s']:.1f} s (generation {r['generation_s']:.1f}, "
                              f"search {r['search_s']:.2f}, optimisation {r['optimisation_s']:.1f})")
                if arm == "after":
                    kept = _state(trainer)  # the run continues on the new default's weights
            identical.append(results["before"][-1].pop("completion_ids")
                             == results["after"][-1].pop("completion_ids"))
            _restore(trainer, kept)
            del start, kept
    finally:
        trainer.engine.close()

    # the same process, right after: peaks again, read bandwidth, decoding steps at batch 32
    peaks["float32"].append(matmul_flops())
    peaks["bfloat16"].append(matmul_flops(torch.bfloat16))
    peak = {dtype: sum(v) / len(v) for dtype, v in peaks.items()}
    bandwidth = read_bandwidth()
    from zerosearch.cpu.decode_step import build

    model = model.eval()
    model_bf16 = generation_copy(model, torch.bfloat16)
    gen_dtype = str(trainer._gen_copy.dtype if trainer._gen_copy is not None else model.dtype).removeprefix("torch.")
    decoder_model = model_bf16 if gen_dtype == "bfloat16" else model
    written_out = build(decoder_model, 32) is not None
    decode_s = decode_step_seconds(decoder_model, 32, written_out=written_out)
    roofline_s = decode_bytes(decoder_model, 32) / bandwidth
    decode = {"batch": 32, "context": 300, "dtype": gen_dtype, "decode_step": written_out,
              "seconds": decode_s, "roofline_seconds": roofline_s,
              "roofline_fraction": roofline_s / decode_s, "read_bandwidth_gbs": bandwidth / 1e9,
              "achieved_gbs": decode_bytes(decoder_model, 32) / decode_s / 1e9}

    opt_dtype = {"before": "float32", "after": "bfloat16"}
    for arm, rs in results.items():
        for r in rs:
            with_attn, without = optimisation_flops(r["tokens"], body, head, layers, width, ref,
                                                    num_generations)
            r["optimisation_mfu"] = with_attn / r["optimisation_s"] / peak[opt_dtype[arm]]
            r["optimisation_mfu_without_attention"] = without / r["optimisation_s"] / peak[opt_dtype[arm]]
            r["optimisation_vs_fp32_matmul"] = with_attn / r["optimisation_s"] / peak["float32"]
            r["decode_fraction_below_half"] = r["decode_steps_below_half"] / max(r["decode_steps"], 1)
    table = Table(title=f"RL step, CPU preset ({prompts_per_step} x {num_generations} rollouts, "
                        f"generation in {gen_dtype}); before = fp32 optimisation, after = bf16 autocast")
    for col in ("step", "arm", "step s", "generation s", "search s", "optimisation s", "opt MFU",
                "decode steps < half batch"):
        table.add_column(col, justify="right")
    for step in range(steps):
        for arm in ARMS:
            r = results[arm][step]
            table.add_row(str(r["step"]), arm, f"{r['step_s']:.1f}", f"{r['generation_s']:.1f}",
                          f"{r['search_s']:.2f}", f"{r['optimisation_s']:.1f}",
                          f"{r['optimisation_mfu']:.1%} of {opt_dtype[arm]}",
                          f"{r['decode_fraction_below_half']:.0%} of {r['decode_steps']}")
    console.print(table)

    def steady(arm, key):
        return [r[key] for r in results[arm][1:]]

    summary = {arm: {key: {"median": statistics.median(steady(arm, key)), "min": min(steady(arm, key)),
                           "max": max(steady(arm, key))}
                     for key in ("step_s", "generation_s", "optimisation_s", "optimisation_mfu",
                                 "optimisation_vs_fp32_matmul", "decode_fraction_below_half")}
               for arm in ARMS}
    speedup = summary["before"]["step_s"]["median"] / summary["after"]["step_s"]["median"]
    opt_speedup = summary["before"]["optimisation_s"]["median"] / summary["after"]["optimisation_s"]["median"]
    below = (sum(r["decode_steps_below_half"] for rs in results.values() for r in rs[1:])
             / max(sum(r["decode_steps"] for rs in results.values() for r in rs[1:]), 1))
    console.print(f"steps 2..{steps}: step {summary['before']['step_s']['median']:.1f} s before, "
                  f"{summary['after']['step_s']['median']:.1f} s after: {speedup:.2f}x "
                  f"(optimisation {opt_speedup:.2f}x); optimisation MFU "
                  f"{summary['before']['optimisation_mfu']['median']:.1%} of fp32 before, "
                  f"{summary['after']['optimisation_mfu']['median']:.1%} of bf16 after; "
                  f"token-identical rollouts: {all(identical)}")
    console.print(f"decoding step at batch 32 ({gen_dtype}{', DecodeStep' if written_out else ''}): "
                  f"{1000 * decode_s:.0f} ms, {decode['roofline_fraction']:.1%} of the "
                  f"{bandwidth / 1e9:.1f} GB/s roofline; {below:.0%} of the rollouts' decoding steps "
                  "ran below half their batch")

    extra = {}
    if baselines:
        tokenizer = trainer.processing_class
        extra["baseline_mfu"] = {how: baseline_mfu(lm, tokenizer, peak["float32"], body, head, kind)
                                 for how, lm, kind in (("generate", model, "generate"),
                                                       ("KVDecoder", model, "KVDecoder"),
                                                       ("KVDecoder bf16", model_bf16, "KVDecoder"))}
        extra["greedy_rollouts"] = rollout_comparison(model, model_bf16, tokenizer, cfg, body, head,
                                                      num_generations, prompts_per_step)
    import platform
    import sys

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                  if line.startswith("flags")), [])
    load = open("/proc/loadavg").read().split()[:3]
    machine = (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
               f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; "
               f"bf16: {', '.join(f for f in ('amx_bf16', 'avx512_bf16') if f in flags) or 'none'}; "
               f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:]),
        "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_end": [float(x) for x in load],
        "step_s": {arm: [r["step_s"] for r in rs[1:]] for arm, rs in results.items()},
        "speedup": speedup, "optimisation_speedup": opt_speedup,
        "opt_mfu": summary["after"]["optimisation_mfu"]["median"], "opt_dtype": "bfloat16",
        "opt_mfu_before": summary["before"]["optimisation_mfu"]["median"],
        "decode_roofline_fraction": decode["roofline_fraction"],
        "decode_steps_below_half_batch": below,
        "token_identical_rollouts": identical,
        "matmul_gflops": {dtype: [v / 1e9 for v in vs] for dtype, vs in peaks.items()},
        "settings": {"prompts_per_step": prompts_per_step, "num_generations": num_generations,
                     "micro_batch_size": micro_batch_size, "steps": steps,
                     "max_completion_tokens": cfg.rollout.max_completion_tokens,
                     "generation_dtype": gen_dtype},
        "summary_steps_2_to_n": summary, "decode_step_batch_32": decode,
        "steps": results, **extra}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
