"""`zerosearch quickstart`: the whole ZeroSearch pipeline on a CPU, on the mini-world.

Stages, each writing under ``<output_dir>/`` and skipped when its output already exists (so a rerun
after a kill resumes; RL resumes from its last checkpoint, evaluation from its predictions):

1. ``world/``      the mini-world corpus and questions (:mod:`zerosearch.miniworld`);
2. ``sim/``        simulation tuning: collect (query, documents) pairs from BM25 over the world,
                   label them by answer containment, build a balanced SFT set, fine-tune the simulator;
   ``sim/fidelity/`` measures the tuned simulator on held-out queries (format, answer in useful
                   and noisy mode; with ``sim.fidelity_guard`` also with the noisy guard);
3. ``warmup/``     optional format warm-up of the policy (:mod:`zerosearch.warmup`; ``warmup.steps: 0``
                   skips it and the report says so);
4. ``rl/``         GRPO against the *simulated* engine with the noise curriculum, F1 reward;
5. ``eval/``       held-out questions (``eval_split``) with the *real* BM25 engine: direct and RAG
                   baselines, the agent RL starts from (warmed-up, or untrained without a warm-up)
                   and the trained agent;
6. ``report.md``   tables, ``reward.png`` (reward and noise probability per step), ``em.png``, one
                   example trace; ``stages.json`` holds each stage's wall time.

With ``start_from`` a run folder branches from a finished one: it reuses that folder's world,
simulator, warm-up and baseline evaluations and runs only RL and the trained agent's evaluation, to
compare RL settings or seeds from one start. The learning benchmark
(``benchmarks/miniworld_learning.py``, :mod:`zerosearch.learning`) reuses these stages to train the
same policy many ways (arms x seeds).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zerosearch.config import ConfigError
from zerosearch.curriculum import CurriculumConfig
from zerosearch.engines.factory import EngineConfig, build_engine
from zerosearch.miniworld import FIT_FILE, VAL_FILE, MiniWorldConfig, write_validation_split, write_world
from zerosearch.report import LABELS, write_quickstart_report
from zerosearch.rollout import RolloutConfig
from zerosearch.sim.tune import SimTrainConfig
from zerosearch.train.config import AlgorithmConfig, TrainingConfig
from zerosearch.warmup import WarmupConfig

if TYPE_CHECKING:
    from zerosearch.train.config import TrainConfig

Progress = Callable[[str, int, int, str], None]
"""progress(stage, done, total, info): drives the CLI's bars."""


def _quickstart_tuning() -> SimTrainConfig:
    return SimTrainConfig(max_steps=20, batch_size=4, learning_rate=1e-4, max_length=512, cpu_tuning=True)


@dataclass
class SimStageConfig:
    """The short simulation-tuning pass: which data it collects and builds, the fine-tuning
    itself (``tune``), and how the tuned simulator samples during RL."""

    questions: int = 300
    """Training questions whose BM25 results become simulator SFT data."""
    tune: SimTrainConfig = field(default_factory=_quickstart_tuning)
    """The simulator's fine-tuning (``zerosearch sim train``'s settings: ``max_steps``,
    ``learning_rate``, ``batch_size``, ``answer_weight``, ``noisy_unlikelihood``, ...). The stage
    sets its ``model`` (``simulator_base``), ``data``, ``output_dir`` and ``seed``; giving one of
    those here is an error."""
    max_doc_words: int = 30
    """Words kept per document in the SFT targets (mini-world passages are about 20 words)."""
    temperature: float = 0.7
    """Simulator sampling temperature during RL."""
    max_new_tokens: int = 100
    """Most tokens the simulator writes per search."""
    retrieve_depth: int = 0
    """Documents retrieved per collected query (0 = ``topk``); deeper retrieval lets ``paired``
    build a noisy target from the documents that do not hold the answer."""
    paired: bool = False
    """Each collected query gives a useful and a noisy example where its documents allow
    (``sim.build.paired_examples``), instead of one example in the mode of its label."""
    answer_first: bool = False
    """Useful targets put the documents holding a gold answer first (``sim.build.build``)."""
    answer_lead: int | None = None
    """Words a clipped target document keeps before the answer (None: a third of
    ``max_doc_words``)."""
    partial_queries: int = 0
    """Stubs of each question (the question without its names, then random subsets of its words)
    also searched with BM25 and turned into SFT examples (``sim collect``'s ``partial_queries``;
    with ``paired``, a stub's useful target is BM25's top documents as ranked), so the simulator
    follows the query it is given."""
    fidelity_guard: bool = False
    """The fidelity stage also measures the tuned simulator with the noisy guard (a second row; RL
    never uses the guard). Off in the quickstart to keep it short; ``benchmarks/sim_miniworld.py``
    turns it on."""


