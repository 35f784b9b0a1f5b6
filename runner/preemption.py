"""Preemption: SIGTERM (SLURM at a time limit or preemption, Kubernetes, `kill`) and SIGUSR1 (SLURM's early
warning, `sbatch --signal=USR1@120`) ask a run to save a checkpoint at the next step boundary and exit with
REQUEUE_EXIT_CODE, which a SLURM script or launcher turns into `scontrol requeue`.

The handler only sets a flag: the loop reads it once per step (a Python attribute, no device sync), so a
signal never interrupts a half-done optimizer step or checkpoint write. Under DDP the ranks agree on the step
at which they stop (`Trainer.preemption_agreed`).
"""
from __future__ import annotations

import signal
import threading

from runner.run_folder import Status

REQUEUE_EXIT_CODE = Status.PREEMPTED.exit_code  # EX_TEMPFAIL (sysexits.h): "a temporary failure; retry"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by the loop after the checkpoint that a preemption signal asked for has been written."""
    status = Status.PREEMPTED

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"{signal_name} received: saved a checkpoint at step {step} and stopped; "
                         f"exit code {REQUEUE_EXIT_CODE} asks SLURM to requeue the job")
        self.signal_name, self.step = signal_name, step


class PreemptionWatch:
    """Context manager: while active, SIGTERM/SIGUSR1 set `requested` instead of killing the process."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
