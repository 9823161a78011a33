"""`zerosearch sim train`: supervised fine-tuning of the simulation LLM with TRL's SFTTrainer.

The loss covers the completion only (the documents), never the prompt. Full fine-tuning or LoRA
(merged into the weights at the end), so the result in ``<output_dir>/final`` is a normal HF
checkpoint that `zerosearch serve --engine simulated --model <dir>`, vLLM and SGLang can load.
Training and validation losses go to ``<output_dir>/metrics.jsonl`` as they are logged, and
checkpoints every ``save_steps`` let an interrupted run resume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zerosearch.cpu import tune_process
from zerosearch.hardware import runtime_choices
from zerosearch.jsonl import read_finished
from zerosearch.models import resolve_model, save_atomically


@dataclass
class SimTrainConfig:
    """Simulator SFT settings (paper: about 1,000 steps, lr 1e-6, batch 2 on 7B-14B models)."""

    model: str = "embedded:smollm2-135m-instruct"
    """Base model of the simulator."""
    data: str = "runs/sim/sft"
    """Folder with train.jsonl (and val.jsonl) from `sim build`, or a file."""
    output_dir: str = "runs/sim/simulator"
    """Checkpoints and final/."""
    epochs: float = 2.0
    """Passes over the training set (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps; -1 = use epochs."""
    learning_rate: float = 5e-5
    """Small models need more than the paper's 1e-6."""
    batch_size: int = 8
    """Examples per optimizer step (per device)."""
    max_length: int = 1024
    """Prompt + completion tokens; longer examples are cut."""
    bf16: bool | None = None
    """bf16 mixed precision; None = when the hardware runs it natively (a GPU, or a CPU with AMX /
    AVX512-BF16; :func:`zerosearch.hardware.runtime_choices`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory (large simulators on GPUs) for about
    a third more compute. TRL turns it on by default; a 135M model on a CPU does not need it."""
    fused_loss: bool | None = None
    """TRL's chunked LM head (log-probs plus entropy and token-accuracy metrics without the full
    logits; Triton kernels on GPUs). None = on GPUs only. Elsewhere :func:`completion_loss` is used:
    the same loss, no extra metrics, and cheaper than TRL's torch fallback on a CPU."""
    lora: bool = False
    """Train LoRA adapters and merge them at the end."""
    lora_r: int = 16
    """LoRA rank."""
    seed: int = 0
    """Data order and initialisation."""
    save_steps: int = 50
    """Checkpoint (weights, optimizer, scheduler, RNG) every N optimizer steps; the last two are kept
    under ``output_dir/checkpoint-*`` so an interrupted run can continue with ``resume``."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` (an error when there is none)."""
    answer_weight: float = 1.0
    """Loss weight of the completion tokens that spell a gold answer in useful examples (every other
    completion token weighs 1). Real documents mention the answer once in a hundred words, so plain
    SFT hardly teaches a small simulator to copy the answer it is given into useful documents;
    a weight above 1 stresses exactly that. 1 = plain SFT through TRL's own tokenisation."""
    noisy_unlikelihood: float = 0.0
    """Weight of an unlikelihood term (Welleck et al., 2019) on examples whose target holds no gold
    answer (noisy ones, and useful ones for stub queries the real engine missed: ``sim collect
    --partial-queries``): at every completion position, ``-log(1 - p)`` of the first token of each
    gold answer (as written, with a leading space, lower-cased; leading articles skipped; only
    tokens of 3+ characters, so a digit or a one-letter piece is never banned). Real documents
    without the answer never hold it, but plain SFT never says so either, and a small simulator
    given the answer in its prompt copies it into them too. 0 = off."""
    noisy_contrast: bool = False
    """Also show the simulator, for each noisy example whose query has a useful one, the useful
    documents under the *noisy* prompt, with no likelihood term and an unlikelihood term (weight
    ``noisy_unlikelihood``) on each token that spells a gold answer there. The first-token term on
    noisy targets acts where the answer is unlikely anyway and cannot name an answer that starts
    with a digit; a leak happens where a document about the queried entity states the fact
    ("... first presented in 1884"), and these rows put the penalty exactly there, so the noisy
    mode learns to write such a document without the answer. Needs ``noisy_unlikelihood`` > 0 and
    a paired SFT set (``sim build --paired``)."""
    cpu_tuning: bool = False
    """Process-wide CPU memory tuning for long runs (:mod:`zerosearch.cpu`: malloc keeps freed
    memory, a callback hands it back when the machine runs short); never applied on a GPU."""


def completion_loss(model, inputs, num_items_in_batch=None, autocast=None, unlikelihood: float = 0.0):
    """Mean cross-entropy over the completion tokens (labels != -100; each times its
    ``loss_weights`` entry when the batch has them), projecting only their hidden states onto the
    vocabulary: the prompt's logits (half the tokens, 49k floats each) are never
    built, which is most of an SFT step's memory traffic on a CPU. With ``unlikelihood`` > 0 and
    ``banned_ids`` in the batch (rows x k, -1 = none), adds ``unlikelihood * -log(1 - p(banned))``
    summed over each row's banned tokens and completion positions (see
    ``SimTrainConfig.noisy_unlikelihood``), and the same weight times ``-log(1 - p(label))`` at
    each position ``unlike`` marks (``SimTrainConfig.noisy_contrast``), over the same token count."""
    import contextlib

    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    with (autocast or contextlib.nullcontext)():
        hidden = base.get_decoder()(input_ids=inputs["input_ids"],
                                    attention_mask=inputs.get("attention_mask")).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    logp_all = logits.float().log_softmax(-1)  # one vocabulary-wide pass serves both terms
    losses = F.nll_loss(logp_all, target[keep], reduction="none")
    if inputs.get("loss_weights") is not None:  # see SimTrainConfig.answer_weight
        losses = losses * inputs["loss_weights"][:, 1:][keep]
    total = losses.sum()
    banned = inputs.get("banned_ids")
    if unlikelihood > 0 and banned is not None:
        banned = banned[keep.nonzero()[:, 0]]  # each kept position's row's banned tokens
        rows = (banned >= 0).any(1)
        if rows.any():
            banned = banned[rows]
            logp = logp_all[rows].gather(1, banned.clamp(min=0))
            push = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6)) * (banned >= 0)
            total = total + unlikelihood * push.sum()
    unlike = inputs.get("unlike")
    if unlikelihood > 0 and unlike is not None:  # see SimTrainConfig.noisy_contrast
        marked = unlike[:, 1:][keep]
        if marked.any():
            p_label = logp_all.gather(1, target[keep][:, None])[:, 0].exp()
            push = -torch.log1p(-p_label.clamp(max=1 - 1e-6)) * marked
            total = total + unlikelihood * push.sum()
    return total / count


