"""The mini-world learning benchmark (``benchmarks/miniworld_learning.py``): does RL teach the policy
to search, and do the paper's ablations reproduce at small scale?

Every run trains one starting policy (:data:`STARTS`) with one arm (:data:`ARMS`: engine, simulator,
noise schedule, algorithm, loss masking) and one seed, on the same budget, then evaluates it with
the *real* BM25 engine, greedy, on the test questions and on a validation split of the training
questions that no stage trains on (hyper-parameters are chosen there, never on test).

The shared stages (mini-world, validation split, tuned simulator, warm-ups) are the quickstart's
(:mod:`zerosearch.quickstart`), made once per output folder; every run resumes (RL from its last
checkpoint, evaluation from its predictions), and the results are always recomputed from the files
the runs wrote, so a rerun after a kill or with more seeds reports everything done so far.

Layout under the output folder::

    config.json, world/, sim/, warmup-<N>/          shared stages
    runs/<start>/eval-<split>/                      the starting point, evaluated once
    runs/<start>/<settings>/<arm>/seed-<s>/rl/      metrics.jsonl, checkpoints, final/
    runs/<start>/<settings>/<arm>/seed-<s>/eval-<split>/
    results.md, results.json, reward.png, searches.png, searches_by_hops.png

``<settings>`` names the RL budget (steps, questions per step, group size, learning rate), so
several budgets share one folder's shared stages.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from zerosearch.config import ConfigError
from zerosearch.curriculum import CurriculumConfig
from zerosearch.engines.factory import EngineConfig
from zerosearch.jsonl import read_finished
from zerosearch.protocol import NO_DOCUMENTS, search_queries
from zerosearch.quickstart import (Progress, QuickstartConfig, bm25_config, check_same_config,
                                   rl_train_config, simulator_config, stage_eval, stage_rl,
                                   stage_simulator, stage_warmup, stage_world)
from zerosearch.report import plot_curves, reward_by_group, rl_curve, stats_by_hops, train_hops
from zerosearch.sim.collect import question_names


# -- arms ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One way of training the starting policy."""

    engine: str
    """simulated or bm25 (the engine during training; evaluation is always real BM25)."""
    simulator: str | None
    """A key of :data:`SIMULATORS` (simulated engines), None for bm25."""
    curriculum: str
    """A key of :data:`NOISE` (how noisy the simulated documents are, step by step); ``none`` for bm25."""
    algorithm: str = "grpo"
    """grpo, reinforce++ or ppo."""
    mask_inserted_tokens: bool = True
    """Leave the engine's documents out of the loss (``training.mask_inserted_tokens``)."""
    about: str = ""
    """One line for the results table."""


ARMS: dict[str, Arm] = {
    "zerosearch": Arm("simulated", "tuned", "curriculum", about="tuned simulator, noise curriculum, GRPO"),
    "bm25": Arm("bm25", None, "none", about="real BM25 engine (Search-R1 style), GRPO"),
    "sim-fixed-noise": Arm("simulated", "tuned", "fixed",
                           about="tuned simulator, fixed noise p = the curriculum's mean over the run"),
    "sim-random-noise": Arm("simulated", "tuned", "random",
                            about="tuned simulator, each step's p drawn uniformly from [p_start, p_end]"),
    "prompt-sim": Arm("simulated", "prompt", "curriculum",
                      about="untuned prompt-based simulator (the base model), noise curriculum"),
    "reinforce++": Arm("simulated", "tuned", "curriculum", algorithm="reinforce++",
                       about="the zerosearch arm with REINFORCE++"),
    "ppo": Arm("simulated", "tuned", "curriculum", algorithm="ppo", about="the zerosearch arm with PPO"),
    "no-mask": Arm("simulated", "tuned", "curriculum", mask_inserted_tokens=False,
                   about="the zerosearch arm with the inserted documents in the loss"),
}
"""Every arm of the benchmark, by name (``--arms``)."""

QUICK_ARMS = ("zerosearch", "bm25")
"""The main arms (``--quick``)."""


def mean_noise(curriculum: CurriculumConfig, steps: int) -> float:
    """The curriculum's noise probability averaged over the steps of a run."""
    return sum(curriculum.at(i, steps) for i in range(steps)) / steps


