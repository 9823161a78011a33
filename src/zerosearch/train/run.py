"""Build and run a ZeroSearch training job from a :class:`TrainConfig`.

Order matters for users: everything that can be wrong (config keys, the dataset, the model name, an
unreachable engine) is checked before the first step, with a message that names the problem. Then
TRL trains; metrics go to ``<output_dir>/metrics.jsonl`` (always) and TensorBoard (by default);
checkpoints every ``save_steps`` and at the end; ``resume=True`` continues from the last checkpoint
with the same step, curriculum position, optimizer and RNG state.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import yaml

from zerosearch.config import ConfigError
from zerosearch.engines.base import EngineError, SearchRequest
from zerosearch.engines.factory import build_engine
from zerosearch.cpu import tune_process
from zerosearch.hardware import RuntimeChoices, runtime_choices
from zerosearch.models import replace_folder, resolve_model
from zerosearch.protocol import STOP_STRINGS
from zerosearch.qa import FieldError, load_qa_grouped
from zerosearch.runfolder import MetricsCallback, prepare_resume
from zerosearch.train.config import TrainConfig
from zerosearch.train.order import stratified_order
from zerosearch.train.trainer import StepTimer, ZeroSearchTrainer, make_reward_func


def check_engine(engine, kind: str) -> None:
    """One real search before training, so an unreachable engine fails now, not at step 1."""
    [result] = engine.search([SearchRequest("connectivity check", question="Is the engine up?",
                                            golden_answers=["yes"], topk=1, mode="useful")])
    if result.error and result.error_kind in ("unavailable", "timeout", "bad_request"):
        raise EngineError(f"the {kind} engine is not usable: {result.error}")


def run_choices(cfg: TrainConfig, device: str | None = None,
                bf16_native: bool | None = None) -> RuntimeChoices:
    """The device-dependent settings of a run of ``cfg`` on ``device`` (None: CUDA when available,
    else the CPU): :func:`zerosearch.hardware.runtime_choices` on the config's values
    (``bf16_native`` overrides the hardware probe); a value the hardware cannot honour is a
    ConfigError. A check that a GPU run gets no CPU tuning asks this with ``device="cuda"``."""
    t = cfg.training
    try:
        return runtime_choices(device, dtype=cfg.model.dtype, bf16=t.bf16,
                               fused_lm_head=t.fused_lm_head, cpu_tuning=t.cpu_tuning,
                               bf16_native=bf16_native)
    except ValueError as err:
        raise ConfigError(f"training: {err}") from None


def build_trainer(cfg: TrainConfig, log=print,
                  on_progress: Callable[[int, int, dict], None] | None = None) -> ZeroSearchTrainer:
    """Everything up to (not including) ``trainer.train()``."""
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer
    from trl import GRPOConfig

    cfg.validate()
    t, a, r = cfg.training, cfg.algorithm, cfg.rollout
    if not cfg.data.train:
        raise ConfigError("no training questions: set data.train in the preset or pass --train-data "
                          "(a FlashRAG JSONL file, or a ZeroSearch / Search-R1 parquet)")
    try:
        rows, groups = load_qa_grouped(cfg.data.train, cfg.data.stratify_by or None, limit=cfg.data.limit)
    except FieldError as err:
        raise ConfigError(f"data.stratify_by: {err}") from None
    if len(rows) < t.prompts_per_step:
        raise ConfigError(f"{cfg.data.train} has {len(rows)} questions; a step needs "
                          f"prompts_per_step = {t.prompts_per_step}")
    if groups is not None and len(set(groups)) > max(len(groups) // 2, 1):
        raise ConfigError(f"data.stratify_by: {cfg.data.stratify_by} takes {len(set(groups))} values over "
                          f"{len(groups)} questions; stratify by a field that groups them (hop count, "
                          "data source), not one that names each")
    policy = resolve_model(cfg.model.name)
    engine = build_engine(cfg.engine, log=log)
    check_engine(engine, cfg.engine.kind)

    # cpu=True on a CPU: without it accelerate does not see a torchrun / accelerate launch world on
    # gloo and reports one process, which would double the global batch per extra process.
    world = PartialState(cpu=not torch.cuda.is_available()).num_processes
    refusal = sharding_refusal(torch.cuda.is_available())
    if refusal:
        raise ConfigError(refusal)
    rollouts = t.prompts_per_step * a.num_generations
    micro = t.micro_batch_size or rollouts // world  # 0: one pass per process and step
    if not micro or rollouts % (micro * world):
        raise ConfigError(f"prompts_per_step x num_generations ({rollouts}) must be a multiple of "
                          f"micro_batch_size x processes ({t.micro_batch_size or 'the whole step'} x {world})")
    accumulation = rollouts // (micro * world)
    choices = run_choices(cfg)
    use_cuda = choices.device == "cuda"
    if t.cpu_tuning and use_cuda:
        log("training.cpu_tuning: ignored on a GPU")
    callbacks = tune_process(choices, log)  # before the model is loaded: its memory is heap
    dtype = getattr(torch, choices.weights_dtype)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=dtype)
    peft_config = None
    if cfg.model.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                                 target_modules=cfg.model.lora_target_modules, task_type="CAUSAL_LM")
    # the trainer reads plain values; config.yaml keeps what the user asked for
    t = replace(t, bf16=choices.autocast, fused_lm_head=choices.fused_lm_head)
    compile_layers = False
    if t.compile:
        refusal = compile_refusal(model, t, cfg.model.gradient_checkpointing, use_cuda)
        if refusal and t.compile != "auto":
            raise ConfigError(refusal)
        log(f"training.compile auto: off, {refusal}" if refusal else
            "training.compile: decoder layers compiled for the training and reference forward")
        compile_layers = refusal is None
    run_cfg = replace(cfg, training=replace(t, compile=compile_layers))
    value_model = None
    if a.name == "ppo":
        value_model = AutoModelForTokenClassification.from_pretrained(policy, num_labels=1, dtype=dtype)
        value_model.config.pad_token_id = tokenizer.pad_token_id

    args = GRPOConfig(
        output_dir=t.output_dir, max_steps=t.max_steps, learning_rate=t.learning_rate,
        lr_scheduler_type="constant_with_warmup" if t.warmup_ratio else "constant",
        warmup_steps=t.warmup_ratio, max_grad_norm=t.max_grad_norm, seed=t.seed,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_iterations=1, num_generations=a.num_generations,
        max_completion_length=r.max_completion_tokens, temperature=max(r.temperature, 1e-5),
        top_p=r.top_p, beta=a.beta, epsilon=a.epsilon, loss_type=a.loss_type,
        scale_rewards=a.scale_rewards, mask_truncated_completions=False,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps, report_to=t.report_to, bf16=t.bf16, use_cpu=not use_cuda,
        gradient_checkpointing=cfg.model.gradient_checkpointing, remove_unused_columns=False,
        disable_tqdm=on_progress is not None, log_completions=t.log_completions,
        use_vllm=t.use_vllm, vllm_mode=t.vllm_mode, vllm_server_base_url=t.vllm_server_base_url,
        vllm_gpu_memory_utilization=t.vllm_gpu_memory_utilization,
        generation_kwargs={"stop": list(STOP_STRINGS), "include_stop_str_in_output": True}
        if t.use_vllm else None,
        dataloader_num_workers=0, shuffle_dataset=groups is None,
    )
    records = [{"prompt": row.question, "question": row.question, "golden_answers": row.golden_answers,
                "id": str(row.id), **({"group": groups[i]} if groups else {})} for i, row in enumerate(rows)]
    if groups:  # TRL then reads the rows in this order (shuffle_dataset off above), a step's in a block
        order = stratified_order(groups, cfg.data.shuffle_seed, block=t.prompts_per_step)
        dataset = Dataset.from_list([records[i] for i in order])
    else:
        dataset = Dataset.from_list(records).shuffle(seed=cfg.data.shuffle_seed)
    os.makedirs(t.output_dir, exist_ok=True)
    Path(t.output_dir, "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    callback = MetricsCallback(Path(t.output_dir) / "metrics.jsonl", on_progress)
    trainer = ZeroSearchTrainer(
        model=model, reward_funcs=[make_reward_func(a.reward)], args=args, train_dataset=dataset,
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=[callback, *callbacks],
        zs_config=run_cfg, engine=engine, value_model=value_model)
    callback.timer = StepTimer(trainer)
    if on_progress is not None:  # the caller shows progress; no raw dict per log line
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def train(cfg: TrainConfig, resume: bool = False, log=print,
          on_progress: Callable[[int, int, dict], None] | None = None) -> str:
    """Train and return the folder of the final model."""
    checkpoint = prepare_resume(cfg.training.output_dir, log) if resume else None
    trainer = build_trainer(cfg, log=log, on_progress=on_progress)
    try:
        if checkpoint:
            trainer.load_value_checkpoint(checkpoint)
            log(f"resuming from {checkpoint}")
        trainer.train(resume_from_checkpoint=checkpoint)
        # saved beside, then renamed: final/config.json marks a finished run (the quickstart's
        # resume test), and save_pretrained writes it before the weights
        final = os.path.join(cfg.training.output_dir, "final")
        partial = final + ".partial"
        trainer.save_model(partial)
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(partial)
            replace_folder(partial, final)
        trainer.accelerator.wait_for_everyone()
        return final
    finally:
        trainer.engine.close()


def sharding_refusal(use_cuda: bool, env=None) -> str | None:
    """Why an FSDP or DeepSpeed launch cannot run here (None when it can). accelerate applies
    both to GPU process groups only: under ``accelerate launch`` with an FSDP config on a CPU
    (checked with accelerate 1.15) the processes come up as plain ``MULTI_CPU`` data parallel and
    would train unsharded without a word; DeepSpeed needs its package and a GPU."""
    env = os.environ if env is None else env
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if env.get(variable, "false").lower() == "true" and not use_cuda:
            return (f"{name} needs GPUs: accelerate shards only GPU process groups, and on a CPU this "
                    f"launch would train unsharded as plain data parallel. On a CPU, launch data "
                    f"parallel on purpose: torchrun --nproc_per_node N -m zerosearch.cli train …")
    return None


def compile_refusal(model, t, gradient_checkpointing: bool, use_cuda: bool) -> str | None:
    """Why ``training.compile`` cannot apply to this run (None when it can): it compiles the plain
    LM-head path only. Set to true, the reason is raised before training starts instead of training
    silently uncompiled; set to auto, it is logged and the run trains uncompiled."""
    from zerosearch import hardware
    from zerosearch.train.head_logps import head_supported

    if gradient_checkpointing:
        return "training.compile does not combine with model.gradient_checkpointing"
    if t.fused_lm_head:
        return "training.compile compiles the plain LM-head path; set training.fused_lm_head: false"
    if not head_supported(model) or not hasattr(model.get_decoder(), "layers"):
        return ("training.compile needs a decoder with a `layers` list and a plain, bias-free "
                "LM head in a single process; this model keeps its own forward")
    if not use_cuda and not hardware.has_c_compiler():
        return ("training.compile on a CPU needs a C/C++ compiler (inductor builds its "
                "kernels with it); none is on PATH")
    if not use_cuda and not hardware.has_python_headers():
        return ("training.compile on a CPU needs the Python development headers (Python.h, "
                "e.g. the python3-dev package): inductor's kernels include them")
    return None
