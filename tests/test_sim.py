"""Simulation tuning end to end on the tiny model and a tiny corpus: collect (with a resume after an
interruption), label by three methods, build, SFT, fidelity; and the released-layout loader."""

import json
import subprocess
import sys

import pytest

from zerosearch.engines import EngineConfig, build_engine
from zerosearch.jsonl import read_finished
from zerosearch.rollout import RolloutConfig, Row
from zerosearch.sim.build import build, load_released
from zerosearch.sim.collect import CollectConfig, collect
from zerosearch.sim.label import agreement, contains_answer, label

ROWS = [Row("Which city is the capital of Germany?", ["Berlin"], "g"),
        Row("Who wrote On the Origin of Species?", ["Charles Darwin"], "d"),
        Row("Which mountain is the highest above sea level?", ["Mount Everest"], "e"),
        Row("What is the largest river in South America?", ["Amazon"], "a"),
        Row("Which city is the capital of France?", ["Paris"], "p"),
        Row("Which river flows through Cairo?", ["Nile"], "n"),
        Row("What is the population of the capital of Germany?", ["3.7 million"], "l"),
        Row("In which year did Charles Darwin die?", ["1882"], "y"),
        Row("How tall is Mount Everest?", ["8,849 metres"], "f")]


@pytest.fixture()
def bm25(tiny_corpus):
    return build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus), topk=2), log=lambda m: None)


class _Boom(Exception):
    pass


class _FailingEngine:
    """Delegates to a real engine, then fails on its n-th call (a crash mid-collection)."""

    name = "bm25"

    def __init__(self, engine, fail_on):
        self.engine, self.calls, self.fail_on = engine, 0, fail_on

    def search(self, requests):
        self.calls += 1
        if self.calls == self.fail_on:
            raise _Boom("killed")
        return self.engine.search(requests)


def test_collect_resumes_without_duplicates_or_losses(bm25, tmp_path):
    out = tmp_path / "collected.jsonl"
    cfg = CollectConfig(query_source="question", batch_size=2, rollout=RolloutConfig(topk=2))
    with pytest.raises(_Boom):
        collect(ROWS, _FailingEngine(bm25, fail_on=2), out, cfg)
    assert [r["row_id"] for r in read_finished(out)] == ["g", "d"]
    with open(out, "a") as f:
        f.write('{"row_id": "e", "quest')  # killed mid-write as well
    counts = collect(ROWS, bm25, out, cfg)
    ids = [r["row_id"] for r in read_finished(out)]
    assert ids == ["g", "d", "e", "a", "p", "n", "l", "y", "f"] and counts["queries"] == 9
    first = read_finished(out)[0]
    assert first["searches"][0]["query"] == ROWS[0].question
    assert first["searches"][0]["documents"][0]["title"] == "Berlin"


def test_collect_with_a_policy_records_its_searches(bm25, tmp_path, tiny_model):
    from helpers import ScriptedPolicy
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    scripts = {r.question: [f"<search>{r.question.split()[-1].strip('?')}</search>",
                            f"<answer>{r.golden_answers[0]}</answer>"] for r in ROWS}
    out = tmp_path / "policy.jsonl"
    counts = collect(ROWS[:3], bm25, out, CollectConfig(query_source="policy",
                                                       rollout=RolloutConfig(max_turns=2, topk=2)),
                     ScriptedPolicy(tok, scripts), tok)
    assert counts == {"questions": 3, "queries": 3, "questions_with_queries": 3}
    rec = read_finished(out)[0]
    assert rec["f1"] == 1.0 and rec["searches"][0]["query"] == "Germany"


