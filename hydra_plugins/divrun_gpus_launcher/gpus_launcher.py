"""`hydra/launcher=gpus`: a sweep's jobs run in parallel on one machine, one job per free GPU (or per group
of `gpus_per_job` GPUs, given to the job through CUDA_VISIBLE_DEVICES), the rest queued until a slot frees.
On a machine without CUDA, `cpu_jobs` jobs run at once, sharing the cores (OMP_NUM_THREADS).

Each job runs in a fresh process started with `spawn`, so its GPU choice is set before torch sees CUDA; the
sweep's folder names are resolved once (divrun's `divrun_uid` resolver is cached and Hydra copies the cache
into every job's config), so parallel jobs never collide on folders; a job with several processes gets its
own torchrun rendezvous on a port torch binds itself.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict
from omegaconf.basecontainer import BaseContainer

from runner.errors import ConfigError

log = logging.getLogger(__name__)


class GpusLauncher(Launcher):
    def __init__(self, gpus="auto", gpus_per_job: int = 1, cpu_jobs="auto") -> None:
        self.gpus, self.gpus_per_job, self.cpu_jobs = gpus, int(gpus_per_job), cpu_jobs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        free = slots(self.gpus, self.gpus_per_job, self.cpu_jobs)
        log.info(f"Launching {len(job_overrides)} jobs, {len(free)} at a time")
        queue = deque(enumerate(job_overrides, initial_job_idx))
        running, returns = {}, {}
        context = multiprocessing.get_context("spawn")
        while queue or running:
            while queue and free:
                idx, overrides = queue.popleft()
                slot = free.pop(0)
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}  "
                         f"[{' '.join(f'{k}={v}' for k, v in slot.items())}]")
                running[self.start(context, idx, list(overrides), slot)] = (idx, slot)
            for connection in wait(list(running)):
                idx, slot = running.pop(connection)
                returns[idx] = self.collect(connection, idx)
                free.append(slot)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[idx] for idx in sorted(returns)]

    def start(self, context, idx: int, overrides: list[str], slot: dict[str, str]):
        """Start job `idx` in a fresh process holding `slot`; returns the end of the pipe its result comes on."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        receiver, sender = context.Pipe(duplex=False)
        task = (self.task_function.__module__, self.task_function.__qualname__)
        process = context.Process(target=run_in_slot, daemon=False, name=f"divrun-job-{idx}",
                                  args=(sender, slot, self.hydra_context, task, sweep_config,
                                        Singleton.get_state()["instances"]))
        process.start()
        sender.close()  # the child holds the only sending end: its exit reads as EOF here
        receiver.process, receiver.overrides, receiver.sweep_config = process, overrides, sweep_config
        return receiver

    @staticmethod
    def collect(connection, idx: int) -> JobReturn:
        """The job's JobReturn, rebuilt here from the plain values the child sent (Hydra's own configs
        do not pickle across processes)."""
        try:
            status, value, working_dir = connection.recv()
        except EOFError:  # the process died without a result (killed, out of memory)
            connection.process.join()
            status, value, working_dir = "FAILED", RuntimeError(
                f"job #{idx} died with exit code {connection.process.exitcode}"), None
        connection.process.join()
        connection.close()
        config = connection.sweep_config
        return JobReturn(overrides=connection.overrides, cfg=config, hydra_cfg=config, working_dir=working_dir,
                         task_name=config.hydra.job.name, status=JobStatus[status], _return_value=value)


def slots(gpus, gpus_per_job: int, cpu_jobs) -> list[dict[str, str]]:
    """The environment of each parallel slot: a GPU group, or a share of the CPU cores."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.cuda.is_available():
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g] or \
            [str(i) for i in range(torch.cuda.device_count())]
        ids = visible if gpus == "auto" else [str(g) for g in gpus]
        groups = [ids[i:i + gpus_per_job] for i in range(0, len(ids) - gpus_per_job + 1, gpus_per_job)]
        if not groups or gpus_per_job < 1:
            raise ConfigError(f"hydra.launcher.gpus_per_job={gpus_per_job}: {len(ids)} GPUs ({','.join(ids)}) "
                             f"cannot hold one job; lower hydra.launcher.gpus_per_job")
        threads = str(max(1, cores // len(groups)))
        return [{"CUDA_VISIBLE_DEVICES": ",".join(group), "OMP_NUM_THREADS": threads} for group in groups]
    count = cores if cpu_jobs == "auto" else int(cpu_jobs)
    if count < 1:
        raise ConfigError(f"hydra.launcher.cpu_jobs={cpu_jobs}: use auto or a positive number of parallel jobs")
    return [{"OMP_NUM_THREADS": str(max(1, cores // count))} for _ in range(count)]


def run_in_slot(sender, slot: dict[str, str], hydra_context: HydraContext, task: tuple[str, str],
                sweep_config: DictConfig, singletons: dict) -> None:
    """The child: take the slot's devices (before torch is imported), run the Hydra job, send its result."""
    os.environ.update(slot)
    module, name = task
    task_function = getattr(importlib.import_module(module), name)  # registers the task's resolvers
    task_function = getattr(task_function, "__wrapped__", task_function)  # @hydra.main's wrapper -> the task
    setup_globals()
    # the parent's singletons; resolvers are functions (not picklable): the imports above registered them
    Singleton.set_state({"instances": singletons, "omegaconf_resolvers": BaseContainer._resolvers})
    result = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                     job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    value = result._return_value
    try:
        sender.send((result.status.name, value, result.working_dir))
    except Exception:  # noqa: BLE001 - an unpicklable value (an exotic exception) must not lose the job's status
        sender.send((result.status.name, RuntimeError(repr(value)), result.working_dir))
