"""RL training end to end on the CPU with the tiny model: GRPO / REINFORCE++ / PPO for 2 steps
against BM25 and the simulated engine, the loss mask inside TRL, resume after an interruption, and
clear errors before training starts."""

import json
import random
from pathlib import Path

import pytest
from transformers import TrainerCallback

from helpers import ScriptedPolicy
from zerosearch.rollout import Generation
from zerosearch.config import ConfigError
from zerosearch.curriculum import CurriculumConfig
from zerosearch.train.config import load_train_config
from zerosearch.train.order import stratified_order
from zerosearch.train.run import build_trainer, train

QUESTIONS = {"Which city is the capital of Germany?": ["Berlin"],
             "Who wrote On the Origin of Species?": ["Charles Darwin", "Darwin"],
             "What is the highest mountain?": ["Mount Everest"],
             "Which river is the largest in South America?": ["Amazon"]}


@pytest.fixture()
def qa_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "golden_answers": a}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS.items())))
    return path


def _config(tmp_path, qa_file, engine, algorithm="grpo", steps=2, **training):
    return load_train_config(None, {
        "model": {"name": "embedded:tiny-random"},
        "data": {"train": str(qa_file)},
        "engine": engine,
        "rollout": {"max_turns": 2, "max_turn_tokens": 16, "max_completion_tokens": 160,
                    "max_obs_tokens": 64},
        "curriculum": {"p_start": 0.0, "p_end": 0.5},
        "algorithm": {"name": algorithm, "num_generations": 2},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": steps, "prompts_per_step": 2,
                     "micro_batch_size": 2, "save_steps": 1, "report_to": [],
                     "learning_rate": 1e-4, **training},
    })


def _metrics(cfg):
    with open(f"{cfg.training.output_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f if '"reward"' in line]


def _bm25(tiny_corpus):
    return {"kind": "bm25", "corpus": str(tiny_corpus), "topk": 2}


SIMULATED = {"kind": "simulated", "model": "embedded:tiny-random", "max_new_tokens": 12, "seed": 0,
             "topk": 2}


@pytest.mark.parametrize("algorithm,engine", [("grpo", "bm25"), ("ppo", "simulated"),
                                              ("reinforce++", "bm25"), ("ppo", "bm25")])
def test_two_steps_with_the_tiny_model(tmp_path, qa_file, tiny_corpus, algorithm, engine):
    cfg = _config(tmp_path, qa_file, _bm25(tiny_corpus) if engine == "bm25" else SIMULATED, algorithm)
    final = train(cfg, log=lambda m: None)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists() and final.endswith("final")
    rows = _metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "zerosearch/f1", "zerosearch/em", "zerosearch/searches_per_question",
                "zerosearch/turns", "zerosearch/valid_action_rate", "zerosearch/truncation_rate",
                "time/generation_s", "time/search_s", "time/optimisation_s",
                "completions/mean_length"):
        assert key in rows[0], key
    if algorithm == "ppo":
        assert (tmp_path / "run" / "checkpoint-2" / "value" / "model.safetensors").exists()
        assert "zerosearch/value_loss" in rows[0]
    if engine == "bm25":  # a real engine has no noise: no key (a NaN made TensorBoard warn each step)
        assert "zerosearch/noise_prob" not in rows[0]
    if engine == "simulated":  # step 0 of 2, then step 1 of 2: (4**0.5 - 1) / 3 * 0.5
        assert rows[0]["zerosearch/noise_prob"] == 0.0
        assert rows[1]["zerosearch/noise_prob"] == pytest.approx(1 / 6)


class _Capture(TrainerCallback):
    pass


def _scripted_loss_inputs(cfg):
    """Train ``cfg`` with a policy that searches "capital of Germany" and then answers, and return
    (tokenizer, the completion ids and masks of every batch the loss saw)."""
    trainer = build_trainer(cfg, log=lambda m: None)
    tok = trainer.processing_class
    scripts = {q: ["<search>capital of Germany</search>",
                   f"<answer>{a[0]}</answer>"] for q, a in QUESTIONS.items()}
    trainer._generator = lambda model: ScriptedPolicy(tok, scripts)
    seen = []
    original = trainer._compute_loss

    def spy(model, inputs):
        seen.append({k: inputs[k].clone() for k in ("completion_ids", "completion_mask", "tool_mask")})
        return original(model, inputs)

    trainer._compute_loss = spy
    try:
        trainer.train()
    finally:
        trainer.engine.close()
    return tok, seen


