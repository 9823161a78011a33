"""The learning benchmark at toy size (tiny random model, a tiny mini-world, one RL step): every arm
runs, seeds change the outcome and reproduce it, the results file holds the numbers the runs wrote,
the validation split is never trained on; and the loss-masking switch really puts the inserted
tokens into the loss TRL computes."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from test_train import _bm25, _config, _scripted_loss_inputs
from test_train import qa_file  # noqa: F401 (a fixture)
from zerosearch.config import ConfigError
from zerosearch.curriculum import CurriculumConfig
from zerosearch.learning import ARMS, LearningConfig, run, run_dir, validate
from zerosearch.miniworld import split_validation

ROOT = Path(__file__).resolve().parents[1]
TOY = {
    "policy": "embedded:tiny-random", "simulator_base": "embedded:tiny-random", "topk": 2,
    "world": {"people": 20, "works": 10, "organisations": 5, "cities": 6, "countries": 2, "distractors": 10},
    "sim": {"questions": 16, "tune": {"max_steps": 1, "batch_size": 2}, "max_new_tokens": 16},
    "warmup": {"steps": 1, "batch_size": 2, "max_traces": 4},
    "rl": {"training": {"max_steps": 1, "prompts_per_step": 2, "learning_rate": 1e-3},
           "algorithm": {"num_generations": 2, "beta": 0.001, "resample_rounds": 0}, "temperature": 1.0},
    "rollout": {"max_turns": 1, "max_turn_tokens": 10, "max_completion_tokens": 80, "max_obs_tokens": 40,
                "topk": 2},
    "eval_batch_size": 8,
}
TIME_KEYS = ("time/", "step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second",
             "memory")


def _bench(tmp: Path, **kw) -> LearningConfig:
    config = tmp / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    return LearningConfig(**{"output_dir": str(tmp / "bench"), "config": str(config), "eval_questions": 2,
                             "val_questions": 3, **kw})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Every arm with seed 0 (evaluated on test), then the zerosearch arm with seeds 0 and 1 (on test
    and val)."""
    tmp = tmp_path_factory.mktemp("learning")
    run(_bench(tmp, arms=list(ARMS), seeds=[0], eval_splits=["test"]), lambda *a: None, command="toy all arms")
    lc = _bench(tmp, arms=["zerosearch"], seeds=[0, 1], sim_gap=True)
    results = run(lc, lambda *a: None, command="toy seeds")
    return lc, results


def _folder(lc, arm, seed):
    return run_dir(Path(lc.output_dir), lc.start, "steps1-q2-g2-lr0.001", arm, seed)


def _training_numbers(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "rl" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIME_KEYS)} for r in rows if "reward" in r]


def test_every_arm_trains_and_is_evaluated_on_test_and_val(bench):
    lc, _ = bench
    out = Path(lc.output_dir)
    for arm, spec in ARMS.items():
        folder = _folder(lc, arm, 0)
        assert (folder / "rl" / "final" / "config.json").exists(), arm
        train_cfg = yaml.safe_load((folder / "rl" / "config.yaml").read_text())
        assert train_cfg["algorithm"]["name"] == spec.algorithm
        assert train_cfg["training"]["mask_inserted_tokens"] == spec.mask_inserted_tokens
        assert train_cfg["engine"]["kind"] == spec.engine
        if spec.simulator == "prompt":
            assert train_cfg["engine"]["style"] == "prompt" and train_cfg["engine"]["model"] == TOY["simulator_base"]
        if spec.simulator == "tuned":
            assert train_cfg["engine"]["model"].endswith("sim/simulator/final")
        report = json.loads((folder / "eval-test" / "results.json").read_text())
        assert report["engine"]["engine"] == "bm25" and report["limit"] == 2, arm  # always real BM25
        [row] = _metrics_rows(folder)
        if spec.curriculum == "random":
            expected = CurriculumConfig(0.0, 0.5, random=True, seed=0).at(0, 1)
            assert row["zerosearch/noise_prob"] == pytest.approx(expected)
            assert 0.0 <= expected <= 0.5
    # the validation split: whole subjects of train.jsonl, never trained on
    world = out / "world"
    val = [json.loads(x) for x in (world / "val.jsonl").read_text().splitlines()]
    fit = [json.loads(x) for x in (world / "train_minus_val.jsonl").read_text().splitlines()]
    assert len(val) >= 3 and len(val) + len(fit) == len((world / "train.jsonl").read_text().splitlines())
    assert not {r["metadata"]["subject"] for r in val} & {r["metadata"]["subject"] for r in fit}
    train_cfg = yaml.safe_load((_folder(lc, "zerosearch", 0) / "rl" / "config.yaml").read_text())
    assert train_cfg["data"]["train"].endswith("train_minus_val.jsonl")
    sim_rows = [json.loads(x) for x in (out / "sim" / "collected.jsonl").read_text().splitlines()]
    assert not {r["question"] for r in sim_rows} & {r["question"] for r in val}


