"""Evaluation throughput: questions per second of the search agent on the seven shared QA sets with
BM25, today's batching against the one before pooling, timed in one process on the same questions.

    python benchmarks/eval_throughput.py                        # 20 questions a set, as eval_smollm2.sh
    python benchmarks/eval_throughput.py --limit 4 --repeats 2  # a quick look

Two configurations of ``zerosearch.evaluate.evaluate`` with the same policy object, engine and
rollout budget (greedy, 2 searches, 64 tokens a turn, top-3, batch 32, as
``benchmarks/eval_smollm2.sh``):

- ``before``: each dataset batched alone, every row reads the whole prompt (the evaluation as it was
  before pooling and shared prefixes);
- ``after``: the library's defaults, batches filled across datasets (``EvalConfig.pool_datasets``) and
  the instruction template read once per call (``KVDecoder.share_prefix``).

After an untimed warm-up of both (one question a set), each repeat runs both, alternating which
goes first, each into a fresh folder. Reported: seconds,
questions per second and the ratio; the decoder's work (context tokens read, decoding steps, mean
rows per step, steps below half their batch); and whether the two gave the same predictions (greedy:
they should, up to floating-point order in differently shaped batches). Results go to
``<output-dir>/eval_throughput.json`` after every timed run; ``--copy-to`` copies the final file.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import typer

from zerosearch.eval_gap import read_run
from zerosearch.evaluate import EvalConfig, evaluate
from zerosearch.qa import BENCHMARKS
from zerosearch.rollout import RolloutConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = {"before": {"pool_datasets": False, "share_prefix": False},
           "after": {"pool_datasets": True, "share_prefix": True}}


def _counters(decoder) -> dict:
    return {k: getattr(decoder, k) for k in ("read_tokens", "prefill_tokens", "reused_tokens",
                                             "shared_tokens", "decode_steps", "decoded_rows",
                                             "decode_steps_below_half")}


def _reset(decoder) -> None:
    for k in _counters(decoder):
        setattr(decoder, k, 0)


def main(
    output_dir: str = typer.Option("runs/eval_throughput", "--output-dir", "-o"),
    limit: int = typer.Option(20, help="Questions per dataset."),
    repeats: int = typer.Option(1, help="Timed runs of each configuration (alternating order)."),
    batch_size: int = typer.Option(EvalConfig.batch_size, help="Questions per batch, both configurations."),
    model: str = typer.Option("embedded:smollm2-135m-instruct", help="Policy."),
    data_dir: Path = typer.Option(SHARED / "qa", help="Folder of the QA sets."),
    corpus: Path = typer.Option(SHARED / "corpus" / "wiki_passages.jsonl", help="BM25 corpus."),
    copy_to: str = typer.Option(None, help="Also write the results file here (docs/results/...)."),
) -> None:
    import torch

    from zerosearch.engines import EngineConfig, build_engine
    from zerosearch.generation.endpoint import load_policy_anywhere
    from zerosearch.learning import machine

    for path in (data_dir, corpus):
        if not path.exists():
            raise typer.BadParameter(f"{path} not found (the shared QA sets and corpus, "
                                     "../shared/data beside the repository)")
    out = Path(output_dir)
    if out.exists():
        shutil.rmtree(out)  # every timed run starts from an empty folder
    out.mkdir(parents=True)
    engine = build_engine(EngineConfig(kind="bm25", corpus=str(corpus), topk=3))
    generator, tokenizer = load_policy_anywhere(model, "cpu", [], None)
    decoder = getattr(generator, "decoder", None)
    if decoder is None:
        raise SystemExit(f"{model} is not served by the KV decoder: nothing to compare")
    rollout = RolloutConfig(temperature=0.0, max_turns=2, max_turn_tokens=64, topk=3)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    report = {"command": "python benchmarks/eval_throughput.py " + " ".join(sys.argv[1:]),
              "machine": f"{machine()}; {torch.get_num_threads()} torch threads",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"model": model, "datasets": list(BENCHMARKS), "limit": limit,
                           "batch_size": batch_size, "engine": "bm25 top-3", "max_turns": 2,
                           "max_turn_tokens": 64, "decoding": "greedy"},
              "configs": CONFIGS, "runs": runs}

    def write() -> None:
        text = json.dumps(report, indent=2)
        (out / "eval_throughput.json").write_text(text)
        if copy_to:
            Path(copy_to).write_text(text)

    def timed(name: str, questions_per_set: int, folder: Path) -> tuple[dict, float]:
        decoder.share_prefix = CONFIGS[name]["share_prefix"]
        _reset(decoder)
        cfg = EvalConfig(model=model, method="search", datasets=list(BENCHMARKS),
                         data_dir=str(data_dir), limit=questions_per_set, batch_size=batch_size,
                         pool_datasets=CONFIGS[name]["pool_datasets"], rollout=rollout)
        started = time.perf_counter()
        result = evaluate(cfg, generator, tokenizer, engine, folder)
        return result, time.perf_counter() - started

    for name in CONFIGS:  # untimed: one-off costs (imports, first allocations) paid by neither
        timed(name, 1, out / f"warmup-{name}")
    for repeat in range(repeats):
        order = list(CONFIGS) if repeat % 2 == 0 else list(CONFIGS)[::-1]
        for name in order:
            result, seconds = timed(name, limit, out / f"{name}-{repeat}")
            questions = sum(d["n"] for d in result["datasets"].values())
            work = _counters(decoder)
            runs[name].append({"seconds": round(seconds, 1),
                               "questions_per_s": round(questions / seconds, 4),
                               "em": round(100 * result["average"]["em"], 2), **work,
                               "mean_rows_per_step": round(work["decoded_rows"]
                                                           / max(work["decode_steps"], 1), 2)})
            report["questions"] = questions
            print(f"{name} (repeat {repeat}): {seconds:.0f} s, {questions / seconds:.3f} q/s", flush=True)
            write()
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    report["speedup"] = round(medians["before"] / medians["after"], 3)
    _, before = read_run(out / "before-0")
    _, after = read_run(out / "after-0")
    pairs = [(r["response"], after.get(name, {}).get(i, {}).get("response"))
             for name, records in before.items() for i, r in records.items()]
    same, total = sum(a == b for a, b in pairs), len(pairs)
    report["identical_responses"] = round(same / total, 4) if total else None
    write()
    print(f"speedup (median before / median after): {report['speedup']}x; identical responses "
          f"{same}/{total}; results: {out / 'eval_throughput.json'}")


if __name__ == "__main__":
    typer.run(main)