def prompt_simulator_config(cfg: QuickstartConfig) -> EngineConfig:
    """The untuned simulator: the simulator's base model with the prompt-based (one-shot) prompt."""
    return EngineConfig(kind="simulated", model=cfg.simulator_base, style="prompt", topk=cfg.topk,
                        temperature=cfg.sim.temperature, max_new_tokens=cfg.sim.max_new_tokens)


SIMULATORS: dict[str, Callable[[QuickstartConfig], EngineConfig]] = {
    "tuned": simulator_config, "prompt": prompt_simulator_config}
"""Simulated engines, by name: the quickstart's tuned simulator or the untuned prompt-based one."""

NOISE: dict[str, Callable[[CurriculumConfig, int, int], CurriculumConfig]] = {
    "curriculum": lambda c, steps, seed: c,
    "fixed": lambda c, steps, seed: CurriculumConfig(p_start=mean_noise(c, steps), p_end=mean_noise(c, steps),
                                                     base=c.base, enabled=False),
    "random": lambda c, steps, seed: replace(c, random=True, seed=seed),
    "none": lambda c, steps, seed: c,
}
"""Noise schedules, by name: (the quickstart's curriculum, steps, seed) -> the run's schedule."""


def arm_engine(arm: Arm, cfg: QuickstartConfig, seed: int) -> EngineConfig:
    """The training engine of ``arm``; a simulator samples with the run's seed."""
    if arm.engine == "bm25":
        return bm25_config(cfg)
    return replace(SIMULATORS[arm.simulator](cfg), seed=seed)


# -- starting points -------------------------------------------------------------------------------
def _untouched(cfg: QuickstartConfig, arg: str | None, out: Path, progress: Progress) -> str:
    if arg:
        raise ConfigError("start 'untouched' takes no argument")
    return cfg.policy


def _warmup(cfg: QuickstartConfig, arg: str | None, out: Path, progress: Progress) -> str:
    steps = cfg.warmup.steps if arg is None else int(arg)
    if steps < 1:
        raise ConfigError(f"start 'warmup:{arg}' needs at least 1 step (use 'untouched' for none)")
    return stage_warmup(replace(cfg, warmup=replace(cfg.warmup, steps=steps)), progress,
                        log=lambda m: None, out_dir=out / f"warmup-{steps}")


STARTS: dict[str, tuple[Callable[[QuickstartConfig, str | None, Path, Progress], str], str]] = {
    "untouched": (_untouched, "the policy as it is (the instruct model with the search prompt), no "
                              "supervised step"),
    "warmup": (_warmup, "a format warm-up of N supervised steps (`warmup:N`; default the config's "
                        "warmup.steps) on well-formed traces: question as query, real BM25 documents, "
                        "gold answer"),
}
"""Starting points, by name (``--start NAME`` or ``NAME:ARG``): (make(cfg, arg, output folder,
progress) -> model, description)."""


def parse_start(start: str) -> tuple[str, str | None]:
    name, _, arg = start.partition(":")
    if name not in STARTS:
        raise ConfigError(f"unknown start {start!r}; choose from {', '.join(STARTS)}")
    return name, arg or None


# -- the benchmark ---------------------------------------------------------------------------------
SPLITS = ("test", "val")

RECIPE_START = "warmup:10"
"""The recipe's starting point (the benchmark script's default ``--start``): a format warm-up short
enough that the policy still rarely answers (a few EM points on held-out questions), so what the
policy gains comes from RL, not from the supervised step."""


