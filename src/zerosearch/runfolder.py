"""Run-folder plumbing shared by RL training and simulator SFT: every log record appended to
``metrics.jsonl`` as it is logged; checkpoints written to a staging folder and renamed into place
(:class:`AtomicCheckpoints`), so a kill mid-save never leaves a half ``checkpoint-N``; and the newest
complete ``checkpoint-N`` to resume from (an incomplete newer one is skipped with a warning; a
corrupt file is an error that names it), with ``metrics.jsonl`` and ``rollouts*.jsonl`` cut back to
that step so a resumed run logs each step once."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from zerosearch.config import ConfigError


class MetricsCallback(TrainerCallback):
    """Appends every log record to ``metrics.jsonl`` (NaN as null), splits step time when a
    ``timer`` is set (RL), and drives the progress display."""

    def __init__(self, path: Path, on_progress: Callable[[int, int, dict], None] | None = None):
        self.path, self.on_progress, self.timer = path, on_progress, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.timer:
            self.timer.on_step_begin()

    def on_step_end(self, args, state, control, **kwargs):
        if self.timer:
            self.timer.on_step_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                 for k, v in logs.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_progress:
            self.on_progress(state.global_step, state.max_steps, record)


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin")
STAGING = ".staging"
"""Sub-folder of the run folder where a checkpoint is written before it is renamed into place."""


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "truncated (its header runs past the end of the file)"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "its safetensors header is not JSON"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end != size:
        return f"truncated ({size} bytes; its header describes {8 + length + end})"
    return None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from (naming the file), or None when it looks complete:
    trainer_state.json readable, the weights present, and no truncated safetensors / torch file."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return f"{state} is missing (the save did not finish)"
    try:
        step = json.loads(state.read_text())["global_step"]
        if not isinstance(step, int):
            raise ValueError("global_step is not an integer")
    except (ValueError, KeyError, TypeError) as err:
        return f"{state} is not a trainer state ({err})"
    if not any((folder / name).is_file() for name in _WEIGHTS):
        return f"{folder} holds no model weights ({' / '.join(_WEIGHTS)})"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        problem = None
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut one has no directory
                problem = "truncated or not a torch file"
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except ValueError:
                problem = "not valid JSON"
        if problem:
            return f"{path} is {problem}" if problem.startswith("not") else f"{path}: {problem}"
    return None


def checkpoint_step(folder: str | Path) -> int:
    """The global step a (complete) checkpoint was saved at."""
    return json.loads((Path(folder) / "trainer_state.json").read_text())["global_step"]


def last_checkpoint(output_dir: str, log: Callable[[str], None] | None = None) -> str:
    """The newest complete ``checkpoint-N`` in ``output_dir``; a newer incomplete one is skipped
    with a warning through ``log``. Raises a one-line :class:`ConfigError` naming the folder when
    there is no checkpoint, or naming the broken file when none is complete."""
    folder = Path(output_dir)
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir()
                    and (m := _CHECKPOINT.match(p.name))), reverse=True) if folder.is_dir() else []
    if not found:
        raise ConfigError(f"--resume: no checkpoint-N folder in {output_dir}")
    problems = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            for skipped in problems:
                (log or print)(f"warning: skipping an incomplete checkpoint: {skipped}; "
                               f"resuming from {path}")
            return str(path)
        problems.append(problem)
    raise ConfigError(f"--resume: no complete checkpoint in {output_dir}: {problems[0]}")


RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
"""Where launchers put a process's global rank (torchrun / accelerate, Open MPI, Intel MPI / MPICH,
MVAPICH), read before accelerate has set up the process group."""


def process_rank() -> int:
    """This process's global rank as its launcher set it; 0 for a process launched alone."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


def prepare_resume(output_dir: str, log: Callable[[str], None] | None = None) -> str:
    """The checkpoint to resume from (:func:`last_checkpoint`), with ``metrics.jsonl`` and the
    rollout logs (``rollouts*.jsonl``) cut back to its step, so the steps after it (logged before
    the kill, logged again now) appear once.

    In a launched process group only rank 0 cuts the logs (every rank rewriting the same files
    raced: one rank's rename found the other's temporary file gone). That is safe because only
    rank 0 writes ``metrics.jsonl``, and another rank first appends to its own rollout log inside
    training, after collectives (the model's wrapping, the first step) that wait for rank 0, which
    joins them only after its cut."""
    from zerosearch.jsonl import keep_until

    checkpoint = last_checkpoint(output_dir, log)
    if process_rank() != 0:
        return checkpoint
    for path in [Path(output_dir) / "metrics.jsonl", *sorted(Path(output_dir).glob("rollouts*.jsonl"))]:
        if path.exists():
            dropped = keep_until(path, checkpoint_step(checkpoint))
            if dropped and log:
                log(f"{path.name}: {dropped} rows after {Path(checkpoint).name} dropped (the resumed "
                    "run logs those steps again)")
    return checkpoint


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is written under ``<output_dir>/.staging/`` and renamed to
    ``<output_dir>/checkpoint-N`` only once every file is on disk, so a kill during a save leaves
    the previous checkpoints untouched and no partial ``checkpoint-N``. Subclasses that save more
    into a checkpoint override :meth:`save_checkpoint_extras` (called before the rename)."""

    _staging_save = False

    def _get_output_dir(self, trial):
        real = super()._get_output_dir(trial)
        return os.path.join(real, STAGING) if self._staging_save else real

    def save_checkpoint_extras(self, folder: str) -> None:
        """Write extra files into the staged checkpoint ``folder`` (nothing by default)."""

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        real = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = os.path.join(real, STAGING, name), os.path.join(real, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left by a save that was killed
        self._staging_save = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_save = False
        if self.args.should_save:
            self.save_checkpoint_extras(staged)
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staged, final)
        fd = os.open(real, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable before training goes on
        finally:
            os.close(fd)
        if self.state.best_model_checkpoint and STAGING in self.state.best_model_checkpoint:
            self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(
                os.sep + STAGING, "")
        rotate_checkpoints(output_dir=real, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
