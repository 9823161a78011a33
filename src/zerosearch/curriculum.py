"""The noise curriculum: how likely a simulated search is to return noisy documents at a step.

``p(i) = p_start + (base**(i/m) - 1) / (base - 1) * (p_end - p_start)`` for step ``i`` of ``m``.
The paper uses ``base = 4``: noise rises slowly first and faster near the end. Unlike the public
code, the base is a parameter and a missing or zero total is a clear error, not a crash mid-run.

Two ablations replace the schedule: ``enabled: false`` holds ``p_start`` for the whole run (fixed
noise), ``random: true`` draws each step's probability uniformly from ``[p_start, p_end]`` (random
noise: the same range as the curriculum, no easy-to-hard order).
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass


@dataclass
class CurriculumConfig:
    """Noise schedule of the simulated engine during training."""

    p_start: float = 0.0
    """Noise probability at step 0 (paper: 0 to 0.25)."""
    p_end: float = 0.5
    """Noise probability at the last step (paper: 0.5 to 0.75)."""
    base: float = 4.0
    """Exponential base ``b``; larger values keep noise low for longer. ``b = 1`` means linear."""
    enabled: bool = True
    """False holds the noise probability at ``p_start`` for the whole run (the no-curriculum ablation)."""
    random: bool = False
    """Draw each step's noise probability uniformly from ``[p_start, p_end]`` instead of following the
    schedule (the random-noise ablation). The draw depends only on (``seed``, step), so a resumed run
    and a rerun repeat it."""
    seed: int = 0
    """Seed of the ``random`` draws (set it with the training seed to vary them between runs)."""

    def __post_init__(self) -> None:
        for name in ("p_start", "p_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"curriculum.{name} must be in [0, 1], got {value}")
        if self.base <= 0:
            raise ValueError(f"curriculum.base must be > 0, got {self.base}")

    def at(self, step: int, total_steps: int | None) -> float:
        """Noise probability at ``step`` (0-based) of a run of ``total_steps`` steps."""
        if not self.enabled:
            return self.p_start
        if self.random:
            if not total_steps or total_steps <= 0:
                raise ValueError(f"the curriculum needs the run's total number of steps (> 0), got "
                                 f"{total_steps!r}; set max_steps")
            low, high = sorted((self.p_start, self.p_end))
            return _random.Random(self.seed * 1_000_003 + step).uniform(low, high)
        return noise_probability(step, total_steps, self.p_start, self.p_end, self.base)


def noise_probability(step: int, total_steps: int | None, p_start: float, p_end: float,
                      base: float = 4.0) -> float:
    """The schedule itself; ``step`` is clamped to ``[0, total_steps]``."""
    if not total_steps or total_steps <= 0:
        raise ValueError(
            f"the curriculum needs the run's total number of steps (> 0), got {total_steps!r}; "
            "set max_steps")
    frac = min(max(step, 0), total_steps) / total_steps
    ramp = frac if abs(base - 1.0) < 1e-12 else (base**frac - 1.0) / (base - 1.0)
    return p_start + ramp * (p_end - p_start)