def _metrics_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rl" / "metrics.jsonl").read_text().splitlines()
            if '"reward"' in line]


def _by_hops(pred: Path, questions: Path, hops: int):
    meta = {json.loads(x)["id"]: json.loads(x)["metadata"]["hops"] for x in questions.read_text().splitlines()}
    recs = [json.loads(x) for x in pred.read_text().splitlines()]
    recs = [r for r in recs if meta[r["id"]] == hops]
    if not recs:
        return None, None
    return (100 * sum(r["metrics"]["em"] for r in recs) / len(recs),
            sum(r["stats"]["searches"] for r in recs) / len(recs))


def test_results_file_holds_the_numbers_of_the_runs(bench):
    lc, results = bench
    out = Path(lc.output_dir)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["command"] == "toy seeds" and on_disk["test_questions"] == 2
    assert on_disk["start"]["name"] == "untouched" and len(on_disk["start"]["em"]) == 2
    start_report = json.loads((out / "runs" / "untouched" / "eval-test" / "results.json").read_text())
    assert on_disk["start"]["em"] == [100 * start_report["average"]["em"]] * 2
    assert set(on_disk["arms"]) == {"zerosearch"}
    for arm, entry in on_disk["arms"].items():
        assert entry["engine"] == "simulated" and entry["simulator"] == "tuned" and entry["algorithm"] == "grpo"
        assert entry["curriculum"] == ARMS[arm].curriculum and entry["seeds"] == [0, 1]
        for i, seed in enumerate((0, 1)):
            folder = _folder(lc, arm, seed)
            for split, numbers in (("test", entry), ("val", entry["val"])):
                report = json.loads((folder / f"eval-{split}" / "results.json").read_text())
                assert numbers["em"][i] == pytest.approx(100 * report["average"]["em"])
                assert numbers["f1"][i] == pytest.approx(100 * report["average"]["f1"])
                [pred] = (folder / f"eval-{split}" / "predictions").glob("*.jsonl")
                for h in (1, 2, 3):
                    em, searches = _by_hops(pred, out / "world" / f"{split}.jsonl", h)
                    assert numbers[f"em_{h}hop"][i] == (pytest.approx(em) if em is not None else None)
                    assert numbers[f"searches_{h}hop"][i] == (pytest.approx(searches) if searches is not None
                                                              else None)
            curve = _metrics_rows(folder)
            assert [c["reward"] for c in entry["curves"][str(seed)]] == [r["reward"] for r in curve]
            # searches per rollout by hop count, from the run's own rollout log and the world's hops
            hops = {r["id"]: r["metadata"]["hops"] for r in map(json.loads, (out / "world" / "train.jsonl").open())}
            rollouts = [json.loads(x) for x in (folder / "rl" / "rollouts.jsonl").read_text().splitlines()]
            for c in entry["curves"][str(seed)]:
                for h in (1, 2, 3):
                    drawn = [r["searches"] for r in rollouts if r["step"] == c["step"] and hops[r["id"]] == h]
                    assert c.get(f"searches_{h}hop") == (pytest.approx(sum(drawn) / len(drawn)) if drawn else None)
            assert entry["step_s"][i] == pytest.approx(curve[0]["time/step_s"])
        # the sim-to-real gap: the same policy evaluated with its simulator and with BM25
        for i, seed in enumerate((0, 1)):
            folder = _folder(lc, arm, seed)
            sim_report = json.loads((folder / "eval-test-sim" / "results.json").read_text())
            real_report = json.loads((folder / "eval-test" / "results.json").read_text())
            assert sim_report["engine"]["engine"] == "simulated"
            assert entry["sim_gap"]["em_sim"][i] == pytest.approx(100 * sim_report["average"]["em"])
            assert entry["sim_gap"]["em_gap"][i] == pytest.approx(
                100 * (sim_report["average"]["em"] - real_report["average"]["em"]))
            assert 0 <= entry["sim_gap"]["agreement"][i] <= 100
    md = (out / "results.md").read_text()
    zs = on_disk["arms"]["zerosearch"]
    assert f"| {', '.join(f'{v:.1f}' for v in zs['em'])} |" in md
    assert "## Sim-to-real gap" in md
    assert (out / "reward.png").stat().st_size > 0 and (out / "searches.png").stat().st_size > 0
    assert (out / "searches_by_hops.png").stat().st_size > 0 and "searches_by_hops.png" in md