def answer_spans(text: str, golds) -> list[tuple[int, int]]:
    """Character spans of every gold answer in ``text`` (case-insensitive, whole words)."""
    spans = []
    for gold in golds:
        if gold and gold.strip():
            pattern = r"(?<!\w)" + re.escape(gold.strip()) + r"(?!\w)"
            spans += [m.span() for m in re.finditer(pattern, text, re.IGNORECASE)]
    return spans


_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)


def answer_first_tokens(tokenizer, golds) -> list[int]:
    """The first token of each gold answer as it may start in a document (as written, after a
    space, lower-cased; a leading article skipped), keeping only tokens of 3+ characters."""
    ids: set[int] = set()
    for gold in golds or []:
        gold = _ARTICLE.sub("", (gold or "").strip())
        for variant in {gold, " " + gold, gold.lower(), " " + gold.lower()}:
            tokens = tokenizer(variant, add_special_tokens=False)["input_ids"] if gold else []
            if tokens and len(tokenizer.decode(tokens[:1]).strip()) >= 3:
                ids.add(tokens[0])
    return sorted(ids)


def weighted_example(tokenizer, row: dict, answer_weight: float, max_length: int,
                     ban_answers: bool = False) -> dict:
    """Tokenise one chat prompt-completion example as TRL does (the chat template over prompt then
    prompt + completion; loss on the completion only) and weigh each label: ``answer_weight`` for
    the tokens overlapping a gold answer in a useful example's completion, 1 for the rest. With
    ``ban_answers``, an example whose target holds no gold answer (noisy, or useful for a stub query
    that the real engine missed) also lists its answers' first tokens (``banned_ids``). A
    ``contrast`` example (``SimTrainConfig.noisy_contrast``) weighs every token 0 and marks the
    tokens overlapping a gold answer in ``unlike`` (1 = push that label's probability down)."""
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently on its own and before a "
                         "completion; answer weighting needs the prompt as a prefix")
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    cut = len(prompt_text)
    spans = ([(a + cut, b + cut) for a, b in answer_spans(full_text[cut:], row.get("golden_answers") or [])]
             if row.get("mode") in ("useful", "contrast") else [])
    contrast = row.get("mode") == "contrast"
    labels, weights, unlike = [], [], []
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        in_completion = start >= cut
        labels.append(token if in_completion else -100)
        on_answer = in_completion and any(start < b and a < end for a, b in spans)
        weights.append(0.0 if contrast else answer_weight if on_answer else 1.0)
        unlike.append(1.0 if contrast and on_answer else 0.0)
    ids = enc["input_ids"][:max_length]
    # a target without the answer: noisy, or a useful stub query the real engine missed (sim build)
    answer_free = row.get("mode") == "noisy" or (row.get("mode") == "useful" and not spans)
    banned = answer_first_tokens(tokenizer, row.get("golden_answers")) if ban_answers and answer_free else []
    return {"input_ids": ids, "labels": labels[:max_length], "loss_weights": weights[:max_length],
            "banned_ids": banned, "unlike": unlike[:max_length]}