def _quickstart_algorithm() -> AlgorithmConfig:
    # groups of 6 rollouts, where the learning benchmark samples 8: on a CPU a decoding step costs
    # about the same at 12 rows as at 16, so the step is cheaper mostly in optimisation; chosen on
    # the validation split (docs/log.md, fifth session of 2026-12-07). resample_rounds: the warmed-up
    # start scores in a few percent of its rollouts, so a step's 12 rollouts sometimes all score 0
    # and, in four steps, a run could see no reward at all and end where it started (docs/log.md,
    # 2026-12-08); such a step now draws fresh questions, twice at most (a draw costs one step's
    # rollouts and the reference pass over them, a small part of a step)
    return AlgorithmConfig(num_generations=6, beta=0.04, reward="f1", resample_rounds=2)


def _quickstart_training() -> TrainingConfig:
    # the learning benchmark's recipe (configs/quickstart/miniworld-learning.yaml, chosen on its
    # validation split), cut to the steps 20 minutes allow and to groups of 6 (above);
    # micro_batch_size 0: a step's rollouts in one backward pass, the fastest on a CPU at this size;
    # generation_batch_size: every rollout of a step of up to 16 decoded together
    return TrainingConfig(max_steps=4, prompts_per_step=2, micro_batch_size=0, generation_batch_size=16,
                          learning_rate=2e-5, save_steps=2, save_total_limit=1, report_to=[], cpu_tuning=True)


@dataclass
class RLStageConfig:
    """The short RL run (GRPO, simulated engine, curriculum): ``zerosearch train``'s own algorithm
    and training sections, the noise schedule, and the rollouts' sampling temperature."""

    algorithm: AlgorithmConfig = field(default_factory=_quickstart_algorithm)
    """The RL algorithm and its loss (``zerosearch train``'s ``algorithm`` section: ``name``,
    ``num_generations``, ``beta``, ``reward``, ...). The learning benchmark's arms set ``name``."""
    training: TrainingConfig = field(default_factory=_quickstart_training)
    """Optimisation and checkpoints (``zerosearch train``'s ``training`` section: ``max_steps``,
    ``prompts_per_step``, ``learning_rate``, ``save_steps``, ...). The stage sets ``output_dir`` and
    ``seed``; giving one of those here is an error. The learning benchmark's arms set
    ``mask_inserted_tokens``."""
    curriculum: CurriculumConfig = field(default_factory=lambda: CurriculumConfig(p_start=0.0, p_end=0.5))
    """Noise schedule of the simulated engine."""
    temperature: float = 0.7
    """Policy sampling temperature during rollouts (evaluation is greedy: ``rollout.temperature``)."""
    stratify_by: str | None = None
    """``data.stratify_by`` of the run; ``metadata.hops``: every step holds at least its share of
    each hop count (two questions a step: always a 1-hop one; default world, first four steps: 1+2,
    1+3, 1+2, 1+1 hops, the same for every seed). None: a plain shuffle, the default: stratified,
    the trained agent scored lower in every run we compared and the reward curve rose no more
    (docs/log.md)."""