def test_seeds_change_the_outcome_and_the_same_seed_reproduces_it(bench):
    lc, results = bench
    s0, s1 = _folder(lc, "zerosearch", 0), _folder(lc, "zerosearch", 1)
    assert _training_numbers(s0) != _training_numbers(s1)
    # (the tiny random model scores 0 on every rollout, so GRPO's advantages and the update are 0
    # and the final weights equal the start's for every seed; the rollouts are what differ)
    weights = (s0 / "rl" / "final" / "model.safetensors").read_bytes()
    # the same seed again, from scratch: the same training numbers, weights and evaluation
    kept = s0.with_name("seed-0.first")
    shutil.move(s0, kept)
    again = run(_bench(Path(lc.output_dir).parent, arms=["zerosearch"], seeds=[0]), lambda *a: None)
    assert _training_numbers(s0) == _training_numbers(kept)
    assert (s0 / "rl" / "final" / "model.safetensors").read_bytes() == weights
    for split in ("test", "val"):
        [pred] = (s0 / f"eval-{split}" / "predictions").glob("*.jsonl")
        assert pred.read_text() == (kept / f"eval-{split}" / "predictions" / pred.name).read_text()
    assert again["arms"]["zerosearch"]["em"] == results["arms"]["zerosearch"]["em"][:1]


def test_copy_to_and_bad_flags(bench, tmp_path):
    lc, _ = bench
    copy = tmp_path / "docs" / "results" / "miniworld_learning.json"
    run(_bench(Path(lc.output_dir).parent, arms=["zerosearch"], seeds=[1], eval_splits=["val"],
               copy_to=str(copy)), lambda *a: None, command="val only")
    copied = json.loads(copy.read_text())
    assert copied["command"] == "val only" and copied["test_questions"] == 0 and "em" not in copied["arms"]["zerosearch"]
    assert copied["arms"]["zerosearch"]["val"]["em"] == \
        [100 * json.loads((_folder(lc, "zerosearch", 1) / "eval-val" / "results.json").read_text())["average"]["em"]]
    for bad, message in ((dict(arms=["zerosearch", "nope"]), "unknown arm"), (dict(seeds=[0, 0]), "distinct"),
                         (dict(eval_splits=["dev"]), "unknown eval split"),
                         (dict(val_questions=0), "needs --val-questions"), (dict(start="sft"), "unknown start"),
                         (dict(temperature=0.0), "--temperature must be > 0")):
        with pytest.raises(ConfigError, match=message):
            validate(LearningConfig(**bad))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "miniworld_learning.py"), "--quick", "--arms",
                        "bm25", "-o", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--quick sets the arms and seeds" in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_warmup_start_is_made_once_from_the_training_questions(bench):
    from zerosearch.learning import STARTS, quickstart_config

    lc, _ = bench
    cfg = quickstart_config(lc)
    out = Path(lc.output_dir)
    model = STARTS["warmup"][0](cfg, "1", out, lambda *a: None)
    assert Path(model) == out / "warmup-1" and (out / "warmup-1" / "config.json").exists()
    stamp = (out / "warmup-1" / "config.json").stat().st_mtime
    assert STARTS["warmup"][0](cfg, "1", out, lambda *a: None) == model
    assert (out / "warmup-1" / "config.json").stat().st_mtime == stamp
    with pytest.raises(ConfigError, match="at least 1 step"):
        STARTS["warmup"][0](cfg, "0", out, lambda *a: None)