def contrast_rows(rows: list[dict]) -> list[dict]:
    """For each noisy example, the first useful example of the same query with the noisy prompt:
    ``mode`` "contrast" (see ``SimTrainConfig.noisy_contrast``)."""
    useful: dict[str, dict] = {}
    for r in rows:
        if r.get("mode") == "useful":
            useful.setdefault(r.get("query"), r)
    return [{**r, "completion": useful[r["query"]]["completion"], "mode": "contrast"}
            for r in rows if r.get("mode") == "noisy" and r.get("query") in useful]


def weighted_collator(pad_token_id: int):
    """TRL's padding collator plus the per-token ``loss_weights`` and ``unlike`` (padded with 0)
    and each row's ``banned_ids`` (padded with -1)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    base = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)

    def collate(examples: list[dict]) -> dict:
        out = base([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        width = out["input_ids"].size(1)
        out["loss_weights"] = torch.tensor([list(e["loss_weights"]) + [0.0] * (width - len(e["loss_weights"]))
                                            for e in examples])
        out["unlike"] = torch.tensor([list(e.get("unlike") or [0.0] * len(e["input_ids"]))
                                      + [0.0] * (width - len(e["input_ids"])) for e in examples])
        most = max(1, max(len(e.get("banned_ids") or []) for e in examples))
        out["banned_ids"] = torch.tensor([list(e.get("banned_ids") or []) + [-1] * (most - len(e.get("banned_ids") or []))
                                          for e in examples], dtype=torch.long)
        return out

    return collate


def train_simulator(cfg: SimTrainConfig, log=print,
                    progress: Callable[[int, int, str], None] | None = None) -> str:
    """Fine-tune and return the folder of the final simulator. ``progress(step, total, info)``
    follows the optimizer steps (and replaces the trainer's own progress bar)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    data = Path(cfg.data)
    train_file = data / "train.jsonl" if data.is_dir() else data
    if not train_file.exists():
        raise FileNotFoundError(f"no SFT data at {train_file} (run `zerosearch sim build` first)")
    if cfg.answer_weight <= 0:
        raise ValueError(f"answer_weight must be positive, got {cfg.answer_weight}")
    if cfg.noisy_unlikelihood < 0:
        raise ValueError(f"noisy_unlikelihood must be >= 0, got {cfg.noisy_unlikelihood}")
    weighted = cfg.answer_weight != 1.0 or cfg.noisy_unlikelihood > 0
    if cfg.noisy_contrast and cfg.noisy_unlikelihood <= 0:
        raise ValueError("noisy_contrast needs noisy_unlikelihood > 0 (its rows have no other loss)")
    keep = ("prompt", "completion") + (("mode", "golden_answers") if weighted else ())
    train_rows = [{k: r.get(k) for k in keep + ("query",)} for r in read_finished(train_file)]
    if not train_rows:
        raise ValueError(f"{train_file} holds no examples")
    if cfg.noisy_contrast:
        contrast = contrast_rows(train_rows)
        if not contrast:
            raise ValueError(f"noisy_contrast: no query in {train_file} has both a useful and a noisy "
                             "example (build it with `zerosearch sim build --paired`)")
        log(f"noisy contrast: {len(contrast)} useful targets under noisy prompts")
        train_rows += contrast
    train_rows = [{k: r.get(k) for k in keep} for r in train_rows]
    if weighted and not any(r["mode"] in ("useful", "noisy") and r["golden_answers"] for r in train_rows):
        raise ValueError(f"answer_weight / noisy_unlikelihood need examples with a mode and "
                         f"golden_answers ({train_file} has none: build it with `zerosearch sim build`)")
    choices = runtime_choices(bf16="auto" if cfg.bf16 is None else cfg.bf16,
                              fused_lm_head="auto" if cfg.fused_loss is None else cfg.fused_loss,
                              cpu_tuning=cfg.cpu_tuning)
    tuning_callbacks = tune_process(choices, log)
    val_file = data / "val.jsonl" if data.is_dir() and (data / "val.jsonl").exists() else None
    val_rows = [{k: r.get(k) for k in keep} for r in read_finished(val_file)] if val_file else []

    bf16 = choices.autocast
    path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra: dict = {}
    if weighted:  # our tokenisation, with a weight per label; TRL's preparation is skipped
        ban = cfg.noisy_unlikelihood > 0
        train_rows = [weighted_example(tokenizer, r, cfg.answer_weight, cfg.max_length, ban)
                      for r in train_rows]
        val_rows = [weighted_example(tokenizer, r, cfg.answer_weight, cfg.max_length, ban)
                    for r in val_rows]
        answer_tokens = sum(w > 1.0 for r in train_rows for w in r["loss_weights"])
        log(f"answer weighting: {answer_tokens} answer tokens weigh {cfg.answer_weight}")
        if ban:
            log(f"unlikelihood {cfg.noisy_unlikelihood}: {sum(bool(r['banned_ids']) for r in train_rows)} "
                "noisy examples push down their answers' first tokens")
        extra = {"dataset_kwargs": {"skip_prepare_dataset": True}, "remove_unused_columns": False}
    model = AutoModelForCausalLM.from_pretrained(path)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    args = SFTConfig(
        output_dir=cfg.output_dir, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        max_length=cfg.max_length, completion_only_loss=True, seed=cfg.seed,
        logging_steps=5, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        report_to=[], lr_scheduler_type="cosine",
        warmup_steps=0.05, eval_strategy="epoch" if val_rows else "no",
        per_device_eval_batch_size=cfg.batch_size, dataloader_num_workers=0, prediction_loss_only=True,
        train_sampling_strategy="group_by_length",
        bf16=bf16, gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=progress is not None, **extra)
    from zerosearch.runfolder import AtomicCheckpoints, MetricsCallback, prepare_resume

    metrics_file = Path(cfg.output_dir) / "metrics.jsonl"
    resume_from = None
    if cfg.resume:
        resume_from = prepare_resume(cfg.output_dir, log)
        log(f"resuming from {resume_from}")
    elif metrics_file.exists():
        metrics_file.unlink(missing_ok=True)  # a fresh run starts a fresh log (another rank may be first)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    callbacks: list = [MetricsCallback(metrics_file), *tuning_callbacks]
    if progress is not None:
        class Report(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                loss = (logs or {}).get("loss")
                progress(state.global_step, state.max_steps, f"loss {loss:.3f}" if loss else "")

            def on_step_end(self, args, state, control, **kwargs):
                progress(state.global_step, state.max_steps, "")

        callbacks.append(Report())
    fused = choices.fused_lm_head

    class CompletionLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = completion_loss(self.accelerator.unwrap_model(model), inputs, num_items_in_batch,
                                   self.accelerator.autocast, cfg.noisy_unlikelihood)
            return (loss, {"loss": loss}) if return_outputs else loss

    trainer_class = SFTTrainer if fused and not weighted else CompletionLossTrainer
    trainer_class = type(f"Atomic{trainer_class.__name__}", (AtomicCheckpoints, trainer_class), {})
    if weighted:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        extra_trainer = {"data_collator": weighted_collator(pad)}
    else:
        extra_trainer = {}
    trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                            **extra_trainer,
                            eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if progress is not None:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume_from)
    final = Path(cfg.output_dir) / "final"
    trained = trainer.model
    if cfg.lora:
        trained = trained.merge_and_unload()
    if trainer.is_world_process_zero():
        # atomically: the quickstart treats final/config.json as "stage done", and save_pretrained
        # writes it before the weights
        save_atomically(final, trained, tokenizer)
    trainer.accelerator.wait_for_everyone()
    log(f"simulator saved to {final}")
    return str(final)
