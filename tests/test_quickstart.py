"""The quickstart at toy size (tiny random model): every stage runs, the report holds the measured
numbers, a rerun skips finished stages, and the warm-up trains only on the policy's tokens."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from zerosearch.engines.factory import EngineConfig, build_engine
from zerosearch.miniworld import MiniWorldConfig, write_world
from zerosearch.qa import load_qa
from zerosearch.rollout import RolloutConfig
from zerosearch.warmup import build_traces

TOY = {
    "policy": "embedded:tiny-random", "simulator_base": "embedded:tiny-random", "topk": 2,
    "world": {"people": 20, "works": 10, "organisations": 5, "cities": 6, "countries": 2, "distractors": 10},
    "sim": {"questions": 24, "tune": {"max_steps": 2, "batch_size": 2}, "max_new_tokens": 24},
    "warmup": {"steps": 2, "batch_size": 2, "max_traces": 8},
    "rl": {"training": {"max_steps": 2, "prompts_per_step": 2},
           "algorithm": {"num_generations": 2, "resample_rounds": 0},
           "stratify_by": "metadata.hops"},
    "rollout": {"max_turns": 1, "max_turn_tokens": 12, "max_completion_tokens": 120, "max_obs_tokens": 60,
                "topk": 2},
    "eval_questions": 4, "eval_batch_size": 4,
}


def test_toy_quickstart_runs_every_stage_resumes_and_branches(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "zerosearch.cli", "quickstart", "--config", str(config), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for path in ("world/corpus.jsonl", "sim/sft/train.jsonl", "sim/simulator/final/config.json",
                 "sim/fidelity/fidelity.json",
                 "warmup/config.json", "rl/final/config.json", "rl/metrics.jsonl", "reward.png", "em.png"):
        assert (out / path).exists(), path
    report = (out / "report.md").read_text()
    for label in ("direct answer", "RAG", "warm-up only agent", "ZeroSearch-trained agent"):
        assert label in report
    assert "untrained agent" not in report  # with a warm-up, RL's start is the warmed-up agent
    rows = [r["simulator"] for r in json.loads((out / "sim" / "fidelity" / "fidelity.json").read_text())]
    assert rows == ["real engine (reference)", "tuned simulator"]  # no guarded row unless asked
    results = json.loads((out / "eval" / "zerosearch" / "results.json").read_text())
    em_line = next(line for line in report.splitlines() if line.startswith("| ZeroSearch-trained"))
    assert f"{100 * results['average']['em']:.1f}" in em_line
    steps = [json.loads(line)["step"] for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()
             if "reward" in json.loads(line)]
    assert steps == [1, 2]
    rollouts = [json.loads(line) for line in (out / "rl" / "rollouts.jsonl").read_text().splitlines()]
    hops = {r["id"]: str(r["metadata"]["hops"]) for r in map(json.loads, (out / "world" / "train.jsonl").open())}
    assert len(rollouts) == 2 * 2 * 2 and all(r["group"] == hops[r["id"]] for r in rollouts)
    assert "questions in stratified order by `metadata.hops`" in report
    assert "reward / searches per rollout, by hop count (questions)" in report
    from zerosearch.report import signal_groups

    varied, total = signal_groups(out / "rl" / "rollouts.jsonl")
    assert total == 4 and f"in {varied} of {total} groups" in report
    step1 = [r for r in rollouts if r["step"] == 1]
    line = next(x for x in report.splitlines() if x.startswith("| 1 | "))
    for h in sorted({r["group"] for r in step1}):  # the step's reward per hop count, from the log
        mine = [r["reward"] for r in step1 if r["group"] == h]
        assert f"{h}-hop: {sum(mine) / len(mine):.2f}" in line
    stamp = (out / "sim" / "simulator" / "final" / "model.safetensors").stat().st_mtime
    logged = (out / "rl" / "metrics.jsonl").read_text()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "sim" / "simulator" / "final" / "model.safetensors").stat().st_mtime == stamp
    assert (out / "rl" / "metrics.jsonl").read_text() == logged  # RL was not run again
    assert "ZeroSearch-trained agent" in rerun.stdout

    # a branch: the same start, RL with another seed and learning rate; nothing before RL reruns
    branched = tmp_path / "branch.yaml"
    branched.write_text(yaml.safe_dump({**TOY, "seed": 1, "rl": {
        **TOY["rl"], "training": {**TOY["rl"]["training"], "learning_rate": 1e-4}}}))
    branch = tmp_path / "branch"
    r = subprocess.run([*cmd[:-4], "--config", str(branched), "-o", str(branch), "--start-from", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("world", "sim", "warmup"):
        assert (branch / name).is_symlink() and (branch / name).resolve() == (out / name).resolve()
    assert (out / "sim" / "simulator" / "final" / "model.safetensors").stat().st_mtime == stamp
    assert (out / "rl" / "metrics.jsonl").read_text() == logged  # the source is left as it was
    for name in ("direct", "rag", "warmup"):  # baselines copied, not re-evaluated
        assert ((branch / "eval" / name / "results.json").read_text()
                == (out / "eval" / name / "results.json").read_text())
    assert (branch / "rl" / "final" / "config.json").exists()
    stages = json.loads((branch / "stages.json").read_text())
    source_stages = json.loads((out / "stages.json").read_text())
    for k in ("world", "simulation tuning", "format warm-up"):  # the source's times (+ a skip's ms)
        assert stages[k] == pytest.approx(source_stages[k], abs=1.0)
    assert "Branched from" in (branch / "report.md").read_text()
    assert json.loads((branch / "config.json").read_text())["start_from"] == str(out.resolve())

    # a branch may change only rl and seed: another topk is refused, naming it, and leaves no config
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TOY, "topk": 3}))
    r = subprocess.run([*cmd[:-4], "--config", str(other), "-o", str(tmp_path / "bad"), "--start-from", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "topk" in r.stderr + r.stdout
    assert not (tmp_path / "bad" / "config.json").exists()
    r = subprocess.run([*cmd[:-4], "--config", str(config), "-o", str(tmp_path / "bad"),
                        "--start-from", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not a quickstart run folder" in r.stderr + r.stdout

    def refused_branch(folder, needle):  # refused by name, and nothing linked, copied or recorded
        before = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        r = subprocess.run([*cmd[:-4], "--config", str(config), "-o", str(folder), "--start-from", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and needle in r.stderr + r.stdout, r.stderr[-2000:]
        assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else []) == before

    held = tmp_path / "held"  # a folder holding another (not branched) run
    held.mkdir()
    shutil.copy(out / "config.json", held / "config.json")
    refused_branch(held, "start_from")
    finished = out / "eval" / "direct" / "results.json"  # a source killed before its evaluations
    finished.rename(tmp_path / "results.json")
    refused_branch(tmp_path / "early", "no finished evaluation 'direct'")
    (tmp_path / "results.json").rename(finished)


def test_warmup_traces_train_only_the_policy_tokens(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    write_world(tmp_path, MiniWorldConfig(**TOY["world"]))
    rows = [r for r in load_qa(tmp_path / "train.jsonl")]
    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tmp_path / "corpus.jsonl"), topk=2))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    traces = build_traces(rows, engine, tokenizer, RolloutConfig(topk=2, max_obs_tokens=200), 5)
    assert len(traces) == 5
    for ids, labels in traces:
        trained = tokenizer.decode([i for i, l in zip(ids, labels) if l != -100])
        masked = tokenizer.decode([i for i, l in zip(ids, labels) if l == -100])
        assert "<search>" in trained and "<answer>" in trained and "<information>" not in trained
        assert "<information>Doc 1:" in masked and "Question:" in masked
        assert ids[-1] == tokenizer.eos_token_id and labels[-1] == ids[-1]


def _zs(*args):
    return subprocess.run([sys.executable, "-m", "zerosearch.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_miniworld_is_deterministic(tmp_path):
    for name in ("a", "b"):
        r = _zs("data", "miniworld", "--out", str(tmp_path / name), "--seed", "3", "--people", "25")
        assert r.returncode == 0, r.stderr
    assert "passages" in r.stderr
    for f in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_bad_quickstart_configs_fail_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rl": {"stepz": 3}}))
    r = _zs("quickstart", "-c", str(bad), "-o", str(tmp_path / "qs"))
    assert r.returncode != 0 and "stepz" in r.stderr and not (tmp_path / "qs").exists()
    # a folder made with other settings is not silently reused
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "config.json").write_text(json.dumps({"policy": "something-else"}))
    r = _zs("quickstart", "-o", str(tmp_path / "qs"), "--rl-steps", "1")
    assert r.returncode != 0 and "different" in r.stderr and "policy" in r.stderr


def test_a_run_folder_from_before_sim_tune_resumes_with_the_same_settings(tmp_path):
    """A config.json written when the sim section held its fine-tuning keys itself (steps,
    batch_size, ...) is the same configuration as today's ``sim.tune``: the folder resumes; a
    different setting is still refused."""
    import dataclasses

    from zerosearch.quickstart import QuickstartConfig, check_same_config

    cfg = QuickstartConfig(output_dir=str(tmp_path))
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    tune = old["sim"].pop("tune")
    old["sim"].update(steps=tune["max_steps"], batch_size=tune["batch_size"],
                      learning_rate=tune["learning_rate"], answer_weight=tune["answer_weight"],
                      noisy_unlikelihood=tune["noisy_unlikelihood"], noisy_contrast=tune["noisy_contrast"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_same_config(cfg)
    assert "tune" in json.loads((tmp_path / "config.json").read_text())["sim"]
    old["sim"]["steps"] += 1
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="different sim"):
        check_same_config(cfg)


def test_a_run_folder_from_before_eval_split_and_fidelity_guard_resumes(tmp_path):
    """A config.json written before ``eval_split`` and ``sim.fidelity_guard`` existed resumes with
    their defaults (test, no guarded row); a folder evaluated on another split is refused."""
    import dataclasses

    from zerosearch.quickstart import QuickstartConfig, check_same_config

    cfg = QuickstartConfig(output_dir=str(tmp_path))
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del old["eval_split"], old["sim"]["fidelity_guard"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_same_config(cfg)
    assert json.loads((tmp_path / "config.json").read_text())["eval_split"] == "test"
    (tmp_path / "config.json").write_text(json.dumps({**old, "eval_split": "val"}))
    with pytest.raises(ValueError, match="different eval_split"):
        check_same_config(cfg)


def test_a_run_folder_from_before_stratified_questions_resumes_only_unstratified(tmp_path):
    """A config.json written before ``rl.stratify_by`` existed was trained on shuffled questions: it
    resumes under today's default (a shuffle) and is refused with ``stratify_by: metadata.hops``,
    the message naming the nested key."""
    import dataclasses

    from zerosearch.quickstart import QuickstartConfig, check_same_config

    cfg = QuickstartConfig(output_dir=str(tmp_path))
    assert cfg.rl.stratify_by is None
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del old["rl"]["stratify_by"]
    del old["rl"]["algorithm"]["resample_rounds"]  # came later still: those runs drew once a step
    cfg.rl.algorithm.resample_rounds = 0
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg.rl.stratify_by = "metadata.hops"
    with pytest.raises(ValueError, match=r"different rl.stratify_by \(None there, 'metadata.hops' now\)"):
        check_same_config(cfg)
    cfg.rl.stratify_by = None
    check_same_config(cfg)
    assert json.loads((tmp_path / "config.json").read_text())["rl"]["stratify_by"] is None


def test_a_run_folder_from_before_rl_training_resumes_with_the_same_settings(tmp_path):
    """A config.json written when the rl section held its budget keys itself (steps,
    prompts_per_step, num_generations, learning_rate, beta) is the same configuration as today's
    ``rl.training`` / ``rl.algorithm``: the folder resumes; a different setting is still refused."""
    import dataclasses

    from zerosearch.quickstart import QuickstartConfig, check_same_config

    cfg = QuickstartConfig(output_dir=str(tmp_path))
    old = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del old["rl"]["stratify_by"]  # rl.stratify_by came later still
    training, algorithm = old["rl"].pop("training"), old["rl"].pop("algorithm")
    old["rl"].update(steps=training["max_steps"], prompts_per_step=training["prompts_per_step"],
                     learning_rate=training["learning_rate"], num_generations=algorithm["num_generations"],
                     beta=algorithm["beta"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"rl.algorithm.resample_rounds \(0 there, 2 now\)"):
        check_same_config(cfg)  # those runs never drew a step's questions again
    cfg.rl.algorithm.resample_rounds = 0
    check_same_config(cfg)
    assert "training" in json.loads((tmp_path / "config.json").read_text())["rl"]
    old["rl"]["beta"] *= 2
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="different rl"):
        check_same_config(cfg)


def test_simulator_stage_with_stub_queries_reports_them_apart(tmp_path):
    """``sim.partial_queries``: stubs of each question join the SFT set, and fidelity measures the
    tuned simulator on the held-out questions (the mode targets, with the noisy guard too when
    ``sim.fidelity_guard`` asks) and on held-out stubs apart."""
    from zerosearch.config import from_dict
    from zerosearch.quickstart import QuickstartConfig, stage_fidelity, stage_simulator, stage_world

    toy = {**TOY, "output_dir": str(tmp_path / "qs"),
           "sim": {**TOY["sim"], "paired": True, "retrieve_depth": 4, "partial_queries": 1,
                   "fidelity_guard": True}}
    cfg = from_dict(QuickstartConfig, toy)
    stage_world(cfg)
    stage_simulator(cfg, lambda *a: None, log=lambda m: None)
    stats = json.loads((tmp_path / "qs" / "sim" / "sft" / "stats.json").read_text())
    assert sum(stats["train"]["partial"].values()) > 0
    stage_fidelity(cfg, lambda *a: None)
    rows = {r["simulator"]: r for r in json.loads((tmp_path / "qs" / "sim" / "fidelity" / "fidelity.json").read_text())}
    assert set(rows) == {"real engine (reference)", "tuned simulator", "tuned simulator + noisy guard",
                         "real engine (reference), stub queries", "tuned simulator, stub queries"}
    val = [json.loads(line) for line in (tmp_path / "qs" / "sim" / "sft" / "val.jsonl").read_text().splitlines()]
    assert rows["tuned simulator, stub queries"]["queries"] == len({(e["row_id"], e["query"]) for e in val
                                                                    if e["partial"]})
    assert rows["tuned simulator"]["queries"] == len({(e["row_id"], e["query"]) for e in val if not e["partial"]})


def test_the_report_says_when_no_rollout_group_gave_grpo_a_signal(tmp_path):
    from zerosearch.report import _signal_line, redraws, signal_groups

    log = tmp_path / "rollouts.jsonl"
    rows = [(1, "a", 0.0), (1, "a", 0.0), (1, "b", 0.0), (1, "b", 0.0),
            (2, "a", 0.0), (2, "a", 0.0), (2, "c", 1.0), (2, "c", 1.0)]  # c: all scored alike
    log.write_text("".join(json.dumps({"step": s, "id": q, "reward": r}) + "\n" for s, q, r in rows))
    assert signal_groups(log) == (0, 4)
    line = " ".join(_signal_line(log, "grpo"))
    assert "in 0 of 4 groups" in line and "RL had no signal" in line
    assert _signal_line(log, "ppo") == []  # a critic's advantages are not relative to the group
    with log.open("a") as f:
        f.write(json.dumps({"step": 3, "id": "d", "reward": 0.0}) + "\n")
        f.write(json.dumps({"step": 3, "id": "d", "reward": 0.5}) + "\n")
    assert signal_groups(log) == (1, 5)
    line = " ".join(_signal_line(log, "grpo"))
    assert "in 1 of 5 groups" in line and "no signal" not in line
    assert _signal_line(tmp_path / "missing.jsonl", "grpo") == []
    # a step that drew fresh questions (algorithm.resample_rounds) counts the draw it trained on
    with log.open("a") as f:
        for draw, rewards in ((0, (0.0, 0.0)), (1, (0.0, 0.0)), (2, (1.0, 0.0))):
            f.writelines(json.dumps({"step": 4, "draw": draw, "id": "e", "reward": r}) + "\n"
                         for r in rewards)
    assert signal_groups(log) == (2, 6) and redraws(log) == {4: 2}
    assert "step 4 2 times" in " ".join(_signal_line(log, "grpo"))
