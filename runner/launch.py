"""`divrun` in subprocesses, each into a run folder chosen in advance: what divrun-table and divrun-tune run on.

`parallel_slots(jobs, devices)` are the parallel places to run in (an environment each): one per GPU id in `devices`
(CUDA_VISIBLE_DEVICES), else `jobs` slots sharing the CPU cores (OMP_NUM_THREADS), as the gpus launcher does.
`run(overrides, run_dir, slot, log_name)` runs one job there, its output in `<run_dir>/<log_name>`, and returns
the status its summary.json ends with. `watch` is called about once a second while it runs; returning a reason
stops the job (SIGTERM: it checkpoints and exits 75) and the status becomes `stopped` with that reason.

A job dies with the process that started it (Linux: PR_SET_PDEATHSIG, set by the child itself when
DIVRUN_PARENT_PID is in its environment), so killing divrun-tune or divrun-table, even with kill -9, leaves
no orphan training on into a folder that a resumed command will use again: it gets SIGTERM, saves a
checkpoint and stops.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from runner.run_folder import Status, read_summary
from runner.tables.overrides import quote

PARENT_ENV = "DIVRUN_PARENT_PID"
PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (CUDA_VISIBLE_DEVICES, else every device); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] or \
        [str(i) for i in range(torch.cuda.device_count())]


def parallel_slots(jobs: int = 1, devices: list[str] | None = None) -> list[dict[str, str]]:
    """The environment of each parallel slot: one per GPU id in `devices`, else `jobs` CPU slots."""
    count = len(devices) if devices else max(1, jobs)
    threads = {"OMP_NUM_THREADS": str(max(1, cpu_count() // count))} if count > 1 else {}
    if devices:
        return [{"CUDA_VISIBLE_DEVICES": str(device), **threads} for device in devices]
    return [dict(threads) for _ in range(count)]


def command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "runner.cli", *overrides, f"hydra.run.dir={quote(str(run_dir))}",
            "logger.progress=false"]


def last_error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()[:300]


def run(overrides: list[str], run_dir: Path, slot: dict[str, str] | None = None, log_name: str = "divrun.log",
        env: dict[str, str] | None = None, watch: Callable[[subprocess.Popen], str | None] | None = None,
        started: Callable[[subprocess.Popen], None] | None = None) -> tuple[str, str]:
    """Run `divrun OVERRIDES` into `run_dir`; (status, detail) from its summary.json when it ends."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = command(overrides, run_dir)
    environment = {**os.environ, **(env or {}), **(slot or {}), PARENT_ENV: str(os.getpid())}
    stopped = None
    with open(run_dir / log_name, "a") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
        if started:
            started(process)
        while process.poll() is None:
            try:
                process.wait(POLL_S)
            except subprocess.TimeoutExpired:
                stopped = stopped or (watch(process) if watch else None)
                if stopped:
                    process.send_signal(signal.SIGTERM)
                    process.wait()
    if stopped:
        return "stopped", stopped
    summary = read_summary(run_dir) or {}
    status = summary.get("status", Status.FAILED)
    if status == Status.RUNNING:  # killed before it could write its final status
        return Status.FAILED.value, last_error_line(run_dir / log_name)
    return status, summary.get("error", "") or ("" if summary else last_error_line(run_dir / log_name))


def die_with_parent() -> None:
    """In a job started by `run`: get SIGTERM when the starting process dies (Linux), and stop now if it
    already has."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_exit(pid: int | None, timeout: float = 120.0) -> None:
    """Wait until process `pid` of this machine has gone (a job finishing its last checkpoint), then kill it."""
    deadline = time.time() + timeout
    while alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
