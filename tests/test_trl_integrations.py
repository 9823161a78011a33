"""Vanilla TRL ``GRPOTrainer`` with our two integrations, two real training steps each:

- ``environment_factory=SearchEnvironmentFactory(...)``: a tool-calling chat template, the model
  calls the ``search`` tool (a real BM25 engine), TRL appends the tool message;
- ``rollout_func=search_rollout_func(...)``: our ``<search>`` rollout with the trainer's model.

A random model emits neither a tool call nor ``<search>``, so each test first teaches the tiny
model one search-then-answer conversation (a few hundred plain LM steps: real weights that really
produce the calls). Then, on the batch TRL itself built, the tokens TRL marked as environment output
(``tool_mask`` 0) must be exactly the inserted documents, and the loss's gradient must be zero at
every such position while non-zero on the model's own tokens.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from zerosearch.engines.bm25 import BM25Engine
from zerosearch.rollout import RolloutConfig, Row, encode_prompt, information_ids
from zerosearch.engines.base import SearchRequest

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"
QUERY = "capital of france"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture()
def engine(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    passages = {"p0": ('Paris', "Paris is the capital and largest city of France."),
                "p1": ('Nile', "The Nile is a river in Africa."),
                "p2": ('Tokyo', "Tokyo is the capital of Japan.")}
    corpus.write_text("".join(json.dumps({"id": k, "contents": f'"{t}"\n{x}'}) + "\n"
                              for k, (t, x) in passages.items()))
    bm25 = BM25Engine(corpus, tmp_path / "index", log=lambda m: None)
    yield bm25
    bm25.close()


def _tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.models import resolve_model

    path = resolve_model("embedded:tiny-random")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _memorise(model, ids: list[int], start: int, steps: int = 300) -> float:
    """Plain next-token training on ``ids[start:]`` (after the prompt) until the model reproduces it
    (only the positions that predict those tokens go through the LM head)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    x = torch.tensor([ids])
    n = len(ids) - start
    for _ in range(steps):
        logits = model(input_ids=x, logits_to_keep=n + 1).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits.float(), x[0, start:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        if loss.item() < 0.01:
            break
    return loss.item()


def _args(tmp_path, **kw):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                      num_generations=2, max_steps=2, learning_rate=1e-6, logging_steps=1,
                      report_to=[], use_cpu=True, save_strategy="no", bf16=False,
                      dataloader_num_workers=0, **kw)


def _spy(trainer) -> list[dict]:
    """Record every batch TRL builds (after generation and scoring)."""
    seen, original = [], trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        seen.append(out)
        return out

    trainer._generate_and_score_completions = spy
    return seen


def _index_reward(completions, **_):
    """Distinct rewards inside each group, so advantages (and the loss gradient) are non-zero."""
    return [float(i % 2) for i in range(len(completions))]


def _loss_gradient_by_token(trainer, batch) -> torch.Tensor:
    """|d loss / d h| per completion position (B, C), where h is the decoder's final hidden state
    (after the last norm): the state at position p feeds only the logits that predict token p + 1."""
    grads = []
    final_norm = trainer.model.model.norm

    def keep(_, __, out):
        if out.requires_grad:
            out.register_hook(lambda g: grads.append(g.detach()))

    handle = final_norm.register_forward_hook(keep)
    try:
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    finally:
        handle.remove()
    assert len(grads) == 1, f"expected one forward of the whole batch, saw {len(grads)}"
    p, c = batch["prompt_ids"].size(1), batch["completion_ids"].size(1)
    return grads[0][:, p - 1:p - 1 + c].abs().sum(-1)


def _check_masks(trainer, batch, tok, documents_text: str) -> None:
    ids, mask = batch["completion_ids"], batch["tool_mask"] * batch["completion_mask"]
    env = batch["tool_mask"] == 0
    assert env.any(), "no environment tokens: the model did not search"
    for row in range(ids.size(0)):
        inserted = tok.decode(ids[row][env[row]])
        if env[row].any():
            assert documents_text in inserted  # the tool tokens are the documents…
            own = tok.decode(ids[row][mask[row].bool()])
            assert documents_text not in own  # …and none of them is trained on
    grad = _loss_gradient_by_token(trainer, batch)
    assert torch.all(grad[env] == 0)
    assert (grad[mask.bool()] > 0).any()


