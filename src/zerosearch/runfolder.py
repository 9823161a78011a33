"""Run-folder plumbing shared by RL training and simulator SFT: every log record appended to
``metrics.jsonl`` as it is logged, and the newest ``checkpoint-N`` to resume from (or an error that
names the folder)."""

from __future__ import annotations

import json
import math
import os
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


def last_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-N`` in ``output_dir``, or a clear error."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not found:
        raise ConfigError(f"--resume: no checkpoint-N folder in {output_dir}")
    return found