def test_searches_happen_and_the_loss_mask_excludes_every_inserted_token(tmp_path, qa_file, tiny_corpus):
    cfg = _config(tmp_path, qa_file, _bm25(tiny_corpus), "grpo", steps=1)
    tok, seen = _scripted_loss_inputs(cfg)
    assert seen
    for batch in seen:
        for ids, cmask, tmask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
            n = int(cmask.sum())
            trained = tok.decode([int(i) for i, m in zip(ids[:n], tmask[:n]) if m])
            inserted = tok.decode([int(i) for i, m in zip(ids[:n], tmask[:n]) if not m])
            # token by token: everything trained on is the policy's, everything inserted is masked
            assert "<information>" not in trained and "Doc 1" not in trained
            assert trained.startswith("<search>capital of Germany</search><answer>")
            # ZeroSearch's document lines (the default for our own policy): "Doc i: text", no title
            assert inserted.startswith("\n\n<information>Doc 1: Berlin is the capital of Germany")
            assert inserted.endswith("</information>\n\n")
    [row] = _metrics(cfg)
    assert row["zerosearch/searches_per_question"] == 1.0 and row["reward"] == 1.0
    assert row["zerosearch/valid_action_rate"] == 1.0 and row["time/search_s"] > 0


class _ParityPolicy(ScriptedPolicy):
    """Answers at once: right on the even rows of each call, wrong on the odd ones, so each
    GRPO group (two rollouts side by side) holds one reward of 1 and one of 0; with
    ``first_wrong`` every row of its first call is wrong."""

    def __init__(self, tok, scripts, first_wrong=False):
        super().__init__(tok, scripts)
        self.first_wrong = first_wrong

    def generate(self, contexts, max_new_tokens, temperature, top_p):
        self.calls.append(len(contexts))
        wrong = self.first_wrong and len(self.calls) == 1
        out = []
        for i, ctx in enumerate(contexts):
            text = self.tok.decode(ctx)
            answer = next(a[0] for q, a in QUESTIONS.items() if f"Question: {q}\n" in text)
            reply = f"<answer>{answer if i % 2 == 0 and not wrong else 'nobody'}</answer>"
            out.append(Generation(self.tok(reply, add_special_tokens=False)["input_ids"][:max_new_tokens]))
        return out


def _train_scripted(cfg, policy):
    trainer = build_trainer(cfg, log=lambda m: None)
    tok = trainer.processing_class
    trainer._generator = lambda model: policy(tok)
    try:
        trainer.train()
    finally:
        trainer.engine.close()
    return [json.loads(line) for line in (Path(cfg.training.output_dir) / "rollouts.jsonl").read_text().splitlines()]


def test_steps_without_signal_draw_fresh_questions(tmp_path, qa_file, tiny_corpus):
    """algorithm.resample_rounds: a step whose groups all score alike rolls out fresh questions
    (seeded: a rerun draws the same), up to the limit; a step with a signal trains on its first draw."""
    wrong = {q: ["<answer>nobody</answer>"] for q in QUESTIONS}
    runs = []
    for name in ("a", "b"):
        cfg = _config(tmp_path / name, qa_file, _bm25(tiny_corpus), "grpo", steps=2)
        cfg.algorithm.resample_rounds = 2
        runs.append((cfg, _train_scripted(cfg, lambda tok: ScriptedPolicy(tok, wrong))))
    (cfg, rollouts), (_, again) = runs
    assert [(r["step"], r["draw"]) for r in rollouts] == [(s, d) for s in (1, 2) for d in (0, 1, 2)
                                                          for _ in range(4)]
    assert all(r["reward"] == 0.0 for r in rollouts)
    ids = {f"q{i}" for i in range(len(QUESTIONS))}
    for step in (1, 2):
        redrawn = set()
        for draw in (1, 2):  # two questions, each rolled out twice, side by side
            drawn = [r["id"] for r in rollouts if (r["step"], r["draw"]) == (step, draw)]
            assert drawn[0] == drawn[1] and drawn[2] == drawn[3] and drawn[0] != drawn[2]
            redrawn |= set(drawn)
        assert redrawn == ids  # a step's redraws take other questions each time
    assert [r["id"] for r in again] == [r["id"] for r in rollouts]
    assert [row["zerosearch/redraws"] for row in _metrics(cfg)] == [2.0, 2.0]

    cfg = _config(tmp_path / "c", qa_file, _bm25(tiny_corpus), "grpo", steps=2)
    cfg.algorithm.resample_rounds = 2
    shared = {}  # one policy for every rollout: its first call answers wrong, the rest by parity
    rollouts = _train_scripted(cfg, lambda tok: shared.setdefault("policy", _ParityPolicy(tok, {}, first_wrong=True)))
    # step 1: the first draw has no signal, the second has; step 2: the first draw has
    assert [(r["step"], r["draw"]) for r in rollouts] == [(1, 0)] * 4 + [(1, 1)] * 4 + [(2, 0)] * 4
    assert [r["reward"] for r in rollouts] == [0.0] * 4 + [1.0, 0.0] * 4
    assert [row["zerosearch/redraws"] for row in _metrics(cfg)] == [1.0, 0.0]


