"""A search agent trained by a plain TRL ``GRPOTrainer`` with a tool-calling model.

``SearchEnvironmentFactory`` gives every rollout an environment with one tool, ``search(query)``,
backed by any zerosearch engine; TRL renders the tool's documents as a ``tool`` message and keeps
those tokens out of the loss (``tool_mask``). Passed in ``callbacks`` as well, the factory reads the
trainer's step, so a simulated engine follows the noise curriculum. No zerosearch trainer involved.

    python examples/trl_environment.py --questions runs/quickstart/world/train.jsonl \\
        --corpus runs/quickstart/world/corpus.jsonl --model Qwen/Qwen2.5-0.5B-Instruct --steps 20

The model needs a chat template that TRL can parse tool calls from (Qwen2.5 / Qwen3, Llama 3.1…);
``--qwen-template`` puts TRL's Qwen2.5 template on a model without one (the embedded SmolLM2).
TRL calls the tool once per call, without batching across rollouts: for a simulated engine, point
``--sim-url`` at a served simulator (``zerosearch serve`` or vLLM) rather than a model in process.
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
    qwen_template: bool = typer.Option(False, "--qwen-template",
                                       help="Use TRL's Qwen2.5 tool-calling chat template."),
    engine: str = typer.Option("bm25", "--engine", help="bm25, simulated or remote."),
    sim_model: str = typer.Option("embedded:smollm2-135m-instruct", "--sim-model",
                                  help="Simulator for --engine simulated (in process)."),
    sim_url: str = typer.Option(None, "--sim-url", help="Served simulator: an OpenAI-compatible /v1 "
                                                        "URL (--engine simulated) or a zerosearch "
                                                        "server (--engine remote)."),
    noise_start: float = field_option(CurriculumConfig, "p_start", "--noise-start"),
    noise_end: float = field_option(CurriculumConfig, "p_end", "--noise-end"),
    # Three documents, not the rollout's five: TRL renders them inside the completion budget below.
    topk: int = field_option(RolloutConfig, "topk", "--topk", default=3),
    steps: int = typer.Option(20, "--steps", help="GRPO steps."),
    prompts_per_step: int = typer.Option(2, "--prompts-per-step", help="Questions per step."),
    # A smaller group than the paper's default keeps the example's first step short on a CPU.
    num_generations: int = field_option(AlgorithmConfig, "num_generations", "--num-generations", default=4),
    max_completion_length: int = typer.Option(512, "--max-completion-length",
                                              help="Tokens of a whole rollout (tool results included)."),
    limit: int = typer.Option(200, "--limit", help="Training questions used."),
    output_dir: str = typer.Option("runs/example-environment", "--output-dir", "-o"),
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from zerosearch import SearchEnvironmentFactory, make_engine, tool_answer_reward, tool_dataset
    from zerosearch.models import resolve_model
    from zerosearch.qa import load_qa

    rows = load_qa(questions, limit=limit)
    curriculum = None
    if engine == "bm25":
        search_engine = make_engine(kind="bm25", corpus=corpus, topk=topk)
    elif engine == "remote":
        search_engine = make_engine(kind="remote", remote_url=sim_url, topk=topk)
    else:
        search_engine = make_engine(kind="simulated", model=sim_model, topk=topk,
                                    backend_urls=[sim_url] if sim_url else [])
        curriculum = CurriculumConfig(noise_start, noise_end)
    path = resolve_model(model)
    tokenizer, policy = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    if qwen_template:
        from trl.chat_template_utils import qwen2_5_chat_template

        tokenizer.chat_template = qwen2_5_chat_template
    factory = SearchEnvironmentFactory(search_engine, topk=topk, curriculum=curriculum)
    trainer = GRPOTrainer(
        model=policy, processing_class=tokenizer, reward_funcs=[tool_answer_reward("f1")],
        train_dataset=tool_dataset(rows), environment_factory=factory, callbacks=[factory],
        args=GRPOConfig(output_dir=output_dir, max_steps=steps, num_generations=num_generations,
                        per_device_train_batch_size=prompts_per_step * num_generations,
                        max_completion_length=max_completion_length, learning_rate=1e-6,
                        logging_steps=1, report_to=[], save_strategy="no", dataloader_num_workers=0,
                        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available()))
    try:
        trainer.train()
    finally:
        search_engine.close()
    trainer.save_model(f"{output_dir}/final")
    print(f"saved to {output_dir}/final")


if __name__ == "__main__":
    typer.run(main)