@dataclass
class LearningConfig:
    """What ``benchmarks/miniworld_learning.py`` runs."""

    output_dir: str = "runs/miniworld_learning"
    """Where everything is written (rerun = resume; more arms or seeds = more runs beside the old)."""
    config: str | None = None
    """YAML QuickstartConfig for the shared stages and the recipe (policy, simulator tuning, world,
    rollout budgets, rl section); None: the quickstart's defaults."""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """Arms to train (keys of :data:`ARMS`)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds: data order, policy and simulator sampling, noise draws."""
    start: str = "untouched"
    """Starting point: a key of :data:`STARTS`, optionally ``:ARG`` (``warmup:24``)."""
    steps: int | None = None
    """RL steps per run (None: the config's rl.training.max_steps)."""
    prompts_per_step: int | None = None
    """Questions per step (None: the config's rl.training.prompts_per_step)."""
    num_generations: int | None = None
    """Rollouts per question (None: the config's rl.algorithm.num_generations)."""
    learning_rate: float | None = None
    """Policy learning rate (None: the config's rl.training.learning_rate)."""
    temperature: float | None = None
    """Policy sampling temperature of the training rollouts (None: the config's rl.temperature);
    evaluation stays greedy."""
    beta: float | None = None
    """KL coefficient to the starting policy (None: the config's rl.algorithm.beta). In a step whose every
    rollout scores 0 the KL term is the only gradient, so it is what pulls a policy that has lost
    the action format back towards the start."""
    eval_questions: int = 0
    """Test questions evaluated per run (0: all)."""
    val_questions: int = 100
    """Training questions held out as the validation split (whole subjects; no stage trains on them)."""
    eval_splits: list[str] = field(default_factory=lambda: list(SPLITS))
    """Splits every run is evaluated on: test and/or val."""
    sim_gap: bool = False
    """Also evaluate each simulated-engine arm on the test split with the simulator it trained
    against (useful mode, as evaluation always is) and report the sim-to-real gap per seed
    (``zerosearch.eval_gap``: EM with the simulator minus EM with BM25, and how often the two runs
    give the same answer); one more evaluation per run."""
    copy_to: str | None = None
    """Also copy results.json there (e.g. docs/results/miniworld_learning.json)."""
    start_only: bool = False
    """Make and evaluate the starting point only (no simulator, no RL): for choosing a start on the
    validation split before paying for RL runs."""


def quickstart_config(lc: LearningConfig) -> QuickstartConfig:
    """The shared stages' config: the YAML (or defaults) with the validation split."""
    from zerosearch.config import from_dict, load_yaml

    cfg = from_dict(QuickstartConfig, load_yaml(lc.config) if lc.config else {})
    cfg.output_dir = lc.output_dir
    cfg.val_questions = lc.val_questions
    return cfg


def rl_settings(cfg: QuickstartConfig, lc: LearningConfig) -> QuickstartConfig:
    """``cfg`` with the benchmark's RL budget in its rl section."""
    def given(**fields):
        return {k: v for k, v in fields.items() if v is not None}

    rl = cfg.rl
    return replace(cfg, rl=replace(
        rl, **given(temperature=lc.temperature),
        training=replace(rl.training, **given(max_steps=lc.steps, prompts_per_step=lc.prompts_per_step,
                                              learning_rate=lc.learning_rate)),
        algorithm=replace(rl.algorithm, **given(num_generations=lc.num_generations, beta=lc.beta))))


UNNAMED_TEMPERATURE = 1.0
UNNAMED_BETA = 0.001
"""The rollout temperature and KL coefficient a run folder's name leaves out: the quickstart's
defaults before it took the learning recipe's, so the folders of the runs made then keep their names."""


def settings_tag(cfg: QuickstartConfig) -> str:
    """The run folder's name for an RL budget; the temperature and the KL coefficient are named
    only when they differ from :data:`UNNAMED_TEMPERATURE` and :data:`UNNAMED_BETA`, the redraws
    of steps without a signal (``rl.algorithm.resample_rounds``) only when on."""
    t, a = cfg.rl.training, cfg.rl.algorithm
    tag = f"steps{t.max_steps}-q{t.prompts_per_step}-g{a.num_generations}-lr{t.learning_rate:g}"
    if cfg.rl.temperature != UNNAMED_TEMPERATURE:
        tag += f"-t{cfg.rl.temperature:g}"
    if a.beta != UNNAMED_BETA:
        tag += f"-b{a.beta:g}"
    if a.resample_rounds:
        tag += f"-rs{a.resample_rounds}"
    return tag