def test_resample_rounds_must_not_be_negative(tmp_path, qa_file, tiny_corpus):
    with pytest.raises(ConfigError, match="resample_rounds"):
        load_train_config(None, {"data": {"train": str(qa_file)}, "algorithm": {"resample_rounds": -1}})


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("simulated crash after step 2")


def test_resume_reproduces_step_and_curriculum(tmp_path, qa_file):
    cfg = _config(tmp_path, qa_file, SIMULATED, "grpo", steps=4)
    trainer = build_trainer(cfg, log=lambda m: None)
    trainer.add_callback(_Interrupt())
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    trainer.engine.close()
    assert (tmp_path / "run" / "checkpoint-1").exists() and not (tmp_path / "run" / "checkpoint-2").exists()
    train(cfg, resume=True, log=lambda m: None)
    rows = _metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 2 redone from checkpoint-1, none lost
    schedule = CurriculumConfig(0.0, 0.5)
    for r in rows:  # the noise probability of step s was drawn at global_step s - 1 of 4
        assert r["zerosearch/noise_prob"] == pytest.approx(schedule.at(r["step"] - 1, 4))
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    # 2 questions x 2 rollouts a step, each step logged once (the killed step 2 cut back on resume)
    assert [r["step"] for r in rollouts] == [s for s in (1, 2, 3, 4) for _ in range(4)]
    assert all("group" not in r for r in rollouts)  # no data.stratify_by: no group


def test_stratified_order_gives_every_step_its_share_of_each_group():
    rng = random.Random(0)
    for trial in range(100):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 5))]
        block = rng.randint(1, 6)
        groups = [g for g, n in enumerate(sizes) for _ in range(n)]
        rng.shuffle(groups)
        n = len(groups)
        order = stratified_order(groups, seed=trial, block=block)
        assert sorted(order) == list(range(n))  # a permutation: nothing lost or doubled
        taken = [0] * len(sizes)
        for start in range(0, n, block):
            step = [groups[i] for i in order[start:start + block]]
            for g, size in enumerate(sizes):  # at least floor(block x share) while the group lasts
                assert step.count(g) >= min(len(step) * size // n, size - taken[g])
            for g in step:
                taken[g] += 1
            done = start + len(step)  # and the steps so far hold each share to within one question
            assert all(abs(done * size / n - t) <= 1 for size, t in zip(sizes, taken))
    hops = [1] * 907 + [2] * 406 + [3] * 232  # the mini-world's training mix, two questions a step
    order = stratified_order(hops, seed=0, block=2)
    assert all(1 in (hops[order[i]], hops[order[i + 1]]) for i in range(0, len(order) - 1, 2))
    groups = ["a"] * 6 + ["b"] * 3
    assert stratified_order(groups, 0) == stratified_order(groups, 0)
    assert stratified_order(groups, 0) != stratified_order(groups, 1)  # the seed shuffles each group
    with pytest.raises(ValueError, match="block must be at least 1"):
        stratified_order(groups, 0, block=0)


def test_group_labels_are_scalars_read_from_dotted_fields():
    from zerosearch.qa import FieldError, record_field

    assert record_field({"metadata": {"hops": 2}}, "metadata.hops", 0, "f") == "2"
    assert record_field({"data_source": "nq"}, "data_source", 0, "f") == "nq"
    for bad in ({"metadata": {}}, {"metadata": {"hops": None}}, {"metadata": {"hops": [1, 2]}},
                {"metadata": {"hops": float("nan")}}, {"metadata": {"hops": " "}}):
        with pytest.raises(FieldError, match="f: row 3 has"):
            record_field(bad, "metadata.hops", 3, "f")


def test_stratified_questions_give_every_step_the_same_mix(tmp_path, tiny_corpus):
    data = tmp_path / "hops.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "golden_answers": a,
                                        "metadata": {"hops": 1 if i % 2 else 2}}) + "\n"
                            for i, (q, a) in enumerate(QUESTIONS.items())))
    cfg = _config(tmp_path, data, _bm25(tiny_corpus))
    cfg.data.stratify_by = "metadata.hops"
    train(cfg, log=lambda m: None)
    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 2 * 2  # 2 steps x 2 questions x 2 rollouts
    for step in (1, 2):  # half the questions are 1-hop: every step draws one of each
        assert sorted(r["group"] for r in rollouts if r["step"] == step) == ["1", "1", "2", "2"]
    assert len({r["id"] for r in rollouts}) == 4  # the second step reads the other two
    metrics = _metrics(cfg)
    for step, row in zip((1, 2), metrics):  # the log holds the rewards the step trained on
        assert row["reward"] == pytest.approx(sum(r["reward"] for r in rollouts if r["step"] == step) / 4)
    cfg.data.stratify_by = "metadata.kind"
    with pytest.raises(ConfigError, match="data.stratify_by: .* row 0 has no 'metadata.kind' field"):
        build_trainer(cfg, log=lambda m: None)
    cfg.data.stratify_by = "id"  # one group per question: no stratification, refused
    with pytest.raises(ConfigError, match="id takes 4 values over 4 questions"):
        build_trainer(cfg, log=lambda m: None)