def test_environment_factory_two_steps_tool_results_out_of_the_loss(tmp_path, engine):
    from trl import GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    from zerosearch.integrations.trl_env import (SearchEnvironmentFactory, tool_answer_reward,
                                                 tool_dataset, tool_prompt)

    model, tok = _tiny()
    tok.chat_template = qwen2_5_chat_template  # a tool-calling template TRL can parse
    factory = SearchEnvironmentFactory(engine, topk=2)
    env = factory()
    env.reset(question=QUESTION, golden_answers=["Paris"])
    documents = env.search(QUERY)
    assert "Paris is the capital" in documents
    call = {"type": "function", "function": {"name": "search", "arguments": {"query": QUERY}}}
    conversation = tool_prompt(QUESTION) + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "search", "content": documents},
        {"role": "assistant", "content": "<answer> Paris </answer>"}]
    text = tok.apply_chat_template(conversation, tools=[env.search], tokenize=False)
    prefix = tok.apply_chat_template(conversation[:1], tools=[env.search], tokenize=False,
                                     add_generation_prompt=True)
    assert text.startswith(prefix)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert _memorise(model, ids, len(tok(prefix, add_special_tokens=False)["input_ids"])) < 0.05

    rows = [Row(QUESTION, ["Paris"], 0), Row(QUESTION, ["Paris"], 1)]
    trainer = GRPOTrainer(model=model, reward_funcs=[tool_answer_reward("f1"), _index_reward],
                          args=_args(tmp_path, max_completion_length=256, temperature=0.3,
                                     max_tool_calling_iterations=2),
                          train_dataset=tool_dataset(rows), processing_class=tok,
                          environment_factory=factory, callbacks=[factory])
    seen = _spy(trainer)
    trainer.train()
    assert trainer.state.global_step == 2 and len(seen) == 2
    assert factory.step == 1 and factory.max_steps == 2
    logged = [h for h in trainer.state.log_history if "tools/call_frequency" in h]
    assert logged and logged[0]["tools/call_frequency"] > 0
    assert any(h.get("rewards/answer_f1/mean", 0) > 0 for h in trainer.state.log_history)
    _check_masks(trainer, seen[-1], tok, "Paris is the capital and largest city of France.")


def test_rollout_func_two_steps_information_out_of_the_loss(tmp_path, engine):
    from datasets import Dataset
    from trl import GRPOTrainer

    from zerosearch.integrations.trl_rollout import answer_reward, search_rollout_func

    model, tok = _tiny()
    cfg = RolloutConfig(max_turns=2, max_turn_tokens=40, max_completion_tokens=400, topk=2,
                        temperature=0.3)
    prompt = encode_prompt(tok, QUESTION, cfg)
    say = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    [result] = engine.search([SearchRequest(QUERY, topk=2)])
    info, _ = information_ids(tok, result, cfg.max_obs_tokens)
    sequence = (prompt + say(f"<search> {QUERY} </search>") + info + say("<answer> Paris </answer>")
                + [tok.eos_token_id])
    assert _memorise(model, sequence, len(prompt)) < 0.05

    data = Dataset.from_list([{"prompt": QUESTION, "golden_answers": ["Paris"]}] * 2)
    rollout = search_rollout_func(engine, cfg, answers={QUESTION: ["Paris"]})
    trainer = GRPOTrainer(model=model, reward_funcs=[answer_reward("f1"), _index_reward],
                          args=_args(tmp_path, max_completion_length=400), train_dataset=data,
                          processing_class=tok, rollout_func=rollout)
    seen = _spy(trainer)
    trainer.train()
    assert trainer.state.global_step == 2 and len(seen) == 2
    assert any(h.get("rewards/f1/mean", 0) > 0 for h in trainer.state.log_history)
    _check_masks(trainer, seen[-1], tok, "Paris is the capital and largest city of France.")
    with pytest.raises(KeyError, match="not in the answers mapping"):
        rollout(["Who wrote Hamlet?"], trainer)


@pytest.mark.parametrize("script, extra", [("trl_rollout_func.py", ["--max-turns", "1",
                                                                     "--max-turn-tokens", "16"]),
                                           ("trl_environment.py", ["--qwen-template",
                                                                   "--max-completion-length", "32"])])
def test_the_example_scripts_train_a_step(tmp_path, script, extra):
    """examples/ run as documented (tiny model, one step, a three-passage corpus)."""
    import subprocess
    import sys
    from pathlib import Path

    corpus, qa = tmp_path / "corpus.jsonl", tmp_path / "qa.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"{t}"\n{t} is a city.'}) + "\n"
                              for i, t in enumerate(["Paris", "Tokyo", "Rome"])))
    qa.write_text("".join(json.dumps({"id": str(i), "question": f"Which city is {t}?",
                                      "golden_answers": [t]}) + "\n"
                          for i, t in enumerate(["Paris", "Tokyo"])))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "examples" / script), "--questions", str(qa),
                          "--corpus", str(corpus), "--model", "embedded:tiny-random", "--steps", "1",
                          "--prompts-per-step", "1", "--num-generations", "2",
                          "-o", str(tmp_path / "out"), *extra],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "final" / "config.json").exists()
