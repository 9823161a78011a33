"""The quickstart report: ``report.md`` with measured numbers, ``reward.png``, ``em.png``.

Everything is read back from the files the stages wrote (``rl/metrics.jsonl``, each evaluation's
``results.json`` and predictions), so the report can be rebuilt at any time without rerunning.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

from zerosearch.jsonl import read_finished


def rl_curve(metrics_file: Path) -> list[dict[str, float]]:
    """(step, reward, noise probability, searches) per logged training step."""
    rows = []
    for rec in read_finished(metrics_file) if metrics_file.exists() else []:
        if "reward" in rec:
            rows.append({"step": rec["step"], "reward": rec["reward"],
                         "noise": rec.get("zerosearch/noise_prob") or 0.0,
                         "searches": rec.get("zerosearch/searches_per_question", 0.0)})
    return rows


def _trained_draws(rollouts_file: Path) -> tuple[dict[tuple[int, int, str], set[float]], dict[int, int]]:
    """A run's ``rollouts.jsonl`` read once: the rewards of each (step, draw, question id), and
    each step's last draw, the one it trained on (``algorithm.resample_rounds`` redraws a step
    without a signal; 0 when it did not)."""
    groups: dict[tuple[int, int, str], set[float]] = {}
    last: dict[int, int] = {}
    for rec in read_finished(rollouts_file) if rollouts_file.exists() else []:
        step, draw = rec["step"], rec.get("draw", 0)
        groups.setdefault((step, draw, rec["id"]), set()).add(rec["reward"])
        last[step] = max(last.get(step, 0), draw)
    return groups, last


def signal_groups(rollouts_file: Path) -> tuple[int, int]:
    """(groups whose rewards differ, all groups) in a run's ``rollouts.jsonl``, a group being one
    question's rollouts in the draw a step trained on (its last): GRPO's advantages are zero in a
    group whose rollouts all score the same, so only the first number's groups move the policy
    (apart from the KL term)."""
    groups, last = _trained_draws(rollouts_file)
    trained = [rewards for (step, draw, _), rewards in groups.items() if draw == last[step]]
    return sum(len(rewards) > 1 for rewards in trained), len(trained)


def redraws(rollouts_file: Path) -> dict[int, int]:
    """Per step of a run's ``rollouts.jsonl`` that drew its questions again for want of a signal
    (``algorithm.resample_rounds``): how many times it did."""
    return {step: n for step, n in sorted(_trained_draws(rollouts_file)[1].items()) if n}


def _signal_line(rollouts_file: Path, algorithm: str) -> list[str]:
    """The report's line on GRPO's learning signal (none for the algorithms whose advantages are
    not relative to the question's group)."""
    varied, total = signal_groups(rollouts_file)
    again = redraws(rollouts_file)
    redrawn = ("Steps without a signal drew fresh questions: "
               + ", ".join(f"step {step} {n} time{'s' if n > 1 else ''}" for step, n in again.items())
               + " (the reward columns above average over every draw, questions included)."
               if again else "")
    if not total or algorithm != "grpo":
        return [f"- {redrawn}", ""] if again else []
    line = (f"- Learning signal: in {varied} of {total} groups (one question's rollouts in the draw "
            "a step trained on) the rewards differ; GRPO learns only from those.")
    if again:
        line += " " + redrawn
    if not varied:
        line += (" **No rollout group had a reward that differs, so RL had no signal and the trained "
                 "agent is its start** (its rollouts never scored, or all scored alike); another "
                 "`seed` draws other questions and rollouts.")
    return [line, ""]


def reward_by_group(rollouts_file: Path, groups: dict[str, str] | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """Per step and group of a run's ``rollouts.jsonl``: mean reward, searches per rollout and the
    number of questions. The group is ``groups[question id]`` when ``groups`` is given, else the
    rollout's own (``data.stratify_by``). Empty when the run logged no rollouts or no groups."""
    per: dict[int, dict[str, list[dict]]] = {}
    for rec in read_finished(rollouts_file) if rollouts_file.exists() else []:
        group = groups.get(rec["id"]) if groups is not None else rec.get("group")
        if group is not None:
            per.setdefault(rec["step"], {}).setdefault(str(group), []).append(rec)
    return {step: {g: {"reward": sum(r["reward"] for r in v) / len(v),
                       "searches": sum(r["searches"] for r in v) / len(v),
                       "questions": len({r["id"] for r in v})}
                   for g, v in sorted(at_step.items())}
            for step, at_step in sorted(per.items())}


def plot_reward(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Reward per step (one line per run) and, on a second axis, the noise probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    twin = ax.twinx()
    for name, curve in curves.items():
        if not curve:
            continue
        steps = [c["step"] for c in curve]
        ax.plot(steps, [c["reward"] for c in curve], marker="o", label=f"reward: {name}")
        twin.plot(steps, [c["noise"] for c in curve], linestyle="--", alpha=0.6, label=f"noise p: {name}")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean F1 reward")
    twin.set_ylabel("noise probability")
    twin.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_em(rows: Sequence[tuple[str, float]], path: Path) -> None:
    """Bar chart of strict EM per evaluated method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color="#4c72b0")
    ax.set_ylabel("strict EM (x100)")
    ax.set_title("Held-out mini-world questions, real BM25 engine")
    for i, (_, v) in enumerate(rows):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_by_hops(pred_file: Path, test_file: Path) -> dict[int, float]:
    """Strict EM (x100) per hop count of the questions in ``pred_file``."""
    return {h: v["em"] for h, v in stats_by_hops(pred_file, test_file).items()}


def stats_by_hops(pred_file: Path, test_file: Path) -> dict[int, dict[str, float]]:
    """Per hop count of the questions in ``pred_file``: ``n``, strict EM and F1 (x100) and searches
    per question."""
    hops = {r["id"]: r["metadata"]["hops"] for r in read_finished(test_file)}
    per: dict[int, list[dict]] = {}
    for rec in read_finished(pred_file):
        per.setdefault(hops[rec["id"]], []).append(rec)
    return {h: {"n": len(v), "em": 100 * sum(r["metrics"]["em"] for r in v) / len(v),
                "f1": 100 * sum(r["metrics"]["f1"] for r in v) / len(v),
                "searches": sum(r["stats"]["searches"] for r in v) / len(v)}
            for h, v in sorted(per.items())}


def plot_curves(curves: dict[str, list[dict[str, float]]], key: str, ylabel: str, path: Path) -> None:
    """One line per run: ``key`` of each step of its :func:`rl_curve` (e.g. reward, searches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if curve:
            ax.plot([c["step"] for c in curve], [c[key] for c in curve], marker="o", markersize=3,
                    label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABELS = {"direct": "direct answer (no search)", "rag": "RAG (top-k in the prompt)",
          "untrained": "untrained agent", "warmup": "warm-up only agent",
          "zerosearch": "ZeroSearch-trained agent"}
"""Row names of the report's table, by evaluation folder."""


def method_table(reports: Sequence[dict[str, Any]], test_file: Path, pred_dirs: Sequence[Path]) -> str:
    """Markdown: EM, F1, EM by hop count, searches, answer-extraction failures per method."""
    hops_seen: set[int] = set()
    by_hops = []
    for d in pred_dirs:
        files = sorted((d / "predictions").glob("*.jsonl"))
        per = eval_by_hops(files[0], test_file) if files else {}
        hops_seen.update(per)
        by_hops.append(per)
    hop_cols = sorted(hops_seen)
    head = ("| method | n | EM | F1 | " + " | ".join(f"EM {h}-hop" for h in hop_cols)
            + " | searches / q | no answer (%) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for report, per in zip(reports, by_hops):
        a = report["average"]
        n = sum(v["n"] for v in report["datasets"].values())
        cells = [report["label"], str(n), f"{100 * a['em']:.1f}", f"{100 * a['f1']:.1f}"]
        cells += [f"{per[h]:.1f}" if h in per else "-" for h in hop_cols]
        cells += [f"{a['searches']:.2f}", f"{100 * a['extraction_failure']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def example_trace(pred_dir: Path) -> str | None:
    """The first held-out prediction that searched and was right (else that searched, else any)."""
    files = sorted((pred_dir / "predictions").glob("*.jsonl"))
    records = read_finished(files[0]) if files else []
    for wanted in (lambda r: r["stats"]["searches"] and r["metrics"]["em"],
                   lambda r: r["stats"]["searches"], lambda r: True):
        for rec in records:
            if wanted(rec):
                return (f"Question: {rec['question']}\nGold: {rec['golden_answers']}\n"
                        f"Prediction: {rec['prediction']}\n\n{rec['response']}")
    return None


def _sft_summary(path: Path) -> str:
    if not path.exists():
        return ""
    train = json.loads(path.read_text())["train"]
    modes = ", ".join(f"{v} {k}" for k, v in sorted(train["modes"].items()))
    return f" ({train['examples']} SFT examples: {modes})"


def _fidelity_line(path: Path) -> str:
    if not path.exists():
        return "- Simulator fidelity: not measured."
    row = json.loads(path.read_text())[1]
    return (f"- Simulator fidelity on {row['queries']} held-out queries (`sim/fidelity/fidelity.md`): "
            f"{100 * row['format_validity']:.0f}% well-formed outputs, a gold answer in "
            f"{100 * row['contains_useful']:.0f}% of useful-mode and {100 * row['contains_noisy']:.0f}% of "
            f"noisy-mode outputs (fidelity score {row['fidelity']:.3f}).")


def train_hops(world: Path) -> dict[str, str]:
    """Hop count of every mini-world training question, by id."""
    return {str(r["id"]): str(r["metadata"]["hops"]) for r in read_finished(world / "train.jsonl")}


def _curve_table(curve: list[dict[str, float]], groups: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """The report's per-step table; with groups (the questions' hop counts), a column of reward
    and searches by hop count: what a step's mix of questions did to its reward."""
    head = "| step | reward | noise p | searches / q |"
    if groups:
        head += " reward / searches per rollout, by hop count (questions) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in curve:
        cells = [str(c["step"]), f"{c['reward']:.3f}", f"{c['noise']:.2f}", f"{c['searches']:.2f}"]
        if groups:
            cells.append(" · ".join(f"{g}-hop: {v['reward']:.2f} / {v['searches']:.2f} ({v['questions']})"
                                    for g, v in groups.get(c["step"], {}).items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_quickstart_report(cfg, reports: Sequence[dict[str, Any]], names: Sequence[str],
                            stages: dict[str, float]) -> Path:
    """Write report.md, reward.png and em.png into the quickstart folder; ``names`` are the
    evaluation folders under ``eval/`` in the order of ``reports``."""
    out = Path(cfg.output_dir)
    world = json.loads((out / "world" / "world.json").read_text())
    curve = rl_curve(out / "rl" / "metrics.jsonl")
    plot_reward({"simulated + curriculum": curve}, out / "reward.png")
    plot_em([(r["label"], 100 * r["average"]["em"]) for r in reports], out / "em.png")
    pred_dirs = [out / "eval" / n for n in names]
    sim_stats = out / "sim" / "sft" / "stats.json"
    warm = (f"{cfg.warmup.steps} supervised steps of {cfg.warmup.batch_size} well-formed traces "
            "(question as query, real BM25 documents, gold answer) before RL"
            if cfg.warmup.steps > 0 else "none")
    lines = [
        "# ZeroSearch quickstart report", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} / {platform.node() or 'this machine'} "
        f"with `{cfg.policy}`. Every number below was measured by this run; rerun "
        "`zerosearch quickstart` to reproduce (stages whose outputs exist are skipped).", "",
        "## Mini-world", "",
        f"{world['counts']['passages']} passages about {world['counts']['entities']} fictional entities; "
        f"{world['counts']['train']} training and {world['counts']['test']} held-out questions "
        f"(seed {cfg.world.seed}).", "",
        "## Stages (wall time, seconds)", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in stages.items()],
        f"| **total** | **{sum(stages.values()):.0f}** |", "",
        "## Training", "",
        *([f"- Branched from `{cfg.start_from}`: its world, simulator, warm-up and baseline evaluations "
           "were reused, and the stage times above up to the warm-up are that run's (the total adds "
           "them); RL and the trained agent's evaluation ran here."]
          if getattr(cfg, "start_from", None) else []),
        f"- Simulator: `{cfg.simulator_base}` fine-tuned for {cfg.sim.tune.max_steps} steps on "
        f"{cfg.sim.questions} questions' BM25 results"
        + _sft_summary(sim_stats) + ".",
        _fidelity_line(out / "sim" / "fidelity" / "fidelity.json"),
        f"- Format warm-up: {warm}.",
        f"- RL: {cfg.rl.algorithm.name.upper()}, {cfg.rl.training.max_steps} steps x "
        f"{cfg.rl.training.prompts_per_step} questions x {cfg.rl.algorithm.num_generations} rollouts, "
        f"{cfg.rl.algorithm.reward.upper()} reward, against the fine-tuned *simulated* engine; "
        f"noise probability {cfg.rl.curriculum.p_start} -> {cfg.rl.curriculum.p_end} "
        f"(base {cfg.rl.curriculum.base})"
        + (f"; questions in stratified order by `{cfg.rl.stratify_by}` (each step holds at least its "
           "share of each group; steps with different mixes compare by the reward per group below)"
           if cfg.rl.stratify_by else "; questions shuffled")
        + (f"; a step in which no question's rollouts differ in reward draws fresh questions, up "
           f"to {cfg.rl.algorithm.resample_rounds} times." if cfg.rl.algorithm.resample_rounds else "."), "",
        "![reward and noise probability per step](reward.png)", "",
        *_curve_table(curve, reward_by_group(out / "rl" / "rollouts.jsonl", train_hops(out / "world"))), "",
        *_signal_line(out / "rl" / "rollouts.jsonl", cfg.rl.algorithm.name),
        f"## Held-out evaluation ({cfg.eval_questions} {cfg.eval_split} questions, real BM25 engine, greedy)", "",
        method_table(reports, out / "world" / f"{cfg.eval_split}.jsonl", pred_dirs), "",
        "![strict EM per method](em.png)", "",
    ]
    trace = example_trace(pred_dirs[-1])
    if trace:
        lines += ["## Example trace (ZeroSearch-trained agent, held-out question)", "", "```text",
                  trace.strip(), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