def validate(lc: LearningConfig) -> None:
    """Every flag checked before any work, each error naming the value."""
    unknown = [a for a in lc.arms if a not in ARMS]
    if unknown or not lc.arms:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ARMS)}")
    if not lc.seeds or len(set(lc.seeds)) != len(lc.seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {lc.seeds}")
    bad = [s for s in lc.eval_splits if s not in SPLITS]
    if bad or not lc.eval_splits:
        raise ConfigError(f"unknown eval split(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(SPLITS)}")
    if "val" in lc.eval_splits and lc.val_questions <= 0:
        raise ConfigError("--eval-split val needs --val-questions > 0")
    if lc.beta is not None and lc.beta < 0:
        raise ConfigError(f"--beta must be >= 0 (a KL coefficient), got {lc.beta}")
    if lc.temperature is not None and lc.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0 (rollouts sample), got {lc.temperature}")
    if lc.eval_questions < 0:
        raise ConfigError("--eval-questions must be >= 0 (0: all)")
    if lc.sim_gap and "test" not in lc.eval_splits:
        raise ConfigError("--sim-gap compares test-split evaluations: keep test in --eval-split")
    parse_start(lc.start)


def _count(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip())


def split_limits(cfg: QuickstartConfig, lc: LearningConfig) -> dict[str, int]:
    """Questions evaluated per split: ``eval_questions`` of test (0 = all), every val question."""
    world = Path(cfg.output_dir) / "world"
    limits = {}
    for split in lc.eval_splits:
        n = _count(world / f"{split}.jsonl")
        limits[split] = min(lc.eval_questions, n) if split == "test" and lc.eval_questions else n
    return limits


def run_dir(out: Path, start: str, tag: str, arm: str, seed: int) -> Path:
    return out / "runs" / start.replace(":", "-") / tag / arm / f"seed-{seed}"


def _relabel(progress: Progress, who: str) -> Progress:
    """Progress whose ``eval: eval-<split>`` bars are named after the run, one bar per run and split."""
    return lambda name, done, total, info="": progress(name.replace("eval: eval-", f"{who} "), done, total, info)


def run(lc: LearningConfig, progress: Progress, command: str = "", log=lambda m: None) -> dict[str, Any]:
    """Every shared stage, every (arm, seed) run and evaluation; writes and returns the results."""
    validate(lc)
    if lc.start_only:
        lc = replace(lc, arms=[])
    cfg = quickstart_config(lc)
    out = Path(lc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_same_config(cfg)
    stage_world(cfg)
    limits = split_limits(cfg, lc)
    arms = {name: ARMS[name] for name in lc.arms}
    if any(a.simulator == "tuned" for a in arms.values()):
        stage_simulator(cfg, progress, log=log)
    name, arg = parse_start(lc.start)
    start_model = STARTS[name][0](cfg, arg, out, progress)
    start_root = out / "runs" / lc.start.replace(":", "-")
    for split, limit in limits.items():
        stage_eval(cfg, f"eval-{split}", start_model, "search", _relabel(progress, f"eval {lc.start}"),
                   out_root=start_root, log=log, split=split, limit=limit)
    rl_cfg = rl_settings(cfg, lc)
    tag = settings_tag(rl_cfg)
    for arm_name, arm in arms.items():
        for seed in lc.seeds:
            folder = run_dir(out, lc.start, tag, arm_name, seed)
            curriculum = NOISE[arm.curriculum](rl_cfg.rl.curriculum, rl_cfg.rl.training.max_steps, seed)
            train_cfg = rl_train_config(rl_cfg, start_model, arm_engine(arm, rl_cfg, seed), curriculum,
                                        folder / "rl", algorithm=arm.algorithm,
                                        mask_inserted_tokens=arm.mask_inserted_tokens, seed=seed)
            final = stage_rl(train_cfg, progress, name=f"RL {arm_name} s{seed}", log=log)
            gc.collect()
            labelled = _relabel(progress, f"eval {arm_name} s{seed}")
            for split, limit in limits.items():
                stage_eval(cfg, f"eval-{split}", final, "search", labelled, out_root=folder, log=log,
                           split=split, limit=limit)
            if lc.sim_gap and arm.engine == "simulated":
                stage_eval(cfg, "eval-test-sim", final, "search", labelled, out_root=folder, log=log,
                           split="test", limit=limits["test"], engine=arm_engine(arm, rl_cfg, seed))
            gc.collect()
    results = collect(lc, cfg, rl_cfg, start_model, limits, command)
    write_results(results, out, lc)
    return results


# -- results ---------------------------------------------------------------------------------------
def eval_numbers(eval_dir: Path, questions: Path) -> dict[str, Any]:
    """EM, F1 (x100), searches per question, no-answer rate, and EM / searches by hop count, of one
    finished evaluation folder."""
    report = json.loads((eval_dir / "results.json").read_text())
    a = report["average"]
    [pred] = sorted((eval_dir / "predictions").glob("*.jsonl"))
    row: dict[str, Any] = {"n": sum(v["n"] for v in report["datasets"].values()), "em": 100 * a["em"],
                           "f1": 100 * a["f1"], "searches": a["searches"],
                           "no_answer": 100 * a["extraction_failure"]}
    row.update(query_habits(pred))
    hops = stats_by_hops(pred, questions)
    for h in (1, 2, 3):
        row[f"em_{h}hop"] = hops[h]["em"] if h in hops else None
        row[f"searches_{h}hop"] = hops[h]["searches"] if h in hops else None
        row[f"n_{h}hop"] = hops[h]["n"] if h in hops else 0
    return row


def query_habits(predictions: Path) -> dict[str, float | None]:
    """How an evaluated policy searches, over every query in its responses (:func:`habits_of`)."""
    return habits_of(read_finished(predictions))


def habits_of(rows) -> dict[str, float | None]:
    """How a policy searched in prediction ``rows`` (x100; None without queries):
    ``queries_with_name``, the share of queries that keep at least one name of the question;
    ``empty_results``, the share the engine answered with no document; ``repeated_queries``, the
    share of follow-up queries (a response's second search on) that repeat one of its earlier
    queries, case and spacing aside (None without follow-ups). A policy that learned stub queries
    ("In what year") against a simulator that answers anything shows the first two against BM25:
    few names, many empty results. A second search that repeats the first cannot find the second
    hop's entity: the third says how much of the searching is that."""
    queries = named = empty = follow_ups = repeats = 0
    for row in rows:
        names = [n.lower() for n in question_names(row["question"])]
        response = row.get("response") or ""
        seen: set[str] = set()
        for query in search_queries(response):
            queries += 1
            named += any(n and n in query.lower() for n in names)
            folded = " ".join(query.lower().split())
            if seen:
                follow_ups += 1
                repeats += folded in seen
            seen.add(folded)
        empty += response.count(NO_DOCUMENTS)
    return {"queries_with_name": 100 * named / queries if queries else None,
            "empty_results": 100 * empty / queries if queries else None,
            "repeated_queries": 100 * repeats / follow_ups if follow_ups else None}


def _per_seed(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def with_hops(curve: list[dict[str, float]], by_hops: dict[int, dict[str, dict[str, float]]]) -> list[dict[str, float]]:
    """``curve`` with ``reward_<h>hop`` and ``searches_<h>hop`` per step (per rollout, from the
    run's ``rollouts.jsonl``; absent for runs that did not log rollouts)."""
    return [{**c, **{f"{key}_{h}hop": v[key] for h, v in by_hops.get(c["step"], {}).items()
                     for key in ("reward", "searches")}} for c in curve]


def mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Step-wise mean over seeds of every value (each over the seeds that logged it at that step)."""
    steps = sorted({c["step"] for curve in curves for c in curve})
    out = []
    for s in steps:
        at = [c for curve in curves for c in curve if c["step"] == s]
        keys = dict.fromkeys(k for c in at for k in c if k != "step")
        out.append({"step": s, "seeds": len(at),
                    **{k: sum(c[k] for c in at if k in c) / sum(k in c for c in at) for k in keys}})
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node() or 'unknown host'}: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def collect(lc: LearningConfig, cfg: QuickstartConfig, rl_cfg: QuickstartConfig, start_model: str,
            limits: dict[str, int], command: str) -> dict[str, Any]:
    """The results dict, read back from the files every run wrote (nothing is kept in memory)."""
    out = Path(lc.output_dir)
    world = out / "world"
    tag = settings_tag(rl_cfg)
    start_root = out / "runs" / lc.start.replace(":", "-")

    def by_split(folder: Path) -> dict[str, dict[str, Any]]:
        return {s: eval_numbers(folder / f"eval-{s}", world / f"{s}.jsonl") for s in limits}

    start_rows = by_split(start_root)
    hops = train_hops(world)
    name, _ = parse_start(lc.start)
    start: dict[str, Any] = {"name": lc.start, "model": start_model, "about": STARTS[name][1],
                             "shared": True, "note": "one starting point for every seed, evaluated once "
                                                     "(greedy); its numbers are repeated per seed"}
    for split, row in start_rows.items():
        target = start if split == "test" else start.setdefault("val", {})
        target.update({k: [v] * len(lc.seeds) for k, v in row.items()})
    arms: dict[str, Any] = {}
    for arm_name in lc.arms:
        arm = ARMS[arm_name]
        entry: dict[str, Any] = {"engine": arm.engine, "simulator": arm.simulator,
                                 "curriculum": arm.curriculum, "algorithm": arm.algorithm,
                                 "mask_inserted_tokens": arm.mask_inserted_tokens, "about": arm.about,
                                 "seeds": list(lc.seeds)}
        if arm.curriculum == "fixed":
            entry["fixed_noise"] = mean_noise(rl_cfg.rl.curriculum, rl_cfg.rl.training.max_steps)
        evals = {s: [] for s in limits}
        curves, step_s, rl_s = [], [], []
        for seed in lc.seeds:
            folder = run_dir(out, lc.start, tag, arm_name, seed)
            for split, row in by_split(folder).items():
                evals[split].append(row)
            metrics = folder / "rl" / "metrics.jsonl"
            curves.append(with_hops(rl_curve(metrics), reward_by_group(folder / "rl" / "rollouts.jsonl", hops)))
            secs = [r["time/step_s"] for r in read_finished(metrics) if "time/step_s" in r]
            step_s.append(sum(secs) / len(secs) if secs else None)
            rl_s.append(sum(secs) if secs else None)
        for split, rows in evals.items():
            target = entry if split == "test" else entry.setdefault("val", {})
            target.update(_per_seed(rows))
        if lc.sim_gap and arm.engine == "simulated":
            from zerosearch.eval_gap import sim_real_gap

            gaps = [sim_real_gap(run_dir(out, lc.start, tag, arm_name, seed) / "eval-test-sim",
                                 run_dir(out, lc.start, tag, arm_name, seed) / "eval-test")["all"]
                    for seed in lc.seeds]
            entry["sim_gap"] = {"em_sim": [100 * g["em_sim"] for g in gaps],
                                "em_gap": [100 * g["em_gap"] for g in gaps],
                                "agreement": [100 * g["agreement"] for g in gaps]}
        entry.update({"step_s": step_s, "rl_s": rl_s, "curve": mean_curve(curves),
                      "curves": {str(s): c for s, c in zip(lc.seeds, curves)}})
        arms[arm_name] = entry
    rl = rl_cfg.rl
    t, a = rl.training, rl.algorithm
    return {
        "command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "test_questions": limits.get("test", 0), "val_questions": limits.get("val", 0),
        "settings": {"policy": cfg.policy, "simulator_base": cfg.simulator_base, "steps": t.max_steps,
                     "prompts_per_step": t.prompts_per_step, "num_generations": a.num_generations,
                     "learning_rate": t.learning_rate, "beta": a.beta, "temperature": rl.temperature,
                     "resample_rounds": a.resample_rounds,
                     "curriculum": asdict(rl.curriculum), "reward": a.reward, "seeds": list(lc.seeds),
                     "rollout": asdict(cfg.rollout), "topk": cfg.topk, "stratify_by": rl.stratify_by,
                     "runs": f"runs/{lc.start.replace(':', '-')}/{tag}"},
        "start": start, "arms": arms,
    }


def _once(start: dict[str, Any]) -> dict[str, Any]:
    """The start's numbers with the per-seed repetition removed (it is evaluated once)."""
    return {k: (_once(v) if isinstance(v, dict) else v[0] if isinstance(v, list) and v else v)
            for k, v in start.items()}


def _repeat(start: dict[str, Any], n: int) -> dict[str, Any]:
    """The start's numbers repeated for ``n`` seeds, as :func:`collect` writes them."""
    return {k: (_repeat(v, n) if isinstance(v, dict) else v[:1] * n if isinstance(v, list) else v)
            for k, v in start.items()}


def merge_results(parts: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """One results dict from runs of one start and one recipe that were collected apart (arms run
    in different output folders, sessions or machines): their arms side by side, each keeping its
    own seeds, and ``sources`` naming the command, machine and date behind each part.

    Refuses parts whose start was evaluated differently (another warm-up, another world), whose
    settings differ other than in the seeds, whose question counts differ, or that share an arm:
    side by side, such arms would not be comparable."""
    if len(parts) < 2:
        raise ValueError("merging needs at least two results files")
    first = parts[0]

    def same(res: dict[str, Any]) -> dict[str, Any]:  # files from before stratify_by / resample_rounds
        return {"stratify_by": None, "resample_rounds": 0,
                **{k: v for k, v in res["settings"].items() if k != "seeds"}}

    for i, res in enumerate(parts[1:], start=2):
        if _once(res["start"]) != _once(first["start"]):
            raise ValueError(f"results file {i} has another start than file 1 (its numbers differ): "
                             "only runs from one starting point can be compared")
        if same(res) != same(first):
            diff = sorted(k for k in same(res).keys() | same(first).keys()
                          if same(res).get(k) != same(first).get(k))
            raise ValueError(f"results file {i} was run with other settings than file 1: {', '.join(diff)}")
        for key in ("test_questions", "val_questions"):
            if res.get(key) != first.get(key):
                raise ValueError(f"results file {i} has {key} = {res.get(key)}, file 1 {first.get(key)}")
    arms: dict[str, Any] = {}
    for i, res in enumerate(parts, start=1):
        for name, arm in res["arms"].items():
            if name in arms:
                raise ValueError(f"arm {name!r} is in more than one results file (file {i} again)")
            arms[name] = arm
    seeds = sorted({s for res in parts for s in res["settings"]["seeds"]})
    machines = list(dict.fromkeys(res["machine"] for res in parts))
    return {
        "command": command, "machine": " / ".join(machines), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "test_questions": first["test_questions"], "val_questions": first.get("val_questions", 0),
        "settings": {**first["settings"], "seeds": seeds}, "start": _repeat(first["start"], len(seeds)),
        "arms": arms,
        "sources": [{"command": res["command"], "machine": res["machine"], "date": res["date"],
                     "arms": list(res["arms"])} for res in parts],
    }


def _fmt(values: list, digits: int = 1) -> str:
    """mean +- sd over seeds ('-' where nothing was measured)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def _table(rows: list[tuple[str, str, dict[str, list]]]) -> list[str]:
    lines = ["| arm | about | EM | F1 | EM 1-hop | EM 2-hop | EM 3-hop | searches/q 1-hop | 2-hop | 3-hop "
             "| no answer (%) | queries naming the entity (%) | queries finding nothing (%) "
             "| follow-up queries repeating an earlier one (%) | EM per seed |",
             "|" + "---|" * 15]
    for name, about, r in rows:
        lines.append(f"| {name} | {about} | {_fmt(r['em'])} | {_fmt(r['f1'])} | "
                     + " | ".join(_fmt(r[f"em_{h}hop"]) for h in (1, 2, 3)) + " | "
                     + " | ".join(_fmt(r[f"searches_{h}hop"], 2) for h in (1, 2, 3))
                     + f" | {_fmt(r['no_answer'], 0)} | {_fmt(r.get('queries_with_name', []), 0)}"
                     + f" | {_fmt(r.get('empty_results', []), 0)} | {_fmt(r.get('repeated_queries', []), 0)}"
                     + f" | {', '.join(f'{v:.1f}' for v in r['em'])} |")
    return lines


def results_markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    c = s["curriculum"]
    lines = [
        "# Mini-world learning benchmark", "",
        f"`{res['command']}`", "",
        f"{res['date']} on {res['machine']}.", "",
        *(["Merged from runs collected apart: " + "; ".join(
            f"{', '.join(src['arms'])} by `{src['command']}` ({src['date']}, {src['machine']})"
            for src in res["sources"]) + ".", ""] if res.get("sources") else []),
        f"Start `{res['start']['name']}`: {res['start']['about']} (policy `{s['policy']}`). Each arm: "
        f"{s['steps']} RL steps x {s['prompts_per_step']} questions x {s['num_generations']} rollouts, "
        f"lr {s['learning_rate']:g}, KL beta {s['beta']:g}, F1 reward (no format reward), seeds "
        f"{', '.join(map(str, s['seeds']))}, questions "
        + (f"in stratified order by `{s['stratify_by']}`" if s.get("stratify_by") else "shuffled")
        + (f"; a step in which no question's rollouts differ in reward draws fresh questions, up to "
           f"{s['resample_rounds']} times" if s.get("resample_rounds") else "")
        + f". Noise curriculum {c['p_start']} -> {c['p_end']} (base "
        f"{c['base']}). Evaluation: the real BM25 engine, greedy; EM and F1 x100, mean ± sd over seeds.",
        "",
    ]
    for split, title, n in (("test", "Test questions", res["test_questions"]),
                            ("val", "Validation split of the training questions (for choosing "
                                    "hyper-parameters)", res["val_questions"])):
        start = res["start"] if split == "test" else res["start"].get("val")
        if not n or not start or "em" not in start:
            continue
        once = {k: v[:1] for k, v in start.items() if isinstance(v, list)}  # evaluated once
        rows = [("start", f"`{res['start']['name']}` (no RL, one evaluation)", once)]
        for name, arm in res["arms"].items():
            r = arm if split == "test" else arm.get("val", {})
            if "em" in r:
                rows.append((name, arm["about"], r))
        lines += [f"## {title} ({n})", "", *_table(rows), ""]
    gaps = [(name, arm["sim_gap"]) for name, arm in res["arms"].items() if "sim_gap" in arm]
    if gaps:
        lines += ["## Sim-to-real gap (test; the same policy searching its simulator, useful mode, vs BM25)",
                  "", "| arm | EM with the simulator | EM gap (sim - BM25) | same answer (%) |", "|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(g['em_sim'])} | {_fmt(g['em_gap'])} | {_fmt(g['agreement'])} |"
                  for name, g in gaps]
        lines.append("")
    if not res["arms"]:
        return "\n".join(lines) + "\n"
    hops = any(k.startswith("searches_") for arm in res["arms"].values() for c in arm["curve"] for k in c)
    lines += ["## Training curves (mean over seeds)", "", "![reward per step](reward.png)", "",
              "![searches per question per step](searches.png)", "",
              *(["![searches per rollout by hop count per step](searches_by_hops.png)", ""] if hops else []),
              "| arm | engine | simulator | noise | algorithm | inserted tokens in loss | mean s / step "
              "| RL s per seed |", "|---|---|---|---|---|---|---|---|"]
    for name, arm in res["arms"].items():
        noise = arm["curriculum"] + (f" (p = {arm['fixed_noise']:.3f})" if "fixed_noise" in arm else "")
        secs = ", ".join(f"{v:.0f}" for v in arm["rl_s"] if v is not None) or "-"
        lines.append(f"| {name} | {arm['engine']} | {arm['simulator'] or '-'} | {noise} | {arm['algorithm']} "
                     f"| {'no' if arm['mask_inserted_tokens'] else 'yes'} | {_fmt(arm['step_s'], 0)} | {secs} |")
    return "\n".join(lines) + "\n"


def hop_curves(curves: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """One curve per arm and hop count, its ``searches_<h>hop`` as ``searches`` (steps that drew
    no question of that hop count are left out)."""
    out = {}
    for name, curve in curves.items():
        for h in sorted({k.split("_")[1] for c in curve for k in c if k.startswith("searches_")}):
            out[f"{name}, {h.removesuffix('hop')}-hop"] = [{"step": c["step"], "searches": c[f"searches_{h}"]}
                                   for c in curve if f"searches_{h}" in c]
    return out


def write_results(res: dict[str, Any], out: Path, lc: LearningConfig) -> None:
    """results.json, results.md, reward.png, searches.png and, where the runs logged rollouts,
    searches_by_hops.png (and the copy of results.json)."""
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(res))
    curves = {name: arm["curve"] for name, arm in res["arms"].items()}
    if curves:  # none with --start-only
        plot_curves(curves, "reward", "mean F1 reward (training rollouts)", out / "reward.png")
        plot_curves(curves, "searches", "searches per question (training rollouts)", out / "searches.png")
        by_hops = hop_curves(curves)
        if by_hops:
            plot_curves(by_hops, "searches", "searches per rollout, by hop count (training)",
                        out / "searches_by_hops.png")
    if lc.copy_to:
        Path(lc.copy_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "results.json", lc.copy_to)
