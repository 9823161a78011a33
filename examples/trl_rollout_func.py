"""A search agent trained by a plain TRL ``GRPOTrainer`` with zerosearch's multi-turn rollout.

The model speaks the Search-R1 protocol (``<search>``, ``<information>``, ``<answer>``);
``search_rollout_func`` runs the same rollout zerosearch's own trainer, evaluation and server use,
with the trainer's live model, and returns the inserted documents as ``env_mask`` 0 (out of the loss).
Everything else is ordinary TRL: your model, your ``GRPOConfig``, your reward.

    python examples/trl_rollout_func.py --questions runs/quickstart/world/train.jsonl \\
        --corpus runs/quickstart/world/corpus.jsonl --steps 20

Engines: ``--engine bm25`` (the corpus), or ``--engine simulated --sim-model DIR`` (a tuned simulator,
the noise curriculum from ``--noise-start`` to ``--noise-end`` over the run).
"""

from __future__ import annotations

import os

import typer

from zerosearch.cli_engine import field_option
from zerosearch.curriculum import CurriculumConfig
from zerosearch.rollout import RolloutConfig
from zerosearch.train.config import AlgorithmConfig

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(
    questions: str = typer.Option(..., "--questions", help="QA file or folder (FlashRAG JSONL/parquet)."),
    corpus: str = typer.Option(None, "--corpus", help="Passages for --engine bm25 (FlashRAG JSONL)."),
    model: str = typer.Option("embedded:smollm2-135m-instruct", "--model", help="Policy (name or path)."),
    engine: str = typer.Option("bm25", "--engine", help="bm25 or simulated."),
    sim_model: str = typer.Option("embedded:smollm2-135m-instruct", "--sim-model",
                                  help="Simulator for --engine simulated."),
    noise_start: float = field_option(CurriculumConfig, "p_start", "--noise-start"),
    noise_end: float = field_option(CurriculumConfig, "p_end", "--noise-end"),
    topk: int = field_option(RolloutConfig, "topk", "--topk"),
    steps: int = typer.Option(20, "--steps", help="GRPO steps."),
    prompts_per_step: int = typer.Option(2, "--prompts-per-step", help="Questions per step."),
    # A smaller group than the paper's default keeps the example's first step short on a CPU.
    num_generations: int = field_option(AlgorithmConfig, "num_generations", "--num-generations", default=4),
    max_turns: int = field_option(RolloutConfig, "max_turns", "--max-turns"),
    max_turn_tokens: int = field_option(RolloutConfig, "max_turn_tokens", "--max-turn-tokens"),
    limit: int = typer.Option(200, "--limit", help="Training questions used."),
    output_dir: str = typer.Option("runs/example-rollout-func", "--output-dir", "-o"),
):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from zerosearch import answer_reward, make_engine, search_rollout_func
    from zerosearch.qa import load_qa
    from zerosearch.models import resolve_model

    rows = load_qa(questions, limit=limit)
    if engine == "bm25":
        search_engine = make_engine(kind="bm25", corpus=corpus, topk=topk)
        curriculum = None
    else:
        search_engine = make_engine(kind="simulated", model=sim_model, topk=topk)
        curriculum = CurriculumConfig(noise_start, noise_end)
    path = resolve_model(model)
    tokenizer, policy = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    rollout = RolloutConfig(max_turns=max_turns, max_turn_tokens=max_turn_tokens, topk=topk, temperature=1.0)
    trainer = GRPOTrainer(
        model=policy, processing_class=tokenizer, reward_funcs=[answer_reward("f1")],
        train_dataset=Dataset.from_list([{"prompt": r.question, "golden_answers": r.golden_answers}
                                         for r in rows]),
        rollout_func=search_rollout_func(search_engine, rollout, curriculum=curriculum,
                                         answers={r.question: r.golden_answers for r in rows}),
        args=GRPOConfig(output_dir=output_dir, max_steps=steps, num_generations=num_generations,
                        per_device_train_batch_size=prompts_per_step * num_generations,
                        learning_rate=1e-6, logging_steps=1, report_to=[], save_strategy="no",
                        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
                        bf16=torch.cuda.is_available()))
    try:
        trainer.train()
    finally:
        search_engine.close()
    trainer.save_model(f"{output_dir}/final")
    print(f"saved to {output_dir}/final; evaluate it with: zerosearch eval --model {output_dir}/final")


if __name__ == "__main__":
    typer.run(main)