def test_label_three_ways_and_agreement(bm25, tmp_path, tiny_model):
    collected = tmp_path / "c.jsonl"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=2)))

    class YesJudge:  # a judge that always says yes, to check the bookkeeping
        def chat(self, conversations, params):
            from zerosearch.llm.base import Completion

            return [Completion("Yes.") for _ in conversations]

    report = label(collected, tmp_path / "l.jsonl", judge=YesJudge())
    pairs = read_finished(tmp_path / "l.jsonl")
    assert len(pairs) == 9 and report["pairs"] == 9
    by_id = {p["row_id"]: p["labels"] for p in pairs}
    assert by_id["g"]["contains"] == "useful"   # the Berlin passage names Berlin
    assert by_id["n"]["contains"] == "noisy"    # nothing about the Nile in the corpus
    assert by_id["g"]["outcome"] is None         # question-as-query: no trajectory
    assert report["methods"]["judge"]["useful"] == 9
    contains_useful = report["methods"]["contains"]["useful"]
    assert report["agreement"]["judge~contains"]["rate"] == pytest.approx(contains_useful / 9)
    assert report["agreement"]["judge~outcome"]["pairs"] == 0
    assert agreement(pairs) == report


def test_build_balances_and_uses_the_released_prompt(bm25, tmp_path):
    collected, labelled = tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=2)))
    label(collected, labelled)
    stats = build(labelled, tmp_path / "sft", label_by="contains", max_docs=2, val_fraction=0.25)
    train = read_finished(tmp_path / "sft" / "train.jsonl")
    val = read_finished(tmp_path / "sft" / "val.jsonl")
    assert stats["train"]["modes"].get("useful", 0) == stats["train"]["modes"].get("noisy", 0)
    assert not {e["row_id"] for e in train} & {e["row_id"] for e in val}
    ex = train[0]
    assert ex["prompt"][0] == {"role": "system", "content": ""}
    assert ex["prompt"][1]["content"].startswith("You are the Google search engine.\nGiven a query, you "
                                                 f"need to generate {'two' if ex['k'] == 2 else 'one'} {ex['mode']} documents")
    assert ex["completion"][0]["content"].startswith("Doc 1: ")
    build(labelled, tmp_path / "first", label_by="contains", max_docs=2, val_fraction=0.25,
          answer_first=True)
    useful = [e for e in read_finished(tmp_path / "first" / "train.jsonl") if e["mode"] == "useful"]
    assert useful and all(contains_answer(e["documents"][:1], e["golden_answers"]) for e in useful)
    with pytest.raises(ValueError, match="no pair"):
        build(labelled, tmp_path / "x", label_by="judge")