def test_bad_configs_fail_before_training(tmp_path, qa_file, tiny_corpus):
    with pytest.raises(ConfigError, match="unknown key"):
        load_train_config(None, {"training": {"max_stepz": 3}})
    with pytest.raises(ConfigError, match="algorithm.name"):
        load_train_config(None, {"algorithm": {"name": "dpo"}})
    with pytest.raises(ConfigError, match="generation_dtype"):
        load_train_config(None, {"training": {"generation_dtype": "fp8"}})
    cfg = _config(tmp_path, tmp_path / "missing.jsonl", _bm25(tiny_corpus))
    with pytest.raises(FileNotFoundError, match="QA data not found"):
        build_trainer(cfg)
    dead = {"kind": "simulated", "backend_urls": ["http://127.0.0.1:9/v1"], "backend_model": "m",
            "max_retries": 0, "timeout_s": 2}
    with pytest.raises(ValueError, match="not usable"):
        build_trainer(_config(tmp_path, qa_file, dead))
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_config(tmp_path, qa_file, _bm25(tiny_corpus)), resume=True)


def test_bf16_on_a_cpu_without_native_bf16_is_refused(tmp_path, qa_file, tiny_corpus, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal is about CPUs")
    monkeypatch.setattr("zerosearch.hardware.bf16_is_fast", lambda device=None: False)
    with pytest.raises(ConfigError, match="native bf16"):
        build_trainer(_config(tmp_path, qa_file, _bm25(tiny_corpus), bf16=True))


def test_one_bf16_step_where_the_cpu_has_native_bf16(tmp_path, qa_file, tiny_corpus):
    from zerosearch.hardware import bf16_is_fast

    if not bf16_is_fast():
        pytest.skip("this machine has no native bf16 (AMX / AVX512-BF16) and no GPU")
    cfg = _config(tmp_path, qa_file, _bm25(tiny_corpus), steps=1, bf16=True)
    train(cfg, log=lambda m: None)
    [row] = _metrics(cfg)
    assert row["step"] == 1 and row["time/optimisation_s"] > 0


def test_rollouts_from_a_bf16_copy_that_follows_the_policy(tmp_path, qa_file, tiny_corpus):
    import torch

    from zerosearch.hardware import bf16_is_fast
    from zerosearch.train.trainer import generation_dtype

    trainer = build_trainer(_config(tmp_path, qa_file, _bm25(tiny_corpus), steps=2,
                                    generation_dtype="bfloat16"), log=lambda m: None)
    policy = trainer.model
    assert generation_dtype("bfloat16", policy) == torch.bfloat16
    assert generation_dtype("float32", policy) is None  # the policy itself
    # the default: bf16 where it is native (as on this project's machines), else the policy's own
    assert generation_dtype("auto", policy) == (torch.bfloat16 if bf16_is_fast() else None)
    copies = []
    original = trainer._generator

    def spy(model):
        generator = original(model)
        copies.append((generator.model, next(generator.model.parameters()).data_ptr()))
        return generator

    trainer._generator = spy
    trainer.train()
    assert len(copies) == 2 and copies[0] == copies[1]  # one copy, refreshed in place
    [copy] = {id(c[0]): c[0] for c in copies}.values()
    assert copy is not policy and next(copy.parameters()).dtype == torch.bfloat16
    ids = torch.randint(3, 100, (1, 8))
    with torch.inference_mode():  # it computes on its own bf16 weights, not through the policy
        assert copy(input_ids=ids).logits.dtype == torch.bfloat16
    with torch.no_grad():  # the next rollout sees the policy's new weights, cast to bf16
        policy.get_input_embeddings().weight.add_(0.5)
    assert trainer._generator(policy).model is copy
    for name, value in policy.state_dict().items():
        assert torch.equal(copy.state_dict()[name], value.to(torch.bfloat16)), name


def test_presets_load():
    import glob

    for path in glob.glob("configs/*.yaml"):
        cfg = load_train_config(path)
        assert cfg.training.max_steps > 0


def test_compile_is_refused_where_it_would_not_apply(tiny_model, tmp_path, qa_file, tiny_corpus,
                                                     monkeypatch):
    """training.compile names the setting that keeps it from applying: true refuses to start,
    auto logs it and trains uncompiled; where it applies, auto compiles. config.yaml keeps what
    the user asked for."""
    from transformers import AutoModelForCausalLM

    from zerosearch import hardware
    from zerosearch.train import head_logps
    from zerosearch.train.config import TrainingConfig
    from zerosearch.train.run import compile_refusal

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = TrainingConfig(compile=True, fused_lm_head=False)
    if _has_compiler():
        assert compile_refusal(model, plain, False, False) is None
    assert "gradient_checkpointing" in compile_refusal(model, plain, True, False)
    assert "fused_lm_head" in compile_refusal(model, TrainingConfig(compile=True, fused_lm_head=True),
                                              False, False)
    with monkeypatch.context() as patch:
        patch.setattr(head_logps, "head_supported", lambda m: False)
        assert "plain, bias-free" in compile_refusal(model, plain, False, False)
    with monkeypatch.context() as patch:
        patch.setattr(hardware, "has_python_headers", lambda: False)
        if hardware.has_c_compiler():
            assert "Python development headers" in compile_refusal(model, plain, False, False)

    lines = []
    if _has_compiler():  # auto compiles where it applies
        trainer = build_trainer(_config(tmp_path, qa_file, _bm25(tiny_corpus), compile="auto"),
                                log=lines.append)
        assert trainer.zs.training.compile is True and any("compiled" in m for m in lines)
        assert "compile: auto" in (tmp_path / "run" / "config.yaml").read_text()
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C/C++ compiler" in compile_refusal(model, plain, False, False)
    with pytest.raises(ConfigError, match="C/C\\+\\+ compiler"):
        build_trainer(_config(tmp_path, qa_file, _bm25(tiny_corpus), compile=True))
    lines.clear()
    trainer = build_trainer(_config(tmp_path, qa_file, _bm25(tiny_corpus), compile="auto"),
                            log=lines.append)
    assert trainer.zs.training.compile is False
    assert any("auto: off" in m and "C/C++ compiler" in m for m in lines)


def _has_compiler() -> bool:
    from zerosearch.hardware import has_c_compiler, has_python_headers

    return has_c_compiler() and has_python_headers()


def test_quickstart_presets_load():
    """configs/quickstart/*.yaml are QuickstartConfig files (the quickstart, the learning benchmark)."""
    import glob

    from zerosearch.config import from_dict, load_yaml
    from zerosearch.quickstart import QuickstartConfig

    paths = glob.glob("configs/quickstart/*.yaml")
    assert paths
    for path in paths:
        cfg = from_dict(QuickstartConfig, load_yaml(path))
        assert cfg.sim.tune.max_steps > 0 and cfg.sim.max_new_tokens > 0
