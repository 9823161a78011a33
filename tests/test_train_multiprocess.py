"""Multi-process training on the CPU: ``zerosearch train`` under torchrun with 2 processes on gloo
and the tiny model (GRPO, REINFORCE++, PPO; 2 steps each; checkpoint and resume), the global batch
and the curriculum step agreeing across processes, and REINFORCE++/PPO whitening over the global
batch rather than each process's slice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zerosearch.curriculum import CurriculumConfig

pytestmark = pytest.mark.slow

QUESTIONS = {"Which city is the capital of Germany?": ["Berlin"],
             "Who wrote On the Origin of Species?": ["Charles Darwin"],
             "What is the highest mountain?": ["Mount Everest"],
             "Which river is the largest in South America?": ["Amazon"]}
PROMPTS, GENERATIONS, WORLD = 2, 2, 2


def _write_config(tmp_path: Path, algorithm: str) -> Path:
    qa = tmp_path / "train.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "golden_answers": a}) + "\n"
                          for i, (q, a) in enumerate(QUESTIONS.items())))
    cfg = {
        "model": {"name": "embedded:tiny-random"},
        "data": {"train": str(qa)},
        "engine": {"kind": "simulated", "model": "embedded:tiny-random", "max_new_tokens": 12,
                   "seed": 0, "topk": 2},
        "rollout": {"max_turns": 2, "max_turn_tokens": 16, "max_completion_tokens": 160,
                    "max_obs_tokens": 64},
        "curriculum": {"p_start": 0.0, "p_end": 0.5},
        "algorithm": {"name": algorithm, "num_generations": GENERATIONS},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2,
                     "prompts_per_step": PROMPTS, "micro_batch_size": 1, "save_steps": 1,
                     "report_to": [], "learning_rate": 1e-4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, *flags: str) -> None:
    """torchrun with 2 processes on this machine (gloo), bounded in time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "zerosearch.cli", "train", "--config", str(config), *flags],
        capture_output=True, text=True, env=env, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _free_port() -> int:
    from conftest import free_port

    return free_port()


def _process_logs(run: Path) -> dict[int, list[dict]]:
    logs = {}
    for rank in range(WORLD):
        with open(run / "processes" / f"rank-{rank}.jsonl") as f:
            logs[rank] = [json.loads(line) for line in f]
    return logs


def _check_steps_agree(logs: dict[int, list[dict]], steps: list[int]) -> None:
    schedule = CurriculumConfig(0.0, 0.5)
    for rank, records in logs.items():
        assert [r["step"] for r in records] == steps, rank
        assert all(r["processes"] == WORLD and r["process"] == rank for r in records)
    for i, step in enumerate(steps):
        by_rank = [logs[rank][i] for rank in range(WORLD)]
        # one curriculum position on every process: the same step, the same noise probability
        assert len({r["noise_prob"] for r in by_rank}) == 1
        assert by_rank[0]["noise_prob"] == pytest.approx(schedule.at(step, 2))
        # the slices make up the global batch: prompts_per_step groups of num_generations rollouts
        rows = [row for r in by_rank for row in r["rows"]]
        assert len(rows) == PROMPTS * GENERATIONS
        assert sorted(rows.count(q) for q in set(rows)) == [GENERATIONS] * PROMPTS
        assert by_rank[0]["seed"] != by_rank[1]["seed"]  # each process draws its own noise


@pytest.mark.parametrize("algorithm", ["grpo", "reinforce++", "ppo"])
def test_two_processes_train_checkpoint_and_resume(tmp_path, algorithm):
    config = _write_config(tmp_path, algorithm)
    run = tmp_path / "run"
    _launch(config)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"reward"' in line]
    assert steps == [1, 2]
    assert (run / "final" / "model.safetensors").exists()
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        state = json.loads((run / checkpoint / "trainer_state.json").read_text())
        assert state["global_step"] == int(checkpoint.split("-")[1])
        assert (run / checkpoint / "rng_state_1.pth").exists()  # each process's RNG is saved
        if algorithm == "ppo":
            assert (run / checkpoint / "value" / "model.safetensors").exists()
    first = _process_logs(run)
    _check_steps_agree(first, [0, 1])
    if algorithm == "grpo":
        return  # resume is shown once per token-level algorithm (it costs two more launches)

    # lose the last step, resume from checkpoint-1 in the same two-process setup
    shutil.rmtree(run / "checkpoint-2")
    shutil.rmtree(run / "final")
    _launch(config, "--resume")
    resumed = _process_logs(run)
    _check_steps_agree({r: recs[2:] for r, recs in resumed.items()}, [1])
    for rank in range(WORLD):  # step 2 redone with the same rows, seed and curriculum value
        assert resumed[rank][2] == first[rank][1]
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (run / "final" / "model.safetensors").exists()


def _whiten_in_process(rank: int, world: int, port: int, values, mask, out) -> None:
    import torch
    import torch.distributed as dist

    from zerosearch.train.advantages import masked_whiten

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)

    def all_sum(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    try:
        out[rank] = masked_whiten(values[rank], mask[rank], all_sum=all_sum).tolist()
    finally:
        dist.destroy_process_group()


def test_whitening_uses_the_statistics_of_every_process():
    """Two gloo processes whitening their own slices equal one process whitening the whole batch
    (and differ from each process whitening alone, which is what happened before)."""
    import torch
    import torch.multiprocessing as mp

    from zerosearch.train.advantages import masked_whiten

    torch.manual_seed(0)
    values = [torch.randn(3, 5), torch.randn(2, 5) + 3.0]  # slices with different means
    mask = [torch.ones(3, 5), torch.ones(2, 5)]
    mask[0][0, 3:] = 0
    mask[1][1, 1:] = 0
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_whiten_in_process, args=(2, _free_port(), values, mask, out), nprocs=2)
        got = [torch.tensor(out[0]), torch.tensor(out[1])]
    width = 5
    whole = masked_whiten(torch.cat(values), torch.cat(mask))
    torch.testing.assert_close(torch.cat(got), whole)
    alone = masked_whiten(values[1], mask[1])
    assert not torch.allclose(got[1], alone, atol=1e-3)
    assert whole.shape[1] == width