def test_load_released_layouts(tmp_path):
    path = tmp_path / "released.jsonl"
    rows = [{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "U"},
                          {"role": "assistant", "content": "Doc 1: x"}]},
            {"conversations": [{"from": "human", "value": "U2"}, {"from": "gpt", "value": "Doc 1: y"}]},
            {"instruction": "I", "input": "Q", "output": "Doc 1: z"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = load_released(path)
    assert [o["completion"][0]["content"] for o in out] == ["Doc 1: x", "Doc 1: y", "Doc 1: z"]
    assert out[2]["prompt"][1]["content"] == "I\nQ"
    path.write_text(json.dumps({"text": "?"}) + "\n")
    with pytest.raises(ValueError, match="known layouts"):
        load_released(path)


def test_contains_answer_is_token_aligned():
    assert contains_answer(["Berlin is big"], ["berlin"])
    assert not contains_answer(["Berliner Dom"], ["Berlin"])


def test_contains_leaves_yes_no_questions_unlabelled(bm25, tmp_path):
    rows = [Row("Is Berlin the capital of Germany?", ["yes"], "b"),
            Row("Is the Nile in Germany?", ["No"], "n"), Row("Which city is in Germany?", ["Berlin", "yes"], "g")]
    collect(rows, bm25, tmp_path / "c.jsonl", CollectConfig(query_source="question",
                                                           rollout=RolloutConfig(topk=2)))
    label(tmp_path / "c.jsonl", tmp_path / "l.jsonl")
    labels = {p["row_id"]: p["labels"]["contains"] for p in read_finished(tmp_path / "l.jsonl")}
    assert labels == {"b": None, "n": None, "g": "useful"}


def test_train_and_fidelity_cli_end_to_end(bm25, tmp_path, tiny_corpus, tiny_model):
    collected, labelled, sft = tmp_path / "c.jsonl", tmp_path / "l.jsonl", tmp_path / "sft"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=2)))
    label(collected, labelled)
    build(labelled, sft, max_docs=2, val_fraction=0.25)
    zs = [sys.executable, "-m", "zerosearch.cli", "sim"]
    r = subprocess.run(zs + ["train", "--data", str(sft), "--model", "embedded:tiny-random",
                             "-o", str(tmp_path / "sim"), "--max-steps", "2", "--batch-size", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    final = tmp_path / "sim" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    r = subprocess.run(zs + ["fidelity", "--simulator", f"finetuned@{final}",
                             "--simulator", "prompt@embedded:tiny-random", "--held-out",
                             str(sft / "val.jsonl"), "--reference-engine", "bm25", "--corpus",
                             str(tiny_corpus), "--topk", "2", "--max-new-tokens", "12",
                             "-o", str(tmp_path / "fid")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert [row["simulator"] for row in rows] == ["real engine (reference)", f"finetuned@{final}",
                                                  "prompt@embedded:tiny-random"]
    outputs = [json.loads(line) for line in (tmp_path / "fid" / "outputs.jsonl").open()]
    for row in rows[1:]:
        assert 0 <= row["format_validity"] <= 1
        assert row["fidelity"] == pytest.approx(row["format_validity"] * max(
            0.0, row["contains_useful"] - row["contains_noisy"]))
        mine = [o for o in outputs if o["simulator"] == row["simulator"]]
        assert len(mine) == 2 * row["queries"]  # every query in both modes, each output kept
        for mode in ("useful", "noisy"):
            held = [o["contains_answer"] for o in mine if o["mode"] == mode]
            assert sum(held) / len(held) == pytest.approx(row[f"contains_{mode}"])
    assert "| simulator |" in (tmp_path / "fid" / "fidelity.md").read_text()
    assert (tmp_path / "fid" / "fidelity.png").exists()


def test_clipping_keeps_the_answer_in_useful_documents():
    from zerosearch.sim.build import clip_words

    text = " ".join(f"w{i}" for i in range(100)) + " the answer is Charles Darwin indeed " + " ".join(
        f"v{i}" for i in range(100))
    clipped = clip_words(text, 20, ["Charles Darwin"])
    assert len(clipped.split()) == 20 and "Charles Darwin" in clipped
    assert clip_words(text, 20, ["nothing"]) == " ".join(f"w{i}" for i in range(20))
    assert clip_words("short text", 20, ["x"]) == "short text"
    # the window starts a third of its length before the answer, or ``lead`` words before it
    assert clipped.split()[6:8] == ["Charles", "Darwin"]
    assert clip_words(text, 20, ["Charles Darwin"], lead=2).split()[:4] == ["answer", "is", "Charles",
                                                                          "Darwin"]


def test_targets_keep_the_title_and_a_lower_ranked_answer():
    from zerosearch.sim.build import example, target_document

    body = " ".join(f"w{i}" for i in range(60)) + " born in Lyon " + " ".join(f"v{i}" for i in range(60))
    doc = target_document({"title": "Some Person", "text": body}, 12, ["Lyon"])
    assert doc.startswith("(Title: Some Person) ") and "Lyon" in doc
    assert len(doc.split()) == 12 + 3  # the whole title, then 12 words of the text
    inline = target_document({"title": None, "text": "Title: Lyon Text:  Lyon is a city."}, 12, [])
    assert inline == "(Title: Lyon) Lyon is a city."
    docs = [{"title": f"T{i}", "text": f"filler text {i}"} for i in range(4)] + [
        {"title": "T4", "text": body}]
    pair = {"golden_answers": ["Lyon"], "query": "q", "question": "q?", "row_id": "r",
            "documents": docs}
    useful = example(pair, "useful", 3, 12, answer_first=True)
    assert useful["k"] == 3 and "Lyon" in useful["documents"][0]  # rank 5 of 5, kept first
    assert [d.split()[1] for d in useful["documents"][1:]] == ["T0)", "T1)"]  # the rest in order
    assert not any("Lyon" in d for d in example(pair, "noisy", 3, 12)["documents"])


def test_completion_loss_equals_the_models_own_loss(tiny_model):
    """The SFT loss that projects only completion positions matches transformers' loss with the
    same labels (-100 on the prompt and padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from zerosearch.sim.tune import completion_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.randint(0, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = -100          # prompt
    labels[2, 9:] = -100          # padding
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    expected = model(**inputs).loss
    got = completion_loss(model, inputs)
    assert torch.allclose(got, expected, atol=1e-5)
    doubled = 2 * int((labels[:, 1:] != -100).sum())
    assert torch.allclose(completion_loss(model, inputs, num_items_in_batch=doubled), expected / 2, atol=1e-5)


def test_sim_train_resumes_from_its_last_checkpoint(bm25, tmp_path, tiny_model):
    from zerosearch.config import ConfigError
    from zerosearch.sim.tune import SimTrainConfig, train_simulator

    collected, labelled, sft = tmp_path / "c.jsonl", tmp_path / "l.jsonl", tmp_path / "sft"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=2)))
    label(collected, labelled)
    build(labelled, sft, max_docs=2, val_fraction=0.25)
    cfg = SimTrainConfig(model="embedded:tiny-random", data=str(sft), output_dir=str(tmp_path / "sim"),
                         max_steps=2, batch_size=2, save_steps=1, bf16=False)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_simulator(SimTrainConfig(**{**cfg.__dict__, "resume": True}), log=lambda m: None)
    train_simulator(cfg, log=lambda m: None)
    assert (tmp_path / "sim" / "checkpoint-2").is_dir()
    steps = []
    train_simulator(SimTrainConfig(**{**cfg.__dict__, "max_steps": 4, "resume": True}), log=lambda m: None,
                    progress=lambda step, total, info: steps.append(step))
    assert min(steps) == 3 and max(steps) == 4  # steps 1-2 were not run again
    logged = [json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").open()]
    assert logged and logged[-1]["step"] == 4
    assert (tmp_path / "sim" / "final" / "model.safetensors").exists()


def test_answer_weighting_marks_the_answer_tokens_of_useful_completions(tiny_model):
    from transformers import AutoTokenizer

    from zerosearch.protocol import finetuned_sim_messages
    from zerosearch.sim.tune import weighted_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = finetuned_sim_messages("origin of species author", "Who wrote On the Origin of Species?",
                                    ["Charles Darwin"], "useful", k=2)
    completion = [{"role": "assistant", "content": "Doc 1: (Title: Book) written by charles darwin in "
                                                   "1859.\nDoc 2: (Title: Darwin) Charles Darwinism aside, "
                                                   "Charles Darwin was a naturalist."}]
    row = {"prompt": prompt, "completion": completion, "mode": "useful", "golden_answers": ["Charles Darwin"]}
    ex = weighted_example(tokenizer, row, 4.0, 1024)
    # the same tokens and loss positions as TRL's chat tokenisation
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True)
    full = full["input_ids"] if hasattr(full, "keys") else full
    assert ex["input_ids"] == list(full)
    n_prompt = len(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    assert ex["labels"][0] == -100 and ex["labels"][-1] != -100
    heavy = [t for t, w in zip(ex["input_ids"], ex["loss_weights"]) if w == 4.0]
    assert all(label != -100 for label, w in zip(ex["labels"], ex["loss_weights"]) if w == 4.0)
    text = tokenizer.decode(heavy)
    # both whole-word mentions in the completion, not "Darwinism", not the prompt's own mention
    assert text.lower().count("charles") == 2 and "ism" not in text and n_prompt > 0
    noisy = weighted_example(tokenizer, {**row, "mode": "noisy"}, 4.0, 1024)
    assert set(noisy["loss_weights"]) == {1.0} and noisy["labels"] == ex["labels"]
    assert len(weighted_example(tokenizer, row, 4.0, 50)["loss_weights"]) == 50


def test_sim_train_with_answer_weight(bm25, tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from zerosearch.sim.tune import SimTrainConfig, completion_loss, train_simulator

    collected, labelled, sft = tmp_path / "c.jsonl", tmp_path / "l.jsonl", tmp_path / "sft"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=2)))
    label(collected, labelled)
    build(labelled, sft, max_docs=2, val_fraction=0.25)
    logs = []
    final = train_simulator(SimTrainConfig(model="embedded:tiny-random", data=str(sft), bf16=False,
                                           output_dir=str(tmp_path / "sim"), max_steps=2, batch_size=2,
                                           answer_weight=5.0, noisy_unlikelihood=1.0), log=logs.append)
    assert (tmp_path / "sim" / "final" / "model.safetensors").exists() and final
    assert any(m.startswith("answer weighting:") and not m.startswith("answer weighting: 0 ")
               for m in logs)
    assert any(m.startswith("unlikelihood 1.0:") and "noisy examples" in m for m in logs)
    # the weights scale each token's cross-entropy: all ones is the plain loss
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.randint(5, 500, (2, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    plain = completion_loss(model, {"input_ids": ids, "labels": labels})
    ones = completion_loss(model, {"input_ids": ids, "labels": labels, "loss_weights": torch.ones(2, 9)})
    twice = completion_loss(model, {"input_ids": ids, "labels": labels,
                                    "loss_weights": torch.full((2, 9), 2.0)})
    assert torch.allclose(plain, ones) and torch.allclose(twice, 2 * plain)
    with pytest.raises(ValueError, match="answer_weight"):
        train_simulator(SimTrainConfig(model="embedded:tiny-random", data=str(sft), answer_weight=0.0,
                                       output_dir=str(tmp_path / "sim2")), log=lambda m: None)


def test_noisy_unlikelihood_pushes_down_the_answers_first_tokens(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.sim.tune import answer_first_tokens, completion_loss, weighted_collator, weighted_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = answer_first_tokens(tokenizer, ["The Amazonian Republic", "7"])
    # the article is skipped and a one-character piece is never banned
    assert first and all(len(tokenizer.decode([t]).strip()) >= 3 for t in first)
    assert all(tokenizer.decode([t]).strip().lower() != "the" for t in first)
    row = {"prompt": [{"role": "user", "content": "q"}], "golden_answers": ["Amazonian"],
           "completion": [{"role": "assistant", "content": "Doc 1: (Title: X) nothing here."}]}
    noisy = weighted_example(tokenizer, {**row, "mode": "noisy"}, 1.0, 512, ban_answers=True)
    holding = [{"role": "assistant", "content": "Doc 1: (Title: X) the Amazonian river."}]
    useful = weighted_example(tokenizer, {**row, "mode": "useful", "completion": holding}, 1.0, 512,
                              ban_answers=True)
    assert noisy["banned_ids"] == answer_first_tokens(tokenizer, ["Amazonian"]) and not useful["banned_ids"]
    # a useful target without the answer (a stub query the real engine missed) is pushed off it too
    missed = weighted_example(tokenizer, {**row, "mode": "useful"}, 1.0, 512, ban_answers=True)
    assert missed["banned_ids"] == noisy["banned_ids"]
    batch = weighted_collator(tokenizer.pad_token_id or 0)([noisy, useful])
    assert batch["banned_ids"].shape[0] == 2 and (batch["banned_ids"][1] == -1).all()

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = completion_loss(model, batch)
    pushed = completion_loss(model, batch, unlikelihood=0.5)
    # by hand: -log(1 - p) of each banned token at each completion position of the noisy row
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
    keep = batch["labels"][0, 1:] != -100
    p = logits[keep].softmax(-1)[:, batch["banned_ids"][0]]
    count = (batch["labels"][:, 1:] != -100).sum()
    assert torch.allclose(pushed - plain, 0.5 * -torch.log1p(-p).sum() / count, atol=1e-5)


def test_noisy_contrast_puts_the_useful_target_under_the_noisy_prompt(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.sim.tune import (SimTrainConfig, completion_loss, contrast_rows, train_simulator,
                                     weighted_collator, weighted_example)

    def row(mode, query, text):
        return {"prompt": [{"role": "user", "content": f"{mode} {query}"}], "mode": mode, "query": query,
                "golden_answers": ["Amazonian"],
                "completion": [{"role": "assistant", "content": text}]}

    rows = [row("useful", "a", "Doc 1: the Amazonian one."), row("noisy", "a", "Doc 1: nothing."),
            row("noisy", "b", "Doc 1: nothing either.")]  # b has no useful example: no contrast row
    (contrast,) = contrast_rows(rows)
    assert contrast["prompt"] == rows[1]["prompt"] and contrast["completion"] == rows[0]["completion"]
    assert contrast["mode"] == "contrast"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ex = weighted_example(tokenizer, contrast, 10.0, 512, ban_answers=True)
    # no likelihood anywhere; the unlikelihood marks exactly the tokens that spell the answer
    assert set(ex["loss_weights"]) == {0.0} and any(label != -100 for label in ex["labels"])
    marked = [t for t, u in zip(ex["input_ids"], ex["unlike"]) if u]
    assert tokenizer.decode(marked).strip() == "Amazonian" and not ex["banned_ids"]
    useful = weighted_example(tokenizer, rows[0], 10.0, 512, ban_answers=True)
    assert not any(useful["unlike"]) and max(useful["loss_weights"]) == 10.0
    batch = weighted_collator(tokenizer.pad_token_id or 0)([ex, useful])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = completion_loss(model, batch)
    pushed = completion_loss(model, batch, unlikelihood=0.5)
    # by hand: -log(1 - p(label)) at the marked positions of the contrast row, over all labels
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
    at = batch["unlike"][0, 1:].bool()
    p = logits[at].softmax(-1).gather(1, batch["labels"][0, 1:][at][:, None])[:, 0]
    count = (batch["labels"][:, 1:] != -100).sum()
    assert torch.allclose(pushed - plain, 0.5 * -torch.log1p(-p).sum() / count, atol=1e-5)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="noisy_unlikelihood"):
        train_simulator(SimTrainConfig(model="embedded:tiny-random", data=str(data), noisy_contrast=True,
                                       output_dir=str(tmp_path / "s")), log=lambda m: None)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    with pytest.raises(ValueError, match="--paired"):
        train_simulator(SimTrainConfig(model="embedded:tiny-random", data=str(data), noisy_contrast=True,
                                       noisy_unlikelihood=1.0, output_dir=str(tmp_path / "s")),
                        log=lambda m: None)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = []
    train_simulator(SimTrainConfig(model="embedded:tiny-random", data=str(data), noisy_contrast=True,
                                   noisy_unlikelihood=1.0, bf16=False, max_steps=1, batch_size=2,
                                   output_dir=str(tmp_path / "s")), log=logs.append)
    assert "noisy contrast: 1 useful targets under noisy prompts" in logs


def test_paired_examples_give_each_query_both_modes_where_its_documents_allow():
    from zerosearch.sim.build import paired_examples

    docs = [{"title": "Paris", "text": "Paris is the capital of France.", "id": "1"},
            {"title": "Berlin", "text": "Berlin is in Germany.", "id": "2"},
            {"title": "Rome", "text": "Rome is in Italy.", "id": "3"},
            {"title": "Madrid", "text": "Madrid is in Spain.", "id": "4"}]
    pair = {"query": "capital of France", "question": "Which city is the capital of France?",
            "golden_answers": ["Paris"], "row_id": "p", "documents": docs[1:3] + docs[:1] + docs[3:],
            "labels": {"contains": "useful"}}
    useful, noisy = paired_examples(pair, max_docs=3)
    assert useful["labels"]["contains"] == "useful" and useful["documents"][0]["id"] == "1"
    assert [d["id"] for d in useful["documents"]] == ["1", "2", "3", "4"]
    assert noisy["labels"]["contains"] == "noisy"
    assert [d["id"] for d in noisy["documents"]] == ["2", "3", "4"]
    assert pair["labels"]["contains"] == "useful"  # the input is not changed
    # too few answer-free documents for a noisy target, none holding the answer for a useful one
    assert [p["labels"]["contains"] for p in paired_examples(pair, max_docs=4)] == ["useful"]
    answerless = {**pair, "documents": docs[1:]}
    assert [p["labels"]["contains"] for p in paired_examples(answerless, max_docs=3)] == ["noisy"]
    # a stub query's useful example is the engine's top documents as ranked, answer or not
    from zerosearch.sim.build import example

    stub = {**pair, "query": "capital of", "partial": True}
    useful, noisy = paired_examples(stub, max_docs=3)
    assert [d["id"] for d in useful["documents"]] == ["2", "3", "1", "4"]
    assert [d["id"] for d in noisy["documents"]] == ["2", "3", "4"]
    written = example(useful, "useful", 2, 30, answer_first=True)
    assert not contains_answer(written["documents"], ["Paris"]) and written["partial"]
    assert [p["labels"]["contains"] for p in paired_examples({**answerless, "partial": True}, 3)] == ["useful", "noisy"]


def test_build_paired_sets_noisy_targets_without_the_answer(bm25, tmp_path):
    collected, labelled = tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    collect(ROWS, bm25, collected, CollectConfig(query_source="question", rollout=RolloutConfig(topk=5)))
    label(collected, labelled)
    stats = build(labelled, tmp_path / "sft", label_by="contains", max_docs=2, val_fraction=0.0,
                  paired=True)
    train = read_finished(tmp_path / "sft" / "train.jsonl")
    assert stats["train"]["modes"]["useful"] == stats["train"]["modes"]["noisy"] > 0
    for ex in train:
        assert contains_answer(ex["documents"], ex["golden_answers"]) == (ex["mode"] == "useful")
    both = {e["row_id"] for e in train if e["mode"] == "useful"} & {e["row_id"] for e in train if e["mode"] == "noisy"}
    assert both  # some questions give an example of each mode
    with pytest.raises(ValueError, match="contains"):
        build(labelled, tmp_path / "x", label_by="outcome", paired=True)


def test_partial_queries_are_seeded_stubs_of_the_question():
    import random

    from zerosearch.sim.collect import partial_query

    question = "In what year was the Zorbak guild founded?"
    stubs = [partial_query(question, random.Random(i)) for i in range(50)]
    words = question.split()
    for stub in stubs:
        kept = stub.split()
        assert 0 < len(kept) < len(words)
        it = iter(words)
        assert all(w in it for w in kept)  # a subsequence: order kept
    assert len(set(stubs)) > 10  # seeds change the stub
    assert partial_query(question, random.Random(3)) == partial_query(question, random.Random(3))
    assert partial_query("Paris", random.Random(0)) is None


def test_nameless_queries_drop_the_names_of_the_question():
    from zerosearch.sim.collect import nameless_query

    assert nameless_query("In what year was the creator of The Winter Compass born?") == \
        "In what year was the creator of born?"
    assert nameless_query("Which river flows through Cairo?") == "Which river flows through"
    assert nameless_query("who wrote it?") is None  # no name: nothing to drop
    assert nameless_query("Who Zorbak?") is None  # nothing left but the first word


def test_partial_queries_teach_what_the_engine_returns_for_a_stub(bm25, tmp_path):
    collected, labelled = tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    cfg = CollectConfig(query_source="question", rollout=RolloutConfig(topk=5), partial_queries=2, seed=1)
    counts = collect(ROWS, bm25, collected, cfg)
    records = read_finished(collected)
    assert counts["queries"] > len(ROWS)
    from zerosearch.sim.collect import nameless_query

    for rec in records:
        assert rec["searches"][0]["query"] == rec["question"] and not rec["searches"][0]["partial"]
        assert all(s["partial"] and s["query"] != rec["question"] for s in rec["searches"][1:])
        if nameless_query(rec["question"]):  # a question with a name: its first stub drops it
            assert rec["searches"][1]["query"] == nameless_query(rec["question"])
    again = tmp_path / "again.jsonl"
    collect(ROWS, bm25, again, cfg)
    assert read_finished(again) == records  # the same seed, the same stubs
    label(collected, labelled)
    build(labelled, tmp_path / "sft", label_by="contains", max_docs=2, val_fraction=0.0, paired=True,
          balance=False)
    train = read_finished(tmp_path / "sft" / "train.jsonl")
    # full-question useful targets always hold the answer; a stub's may not (what BM25 returned)
    for ex in train:
        if ex["mode"] == "useful" and not ex["partial"]:
            assert contains_answer(ex["documents"], ex["golden_answers"])
        if ex["mode"] == "noisy":
            assert not contains_answer(ex["documents"], ex["golden_answers"])
    missed = [e for e in train if e["partial"] and e["mode"] == "useful"
              and not contains_answer(e["documents"], e["golden_answers"])]
    assert missed, "some stub misses the answer and is still a useful example"


def test_cli_collects_stub_queries_and_reports_their_fidelity_apart(tmp_path, tiny_corpus):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": r.id, "question": r.question, "golden_answers": r.golden_answers})
                             + "\n" for r in ROWS))
    zs = [sys.executable, "-m", "zerosearch.cli", "sim"]
    run = lambda *args: subprocess.run(zs + list(args), capture_output=True, text=True, timeout=600)  # noqa: E731
    r = run("collect", "--engine", "bm25", "--corpus", str(tiny_corpus), "--topk", "4", "--train-data",
            str(train), "--query-source", "policy", "--partial-queries", "1", "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 2 and "query_source=question" in r.stdout + r.stderr
    r = run("collect", "--engine", "bm25", "--corpus", str(tiny_corpus), "--topk", "4", "--train-data",
            str(train), "--query-source", "question", "--partial-queries", "1", "--partial-seed", "2",
            "-o", str(tmp_path / "c.jsonl"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(ROWS)} questions, {2 * len(ROWS)} queries" in " ".join((r.stdout + r.stderr).split())
    label(tmp_path / "c.jsonl", tmp_path / "l.jsonl")
    build(tmp_path / "l.jsonl", tmp_path / "sft", max_docs=2, val_fraction=0.5, paired=True, seed=1)
    val = read_finished(tmp_path / "sft" / "val.jsonl")
    assert {e["partial"] for e in val} == {True, False}
    r = run("fidelity", "--simulator", "prompt@embedded:tiny-random", "--held-out", str(tmp_path / "sft" / "val.jsonl"),
            "--topk", "2", "--max-new-tokens", "8", "-o", str(tmp_path / "fid"))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert [row["simulator"] for row in rows] == [
        "real engine (reference)", "prompt@embedded:tiny-random",
        "real engine (reference), stub queries", "prompt@embedded:tiny-random, stub queries"]
    assert rows[1]["queries"] == len({(e["row_id"], e["query"]) for e in val if not e["partial"]})
    assert rows[3]["queries"] == len({(e["row_id"], e["query"]) for e in val if e["partial"]})
