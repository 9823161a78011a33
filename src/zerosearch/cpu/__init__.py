"""CPU and virtual-machine tuning, in one place and opt-in.

- :mod:`zerosearch.cpu.memory`: glibc's malloc keeps freed memory, and a training callback hands it
  back when the machine runs short (process-wide state: only where a run sets ``cpu_tuning``, as
  the CPU preset and the quickstart do);
- :mod:`zerosearch.cpu.decode_step`: one decoding step written out on oneDNN's packed bf16
  weights (a kernel choice: CPUs with native bf16 only).

Whether any of it applies is decided by :func:`zerosearch.hardware.runtime_choices`; nothing here
runs on a GPU.
"""

from __future__ import annotations


def tune_process(choices, log=print) -> list:
    """Apply the process-wide CPU tuning that ``choices`` (a
    :class:`zerosearch.hardware.RuntimeChoices`) asks for; return the trainer callbacks it needs
    (the memory cap). Does nothing, and returns ``[]``, on a GPU or without ``cpu_tuning``."""
    from zerosearch.cpu import memory

    callbacks = []
    if choices.keep_freed_memory and memory.keep_freed_memory():
        log("cpu tuning: malloc keeps freed memory for reuse (zerosearch.cpu.memory)")
    if choices.memory_cap:
        callbacks.append(memory.memory_cap_callback())
    return callbacks