def test_runs_collected_apart_merge_into_one_results_file(bench, tmp_path):
    """The bm25 arm collected on its own and the zerosearch seeds merge into one file (arms side by
    side, each with its own seeds, the sources named); another start, other settings or an arm in two
    files are refused, by the function and by the script."""
    import copy

    from zerosearch.learning import merge_results

    lc, seeds_results = bench
    bm25 = run(_bench(Path(lc.output_dir).parent, arms=["bm25"], seeds=[0]), lambda *a: None, command="bm25 alone")
    merged = merge_results([seeds_results, bm25], command="merge")
    assert merged["command"] == "merge" and set(merged["arms"]) == {"zerosearch", "bm25"}
    assert merged["arms"]["zerosearch"] == seeds_results["arms"]["zerosearch"]
    assert merged["arms"]["bm25"]["seeds"] == [0] and merged["arms"]["bm25"]["em"] == bm25["arms"]["bm25"]["em"]
    assert merged["settings"]["seeds"] == [0, 1] and merged["start"]["em"] == seeds_results["start"]["em"]
    assert merged["start"]["val"]["em"] == seeds_results["start"]["val"]["em"]
    assert [s["command"] for s in merged["sources"]] == ["toy seeds", "bm25 alone"]
    older = copy.deepcopy(bm25)  # written before settings named resample_rounds: it was 0 then
    del older["settings"]["resample_rounds"]
    assert set(merge_results([seeds_results, older], command="m")["arms"]) == {"zerosearch", "bm25"}
    older["settings"]["resample_rounds"] = 2
    with pytest.raises(ValueError, match="other settings than file 1: resample_rounds"):
        merge_results([seeds_results, older], command="x")
    other = copy.deepcopy(bm25)
    other["settings"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="other settings than file 1: learning_rate"):
        merge_results([seeds_results, other], command="x")
    other = copy.deepcopy(bm25)
    other["start"]["em"] = [v + 1 for v in other["start"]["em"]]
    with pytest.raises(ValueError, match="another start"):
        merge_results([seeds_results, other], command="x")
    with pytest.raises(ValueError, match="'zerosearch' is in more than one"):
        merge_results([seeds_results, seeds_results], command="x")
    files = []
    for name, res in (("a.json", seeds_results), ("b.json", bm25)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(res))
    script = ROOT / "benchmarks" / "merge_learning_results.py"
    r = subprocess.run([sys.executable, str(script), *map(str, files), "-o", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    on_disk = json.loads((tmp_path / "m" / "results.json").read_text())
    assert set(on_disk["arms"]) == {"zerosearch", "bm25"}
    md = (tmp_path / "m" / "results.md").read_text()
    assert "Merged from runs collected apart: zerosearch by `toy seeds`" in md and "| bm25 |" in md
    r = subprocess.run([sys.executable, str(script), str(files[0]), str(files[0]), "-o", str(tmp_path / "n")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot merge" in r.stdout + r.stderr


def test_split_validation_holds_out_whole_subjects():
    rows = [{"id": f"q{i}", "metadata": {"subject": f"s{i // 3}"}} for i in range(30)]
    rest, val = split_validation(rows, 7)
    assert len(val) == 9 and len(rest) == 21  # three subjects of three questions
    assert not {r["metadata"]["subject"] for r in rest} & {r["metadata"]["subject"] for r in val}
    assert split_validation(rows, 7) == (rest, val)
    with pytest.raises(ValueError, match="validation split"):
        split_validation(rows, 30)


def test_random_noise_is_uniform_in_the_range_and_seeded():
    draws = [CurriculumConfig(0.1, 0.6, random=True, seed=s).at(i, 20) for s in (0, 1) for i in range(20)]
    assert all(0.1 <= p <= 0.6 for p in draws) and len(set(draws)) == 40
    assert CurriculumConfig(0.1, 0.6, random=True, seed=3).at(5, 20) == CurriculumConfig(
        0.1, 0.6, random=True, seed=3).at(5, 20)
    assert CurriculumConfig(0.1, 0.6, random=True, enabled=False).at(5, 20) == 0.1


@pytest.mark.parametrize("masked", [True, False])
def test_no_mask_puts_the_inserted_tokens_into_the_loss(tmp_path, qa_file, tiny_corpus, masked):  # noqa: F811
    cfg = _config(tmp_path, qa_file, _bm25(tiny_corpus), "grpo", steps=1, mask_inserted_tokens=masked)
    tok, seen = _scripted_loss_inputs(cfg)
    assert seen
    for batch in seen:
        for ids, cmask, tmask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
            n = int(cmask.sum())
            trained = tok.decode([int(i) for i, m in zip(ids[:n], tmask[:n]) if m])
            assert trained.startswith("<search>capital of Germany</search>")
            if masked:
                assert "<information>" not in trained and int(tmask[:n].sum()) < n
            else:  # every completion token is in the loss, the engine's documents included
                assert int(tmask[:n].sum()) == n
                assert "<information>Doc 1: Berlin is the capital" in trained


def test_start_only_evaluates_the_start_and_trains_nothing(tmp_path):
    lc = _bench(tmp_path, start="warmup:1", start_only=True, eval_splits=["val"])
    res = run(lc, lambda *a: None, command="toy start only")
    out = Path(lc.output_dir)
    assert res["arms"] == {} and not (out / "sim").exists() and not list(out.glob("runs/*/steps*"))
    assert (out / "runs" / "warmup-1" / "eval-val" / "results.json").exists()
    val = (out / "world" / "val.jsonl").read_text().splitlines()
    assert res["start"]["val"]["n"][0] == len(val) and 0 <= res["start"]["val"]["em"][0] <= 100
    assert "| start |" in (out / "results.md").read_text() and not (out / "reward.png").exists()


def test_temperature_reaches_the_rollouts_and_names_the_run_folder():
    from zerosearch.learning import quickstart_config, rl_settings, settings_tag
    from zerosearch.quickstart import rl_train_config, simulator_config

    base = rl_settings(quickstart_config(LearningConfig()), LearningConfig(temperature=1.0))
    assert settings_tag(rl_settings(base, LearningConfig())) == settings_tag(base)
    assert "-t" not in settings_tag(base)  # folders of runs at temperature 1 keep their names
    cooled = rl_settings(base, LearningConfig(temperature=0.7))
    assert "-t0.7" in settings_tag(cooled) and cooled.rl.temperature == 0.7
    train_cfg = rl_train_config(cooled, "m", simulator_config(cooled), cooled.rl.curriculum, Path("x"))
    assert train_cfg.rollout.temperature == 0.7


def test_beta_reaches_the_trainer_and_names_the_run_folder():
    from zerosearch.learning import quickstart_config, rl_settings, settings_tag
    from zerosearch.quickstart import rl_train_config, simulator_config

    base = rl_settings(quickstart_config(LearningConfig()), LearningConfig(beta=0.001))
    assert "-b" not in settings_tag(base)  # folders of runs at KL 0.001 keep their names
    tight = rl_settings(base, LearningConfig(beta=0.04, temperature=0.7))
    # the quickstart's redraws of steps without a signal are named too (runs before them are not)
    assert settings_tag(tight).endswith("-t0.7-b0.04-rs2") and tight.rl.algorithm.beta == 0.04
    assert "-rs" not in settings_tag(replace(tight, rl=replace(
        tight.rl, algorithm=replace(tight.rl.algorithm, resample_rounds=0))))
    train_cfg = rl_train_config(tight, "m", simulator_config(tight), tight.rl.curriculum, Path("x"))
    assert train_cfg.algorithm.beta == 0.04
    with pytest.raises(ConfigError, match="--beta must be >= 0"):
        validate(LearningConfig(beta=-0.1))


def test_the_benchmark_defaults_are_the_recipe():
    """`benchmarks/miniworld_learning.py` with no flags runs the recipe the README reports: the
    repository's YAML (its rl section: 20 steps of 2 questions x 8 rollouts, lr 2e-5, rollouts at
    temperature 0.7, KL 0.04) from the 10-step format warm-up."""
    from zerosearch.learning import RECIPE_START, quickstart_config, rl_settings, settings_tag

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import miniworld_learning as script
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert Path(script.D.config) == ROOT / "configs" / "quickstart" / "miniworld-learning.yaml"
    assert script.D.start == RECIPE_START == "warmup:10"
    cfg = rl_settings(quickstart_config(script.D), script.D)
    assert settings_tag(cfg) == "steps20-q2-g8-lr2e-05-t0.7-b0.04"
    assert cfg.rl.algorithm.name == "grpo" and cfg.rl.algorithm.reward == "f1"


def test_query_habits_count_stub_queries_and_empty_results(tmp_path):
    from zerosearch.learning import query_habits
    from zerosearch.protocol import NO_DOCUMENTS
    from zerosearch.sim.collect import question_names

    assert question_names("In what year was the creator of The Winter Compass born?") == ["The", "Winter", "Compass"]
    q = "Where was Quian Liarkkrash born?"
    rows = [
        {"id": "a", "question": q, "response": f"<search> {q} </search>\n\n<information>Doc 1: x</information>\n\n"
                                             "<search> Where was born </search>\n\n"
                                             f"<information>{NO_DOCUMENTS}</information>\n\n<answer> x </answer>"},
        {"id": "b", "question": q, "response": "<search> liarkkrash birthplace </search>\n\n<information>Doc 1: y"
                                             "</information>\n\n<answer> y </answer>"},
        {"id": "c", "question": q, "response": "<answer> z </answer>"},
    ]
    pred = tmp_path / "test.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    habits = query_habits(pred)
    assert habits["queries_with_name"] == pytest.approx(100 * 2 / 3)  # the lower-case name counts too
    assert habits["empty_results"] == pytest.approx(100 / 3)
    assert habits["repeated_queries"] == 0.0  # one follow-up query, a new one
    pred.write_text(json.dumps(rows[2]) + "\n")
    assert query_habits(pred) == {"queries_with_name": None, "empty_results": None, "repeated_queries": None}


def _searches(*queries: str) -> str:
    return "".join(f"<search> {q} </search>\n\n<information>Doc 1: x</information>\n\n" for q in queries) \
        + "<answer> x </answer>"


def test_repeated_follow_up_queries_by_hop_count(tmp_path):
    """A second search that repeats the first (case and spacing aside) counts as repeated; the
    script splits the habits by the questions' hop counts."""
    questions = tmp_path / "test.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": f"Where was Quian Liarkkrash born {i}?",
                                             "golden_answers": ["x"], "metadata": {"hops": h}}) + "\n"
                                 for i, h in (("a", 1), ("b", 2), ("c", 2))))
    rows = [("a", _searches("Quian Liarkkrash")),
            ("b", _searches("Quian Liarkkrash", "quian  LIARKKRASH", "founder of Mirrow")),
            ("c", _searches("Quian Liarkkrash", "Quian Liarkkrash"))]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "question": "Where was Quian Liarkkrash born?", "response": r,
                                        "stats": {"searches": r.count("<search>")}}) + "\n" for i, r in rows))
    out = tmp_path / "habits.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "query_habits.py"), str(pred),
                        "--questions", str(questions), "--json", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = json.loads(out.read_text())["results"][str(pred)]
    assert table["1-hop"]["repeated_queries"] is None and table["1-hop"]["searches"] == 1
    assert table["2-hop"]["repeated_queries"] == pytest.approx(100 * 2 / 3)  # 2 of 3 follow-ups repeat
    assert table["2-hop"]["searches"] == 2.5 and table["all"]["n"] == 3
    questions.write_text(questions.read_text().replace('"id": "c"', '"id": "d"'))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "query_habits.py"), str(pred),
                        "--questions", str(questions)], capture_output=True, text=True)
    assert r.returncode != 0 and "1 predictions name no question" in r.stderr + r.stdout
