"""Format warm-up: a few supervised steps on well-formed search traces before RL (optional).

A 135M instruct model almost never emits ``<search>`` or ``<answer>`` on its own (0 of 32 tries),
so RL from it sees no reward and learns nothing. The warm-up shows it the protocol: for training
questions whose first search (the question itself as the query) returns a passage holding a gold
answer, it builds the trace

    <think> … </think>
    <search> QUESTION </search>
    <information>Doc 1: … (the engine's real documents)</information>
    <answer> GOLD </answer><eos>

tokenised exactly as a rollout would be (the same prompt encoding and information block), and
trains on the policy's tokens only: the prompt and the information block have label -100, as in RL.
It teaches the format and copying an answer from a document; whether the agent learns more (when to
search, what to do with noisy documents) is what RL adds. Reports always say whether a warm-up ran.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from zerosearch.engines.base import Engine, SearchRequest
from zerosearch.protocol import resolve_doc_format
from zerosearch.rollout import RolloutConfig, Row, information_ids, encode_prompt
from zerosearch.sim.label import contains_answer

THINK_BEFORE = "<think> I do not know this. I will search for it. </think>\n<search> {query} </search>"
ANSWER_AFTER = "<think> The documents give the answer. </think>\n<answer> {answer} </answer>"


@dataclass
class WarmupConfig:
    """Supervised format warm-up of the policy."""

    steps: int = 30
    """Optimizer steps (0 = no warm-up)."""
    batch_size: int = 8
    """Traces per step."""
    learning_rate: float = 2e-5
    """AdamW learning rate (constant)."""
    max_traces: int = 400
    """Traces built from the first questions whose search finds a gold answer."""
    seed: int = 0
    """Order of the traces."""


def build_traces(rows: Sequence[Row], engine: Engine, tokenizer, rollout: RolloutConfig,
                 max_traces: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) pairs for rows whose question-as-query search finds a gold answer."""
    traces: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(rows), 64):
        batch = rows[start:start + 64]
        results = engine.search([SearchRequest(r.question, r.question, list(r.golden_answers),
                                               topk=rollout.topk, mode="useful", row_id=r.id)
                                 for r in batch])
        for row, result in zip(batch, results):
            if result.error or not contains_answer([d.text for d in result.documents], row.golden_answers):
                continue
            prompt = encode_prompt(tokenizer, row.question, rollout)
            first = tokenizer(THINK_BEFORE.format(query=row.question), add_special_tokens=False)["input_ids"]
            info, _ = information_ids(tokenizer, result, rollout.max_obs_tokens, resolve_doc_format(
                rollout.doc_format, getattr(tokenizer, "name_or_path", None)))
            last = tokenizer(ANSWER_AFTER.format(answer=row.golden_answers[0]),
                             add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = prompt + first + info + last
            labels = [-100] * len(prompt) + first + [-100] * len(info) + last
            traces.append((ids, labels))
            if len(traces) >= max_traces:
                return traces
    return traces


def train_warmup(model_name: str, rows: Sequence[Row], engine: Engine, out_dir: str | Path,
                 cfg: WarmupConfig, rollout: RolloutConfig,
                 progress: Callable[[int, int, float], None] | None = None) -> str:
    """Fine-tune ``model_name`` on warm-up traces; save to ``out_dir`` and return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.models import resolve_model, save_atomically

    if cfg.steps < 1:
        raise ValueError("warm-up steps must be >= 1 (set steps: 0 to skip the stage instead)")
    path = resolve_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    traces = build_traces(rows, engine, tokenizer, rollout, cfg.max_traces)
    if not traces:
        raise ValueError("warm-up: no training question's search returned a gold answer; "
                         "check the engine and the corpus")
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    order: list[int] = []
    rng = random.Random(cfg.seed)
    for step in range(cfg.steps):
        batch = []
        while len(batch) < cfg.batch_size:
            if not order:
                order = list(range(len(traces)))
                rng.shuffle(order)
            batch.append(traces[order.pop()])
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress:
            progress(step + 1, cfg.steps, loss.item())
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(out, model, tokenizer)
    return str(out)