@dataclass
class QuickstartConfig:
    """Everything `zerosearch quickstart` does; the defaults aim at about 20 minutes on 2 CPU cores
    (the measured time is in docs/benchmarks.md)."""

    output_dir: str = "runs/quickstart"
    """Where every stage writes (rerun = resume)."""
    policy: str = "embedded:smollm2-135m-instruct"
    """The policy to train."""
    simulator_base: str = "embedded:smollm2-135m-instruct"
    """The model fine-tuned into the simulation LLM."""
    world: MiniWorldConfig = field(default_factory=MiniWorldConfig)
    """Mini-world sizes and seed."""
    topk: int = 3
    """Documents per search (every stage)."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(
        max_turns=2, max_turn_tokens=48, max_completion_tokens=320, max_obs_tokens=160, topk=3))
    """Turn and token budgets of the agent (training and evaluation)."""
    sim: SimStageConfig = field(default_factory=SimStageConfig)
    """Simulation tuning."""
    warmup: WarmupConfig = field(default_factory=lambda: WarmupConfig(steps=10, batch_size=4))
    """Format warm-up of the policy (steps: 0 = none). Short on purpose: it teaches the tags, not the
    task (its own held-out EM is a few points), so what the agent gains after it is RL's doing."""
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    """RL run."""
    eval_questions: int = 50
    """Held-out questions per evaluated method."""
    eval_split: str = "test"
    """Which held-out questions the report's evaluation reads: ``test``, or ``val`` (needs
    ``val_questions``) to choose settings without looking at the test questions."""
    eval_batch_size: int = 50
    """Questions generated together in evaluation (the default: all of ``eval_questions`` at once)."""
    seed: int = 0
    """Training seed."""
    start_from: str | None = None
    """A finished quickstart folder to branch from: its world, tuned simulator and warm-up are
    linked and its baseline evaluations copied (nothing is retrained) and only RL and the trained
    agent's evaluation run here, so RL settings or seeds are compared from one start. Every other field
    but ``rl``, ``seed`` and ``output_dir`` must equal that folder's; ``seed`` then seeds RL only.
    None: run every stage."""
    val_questions: int = 0
    """Training questions held out as a validation split (``world/val.jsonl``: whole subjects, like
    the test split), for choosing hyper-parameters without looking at the test questions; every
    training stage then reads ``world/train_minus_val.jsonl``. 0: no split, train on all of
    ``train.jsonl``."""


def _timed(stages: dict[str, float], name: str, path: Path, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    path.write_text(json.dumps(stages, indent=2))
    return result


def bm25_config(cfg: QuickstartConfig) -> EngineConfig:
    return EngineConfig(kind="bm25", corpus=str(Path(cfg.output_dir) / "world" / "corpus.jsonl"),
                        topk=cfg.topk)


def simulator_config(cfg: QuickstartConfig) -> EngineConfig:
    return EngineConfig(kind="simulated", model=str(Path(cfg.output_dir) / "sim" / "simulator" / "final"),
                        style="finetuned", topk=cfg.topk, temperature=cfg.sim.temperature,
                        max_new_tokens=cfg.sim.max_new_tokens)


def stage_world(cfg: QuickstartConfig) -> Path:
    out = Path(cfg.output_dir) / "world"
    if not (out / "world.json").exists():  # written last
        write_world(out, cfg.world)
    if cfg.val_questions and not (out / VAL_FILE).exists():  # written last
        write_validation_split(out, cfg.val_questions, cfg.world.seed)
    return out


def train_questions(cfg: QuickstartConfig) -> Path:
    """The questions every training stage reads: ``train.jsonl`` less the validation split."""
    world = Path(cfg.output_dir) / "world"
    return world / (FIT_FILE if cfg.val_questions else "train.jsonl")


STAGE_SET = ("model", "data", "output_dir", "seed")
"""The ``sim.tune`` fields the quickstart sets itself."""


def simulator_tuning(cfg: QuickstartConfig) -> SimTrainConfig:
    """``sim.tune`` with the fields the stage owns filled in: the base model, the SFT set it built,
    its output folder and the run's seed. A YAML that sets one of those gets an error, not a value
    silently replaced."""
    default = SimTrainConfig()
    given = [name for name in STAGE_SET if getattr(cfg.sim.tune, name) != getattr(default, name)]
    if given:
        raise ConfigError(f"sim.tune.{given[0]} is set by the quickstart (the simulator base is "
                         f"simulator_base, the seed is seed); remove it from sim.tune")
    sim = Path(cfg.output_dir) / "sim"
    return replace(cfg.sim.tune, model=cfg.simulator_base, data=str(sim / "sft" / "train.jsonl"),
                   output_dir=str(sim / "simulator"), seed=cfg.seed)


def stage_simulator(cfg: QuickstartConfig, progress: Progress, log=print) -> str:
    """Collect from BM25, label, build, fine-tune; returns the simulator folder."""
    from zerosearch.qa import load_qa
    from zerosearch.sim.build import build
    from zerosearch.sim.collect import CollectConfig, collect
    from zerosearch.sim.label import label
    from zerosearch.sim.tune import train_simulator

    sim = Path(cfg.output_dir) / "sim"
    final = sim / "simulator" / "final"
    if (final / "config.json").exists():
        return str(final)
    rows = load_qa(train_questions(cfg), limit=cfg.sim.questions)
    engine = build_engine(bm25_config(cfg), log=log)
    try:
        collect(rows, engine, sim / "collected.jsonl",
                CollectConfig(query_source="question", batch_size=64,
                              rollout=RolloutConfig(topk=cfg.sim.retrieve_depth or cfg.topk),
                              partial_queries=cfg.sim.partial_queries, seed=cfg.seed),
                progress=lambda d, t: progress("sim: collect", d, t, ""))
    finally:
        engine.close()
    label(sim / "collected.jsonl", sim / "labelled.jsonl",
          progress=lambda d, t: progress("sim: label", d, t, ""))
    stats = build(sim / "labelled.jsonl", sim / "sft", "contains", cfg.topk, cfg.sim.max_doc_words,
                  0.1, cfg.seed, answer_first=cfg.sim.answer_first, answer_lead=cfg.sim.answer_lead,
                  paired=cfg.sim.paired)
    log(f"simulator SFT set: {json.dumps(stats)}")
    return train_simulator(simulator_tuning(cfg), log=log,
                           progress=lambda d, t, info: progress("sim: fine-tune", d, t, info))


def stage_fidelity(cfg: QuickstartConfig, progress: Progress) -> dict[str, Any]:
    """How faithful the tuned simulator is on the held-out SFT queries (``sim/fidelity/``)."""
    from zerosearch.sim.fidelity import (held_out_queries, measure, query_groups, real_engine_row,
                                         reference_documents, write_report)

    out = Path(cfg.output_dir) / "sim" / "fidelity"
    if (out / "fidelity.json").exists():
        return json.loads((out / "fidelity.json").read_text())[1]
    groups = query_groups(held_out_queries(Path(cfg.output_dir) / "sim" / "sft" / "val.jsonl"))
    if not groups or groups[0][0] != "":
        raise ValueError("no held-out simulator queries (sim/sft/val.jsonl is empty); raise sim.questions")
    rows = []
    # per group (the questions, then stubs of them: does the simulator follow the query?): the real
    # engine, the simulator as trained (the guard off, as in the paper) and, on the questions, with
    # the noisy guard reported beside it
    for suffix, group in groups:
        reference = reference_documents(group, None, cfg.topk)
        rows.append(real_engine_row(group, reference))
        rows[-1]["simulator"] += suffix
        guarded = not suffix and cfg.sim.fidelity_guard
        for name, guard in (("tuned simulator", False), ("tuned simulator + noisy guard", True))[:1 + guarded]:
            name += suffix
            sim_engine = replace(simulator_config(cfg), noisy_guard=guard)
            engine = build_engine(sim_engine)
            try:
                # as many queries a call as the simulator generates together: on a CPU a decoding
                # step's cost grows little with its rows, so fewer, fuller calls finish sooner
                rows.append(measure(name, engine, group, cfg.topk, reference,
                                    batch_size=sim_engine.max_batch_size,
                                    progress=lambda _n, d, t, name=name: progress(f"sim: fidelity ({name})", d, t, "")))
            finally:
                engine.close()
    write_report(rows, out)
    return rows[1]


def stage_warmup(cfg: QuickstartConfig, progress: Progress, log=print,
                 out_dir: str | Path | None = None) -> str:
    """The warmed-up policy folder (``out_dir``, default ``<output_dir>/warmup``), or the policy
    itself when the warm-up is off."""
    from zerosearch.qa import load_qa
    from zerosearch.warmup import train_warmup

    if cfg.warmup.steps <= 0:
        return cfg.policy
    out = Path(out_dir) if out_dir else Path(cfg.output_dir) / "warmup"
    if (out / "config.json").exists():
        return str(out)
    rows = load_qa(train_questions(cfg))
    engine = build_engine(bm25_config(cfg), log=log)
    try:
        return train_warmup(cfg.policy, rows, engine, out, cfg.warmup, cfg.rollout,
                            progress=lambda d, t, loss: progress("warm-up", d, t, f"loss {loss:.3f}"))
    finally:
        engine.close()


RL_STAGE_SET = ("output_dir", "seed")
"""The ``rl.training`` fields the quickstart sets itself."""


def rl_train_config(cfg: QuickstartConfig, start_model: str, engine: EngineConfig,
                    curriculum: CurriculumConfig, output_dir: str | Path, algorithm: str | None = None,
                    mask_inserted_tokens: bool | None = None, seed: int | None = None) -> "TrainConfig":
    """The TrainConfig of an RL run on the mini-world: ``rl.algorithm`` and ``rl.training`` with the
    fields the stage owns filled in (shared with the learning benchmark, whose arms set the
    ``algorithm`` name, the loss masking of inserted tokens and the ``seed``: data order, sampling and
    noise draws; None keeps ``rl``'s and ``cfg.seed``). A YAML that sets a stage-owned field gets an
    error, not a value silently replaced."""
    from zerosearch.train.config import DataConfig, ModelConfig, TrainConfig

    rl = cfg.rl
    default = TrainingConfig()
    given = [name for name in RL_STAGE_SET if getattr(rl.training, name) != getattr(default, name)]
    if given:
        raise ConfigError(f"rl.training.{given[0]} is set by the quickstart (the output folder is "
                          f"output_dir/rl, the seed is seed); remove it from rl.training")
    seed = cfg.seed if seed is None else seed
    rollout = RolloutConfig(**{**asdict(cfg.rollout), "temperature": rl.temperature, "topk": cfg.topk})
    training = replace(rl.training, output_dir=str(output_dir), seed=seed)
    if mask_inserted_tokens is not None:
        training = replace(training, mask_inserted_tokens=mask_inserted_tokens)
    train_cfg = TrainConfig(
        model=ModelConfig(name=start_model, dtype="float32"),
        data=DataConfig(train=str(train_questions(cfg)), shuffle_seed=seed, stratify_by=rl.stratify_by),
        engine=engine, rollout=rollout, curriculum=curriculum,
        algorithm=rl.algorithm if algorithm is None else replace(rl.algorithm, name=algorithm),
        training=training)
    train_cfg.validate()
    return train_cfg


def stage_rl(train_cfg, progress: Progress, name: str = "RL", log=print) -> str:
    """Train (resuming from the last checkpoint); returns the final model folder."""
    out = Path(train_cfg.training.output_dir)
    final = out / "final"
    if (final / "config.json").exists():
        return str(final)
    from transformers.trainer_utils import get_last_checkpoint  # slow imports: only when training

    from zerosearch.train.run import train

    resume = out.is_dir() and get_last_checkpoint(str(out)) is not None

    def on_progress(step: int, total: int, record: dict) -> None:
        if "reward" in record:
            progress(name, step, total, f"reward {record['reward']:.3f} · noise "
                                        f"{record.get('zerosearch/noise_prob') or 0:.2f}")

    progress(name, 0, train_cfg.training.max_steps, "")
    return train(train_cfg, resume=resume, log=log, on_progress=on_progress)


def stage_eval(cfg: QuickstartConfig, name: str, model: str, method: str, progress: Progress,
               out_root: str | Path | None = None, log=print, split: str = "test",
               limit: int | None = None, engine: EngineConfig | None = None) -> dict[str, Any]:
    """Evaluate one (model, method) on held-out questions with the real BM25 engine (or
    ``engine``, e.g. a simulator for the sim-to-real gap): the first ``limit`` (default
    ``cfg.eval_questions``) of ``world/<split>.jsonl`` (``test``, or ``val`` with ``val_questions``)."""
    out = Path(out_root or Path(cfg.output_dir) / "eval") / name
    limit = cfg.eval_questions if limit is None else limit
    results = out / "results.json"
    if results.exists():
        report = json.loads(results.read_text())
        if report.get("limit") == limit:
            return report
    from zerosearch.evaluate import EvalConfig, evaluate  # slow imports: only when evaluating
    from zerosearch.generation.hf import load_policy

    test = Path(cfg.output_dir) / "world" / f"{split}.jsonl"
    if not test.exists():
        raise FileNotFoundError(f"no {split} questions: {test} does not exist"
                                + (" (set val_questions for a validation split)" if split == "val" else ""))
    rollout = RolloutConfig(**{**asdict(cfg.rollout), "temperature": 0.0, "topk": cfg.topk})
    eval_cfg = EvalConfig(model=model, method=method, datasets=[str(test)], limit=limit,
                          batch_size=cfg.eval_batch_size, rollout=rollout, label=LABELS.get(name, name))
    searched = build_engine(engine or bm25_config(cfg), log=log) if method in ("search", "rag") else None
    generator, tokenizer = load_policy(model, device="cpu", dtype="float32")
    try:
        return evaluate(eval_cfg, generator, tokenizer, searched, out,
                        progress=lambda _ds, d, t: progress(f"eval: {name}", d, t, ""))
    finally:
        if searched is not None:
            searched.close()


def eval_runs(cfg: QuickstartConfig, start: str, trained: str) -> list[tuple[str, str, str]]:
    """(folder name, model, method) of every evaluated row, baselines first, then the agent RL
    starts from (the warmed-up policy, or the untouched one when there is no warm-up) and the
    trained agent."""
    runs = [("direct", cfg.policy, "direct"), ("rag", cfg.policy, "rag")]
    runs.append(("warmup", start, "search") if start != cfg.policy else ("untrained", cfg.policy, "search"))
    runs.append(("zerosearch", trained, "search"))
    return runs


LEGACY_SIM_TUNE = {"steps": "max_steps", "batch_size": "batch_size", "learning_rate": "learning_rate",
                   "answer_weight": "answer_weight", "noisy_unlikelihood": "noisy_unlikelihood",
                   "noisy_contrast": "noisy_contrast"}
"""Fine-tuning keys the ``sim`` section held itself before it held ``sim.tune`` (old key: new key)."""


LEGACY_RL = {"steps": ("training", "max_steps"), "prompts_per_step": ("training", "prompts_per_step"),
             "learning_rate": ("training", "learning_rate"), "num_generations": ("algorithm", "num_generations"),
             "beta": ("algorithm", "beta")}
"""Keys the ``rl`` section held itself before it held ``rl.training`` and ``rl.algorithm``
(old key: (section, new key))."""


def _upgrade(before: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` written before ``sim.tune``, ``rl.training``, ``eval_split``,
    ``sim.fidelity_guard``, ``rl.stratify_by`` or ``rl.algorithm.resample_rounds`` existed, in
    today's layout, so a run folder made then resumes when its settings are the same (a field added
    later takes the value those runs used: its default, no stratification, no redraws)."""
    before = {"eval_split": QuickstartConfig.eval_split, **before}
    if isinstance(before.get("sim"), dict):
        before = {**before, "sim": {"fidelity_guard": SimStageConfig.fidelity_guard, **before["sim"]}}
    if isinstance(before.get("rl"), dict):  # runs made before rl.stratify_by: a plain shuffle
        before = {**before, "rl": {"stratify_by": None, **before["rl"]}}
        algorithm = before["rl"].get("algorithm")
        if isinstance(algorithm, dict):  # before algorithm.resample_rounds: never drew again
            before["rl"] = {**before["rl"], "algorithm": {"resample_rounds": 0, **algorithm}}
    sim, rl = before.get("sim"), before.get("rl")
    if isinstance(sim, dict) and "tune" not in sim:
        tune = {**asdict(_quickstart_tuning()),
                **{LEGACY_SIM_TUNE[k]: v for k, v in sim.items() if k in LEGACY_SIM_TUNE}}
        rest = {k: v for k, v in sim.items() if k not in LEGACY_SIM_TUNE}
        before = {**before, "sim": {**rest, "tune": tune}}
    if isinstance(rl, dict) and "training" not in rl:
        sections = {"training": asdict(_quickstart_training()),
                    "algorithm": {**asdict(_quickstart_algorithm()), "resample_rounds": 0}}
        for key, (section, name) in LEGACY_RL.items():
            if key in rl:
                sections[section][name] = rl[key]
        rest = {k: v for k, v in rl.items() if k not in LEGACY_RL}
        before = {**before, "rl": {**rest, **sections}}
    return before


def check_same_config(cfg: QuickstartConfig, write: bool = True) -> None:
    """A rerun resumes only the same configuration: finished stages would otherwise be reused with
    settings they were not made with. Different settings need another output folder. ``write``:
    record the configuration in the folder once it is accepted."""
    path = Path(cfg.output_dir) / "config.json"
    now = _record(cfg)
    if path.exists():
        before = _upgrade(json.loads(path.read_text()))
        changed = _differences(now, before)
        if changed:
            said = _describe(changed, "now")
            raise ValueError(f"{cfg.output_dir} holds a quickstart with different {said}; set the old "
                             "values in the --config YAML to resume it, or use another --output-dir "
                             "(or delete it) to start over")
    if write:
        path.write_text(json.dumps(now, indent=2))


def _record(cfg: QuickstartConfig) -> dict[str, Any]:
    """The configuration as a run folder's ``config.json`` holds it."""
    return json.loads(json.dumps(asdict(cfg)))


def _describe(changed: list[tuple[str, Any, Any]], here: str) -> str:
    """The first differing settings with both values, then the other keys by name."""
    return ", ".join(f"{key} ({old!r} there, {new!r} {here})" if i < 4 else key
                     for i, (key, new, old) in enumerate(changed))


def _differences(now: Any, before: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value now, value before) for every setting that differs, nested sections
    descended (``rl.stratify_by``, not just ``rl``)."""
    if not (isinstance(now, dict) and isinstance(before, dict)):
        return [] if now == before else [(prefix or "config", now, before)]
    out = []
    for key in sorted(set(now) | set(before)):
        name = f"{prefix}.{key}" if prefix else key
        if key not in now or key not in before:
            if now.get(key) != before.get(key):
                out.append((name, now.get(key), before.get(key)))
        else:
            out.extend(_differences(now[key], before[key], name))
    return out


BRANCH_FREE = ("rl", "seed", "output_dir", "start_from")
"""Settings a branch (``start_from``) may change; every other one is the source folder's."""

START_STAGES = ("world", "simulation tuning", "simulator fidelity", "format warm-up")
"""Stages a branch reuses from its source folder."""


def branch_from(cfg: QuickstartConfig) -> None:
    """Prepare ``cfg.output_dir`` to branch from the finished quickstart ``cfg.start_from`` (made
    absolute here, so the folder's record does not depend on where it was run from): link its
    world, simulator and warm-up, copy its baseline evaluations and its stage timings. Every check
    comes before anything is linked or copied: a source that is unfinished or made with other
    settings, or an output folder that holds another run, is refused (a ConfigError naming the
    problem) and leaves the output folder as it was."""
    import shutil

    src, out = Path(cfg.start_from).resolve(), Path(cfg.output_dir)
    cfg.start_from = str(src)
    check_same_config(cfg, write=False)  # a folder holding another run is refused before any link
    if src == out.resolve():
        raise ConfigError(f"start_from is the output folder itself ({src})")
    if not (src / "config.json").exists() or not (src / "stages.json").exists():
        raise ConfigError(f"start_from {src} is not a quickstart run folder (no config.json / stages.json)")
    done = json.loads((src / "stages.json").read_text())
    missing = [name for name in START_STAGES if name not in done]
    if missing:
        raise ConfigError(f"start_from {src} has not finished: {', '.join(missing)} missing; "
                          "run `zerosearch quickstart` there first")
    now = {k: v for k, v in _record(cfg).items() if k not in BRANCH_FREE}
    there = {k: v for k, v in _upgrade(json.loads((src / "config.json").read_text())).items()
             if k not in BRANCH_FREE}
    changed = _differences(now, there)
    if changed:
        raise ConfigError(f"start_from {src} was made with other settings: {_describe(changed, 'here')}; "
                          f"a branch may change only {', '.join(BRANCH_FREE[:2])}")
    start = str(out / "warmup") if cfg.warmup.steps > 0 else cfg.policy
    baselines = [name for name, _, _ in eval_runs(cfg, start, "")[:-1]]
    unfinished = [name for name in baselines if not (src / "eval" / name / "results.json").exists()]
    if unfinished:
        raise ConfigError(f"start_from {src} has no finished evaluation {', '.join(map(repr, unfinished))}; "
                          "run `zerosearch quickstart` there to the end first")
    linked = [name for name in ("world", "sim", "warmup") if (src / name).exists()]
    dangling = [out / name for name in linked if (out / name).is_symlink() and not (out / name).exists()]
    if dangling:
        raise ConfigError(f"{dangling[0]} links to a folder that no longer exists (was start_from moved?)")
    for name in linked:  # linked to the real folder (a branch's branch too)
        if not (out / name).exists():
            (out / name).symlink_to((src / name).resolve(), target_is_directory=True)
    for name in baselines:
        if not (out / "eval" / name).exists():  # copied whole or not at all
            partial = out / "eval" / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src / "eval" / name, partial)
            partial.rename(out / "eval" / name)
    stages_file = out / "stages.json"
    if not stages_file.exists():
        reused = {name: done[name] for name in START_STAGES}
        stages_file.write_text(json.dumps(reused, indent=2))


def run(cfg: QuickstartConfig, progress: Progress, log=print) -> Path:
    """Every stage in order; returns the report path."""
    if cfg.eval_split not in ("test", "val"):
        raise ConfigError(f"eval_split must be test or val, not {cfg.eval_split!r}")
    if cfg.eval_split == "val" and not cfg.val_questions:
        raise ConfigError("eval_split: val needs val_questions > 0 (the training questions to hold out)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.start_from:  # before the folder records its config: a refused branch leaves nothing
        branch_from(cfg)
    check_same_config(cfg)
    stages_file = out / "stages.json"
    stages: dict[str, float] = json.loads(stages_file.read_text()) if stages_file.exists() else {}
    _timed(stages, "world", stages_file, lambda: stage_world(cfg))
    _timed(stages, "simulation tuning", stages_file, lambda: stage_simulator(cfg, progress, log))
    _timed(stages, "simulator fidelity", stages_file, lambda: stage_fidelity(cfg, progress))
    start = _timed(stages, "format warm-up", stages_file, lambda: stage_warmup(cfg, progress, log))
    train_cfg = rl_train_config(cfg, start, simulator_config(cfg), cfg.rl.curriculum, out / "rl")
    trained = _timed(stages, "RL", stages_file, lambda: stage_rl(train_cfg, progress, log=log))
    reports, runs = [], eval_runs(cfg, start, trained)
    for name, model, method in runs:
        reports.append(_timed(stages, "evaluation", stages_file,
                              lambda: stage_eval(cfg, name, model, method, progress, log=log,
                                                 split=cfg.eval_split)))
    return write_quickstart_report(cfg, reports, [name for name, _, _ in runs], stages)
