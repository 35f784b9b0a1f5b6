"""`hydra/launcher=gpus`: a sweep's jobs run in parallel on one machine, one job per free GPU (or per group
of `gpus_per_job` GPUs, given to the job through CUDA_VISIBLE_DEVICES), the rest queued until a slot frees.
On a machine without CUDA, `cpu_jobs` jobs run at once, sharing the cores (OMP_NUM_THREADS).

A Hydra launcher plugin for any Hydra app: its config is `config.py`'s GpusLauncherConf in Hydra's
ConfigStore. Each job runs in a fresh process started with `spawn`, so its GPU choice is set before torch
sees CUDA. The task function, Hydra's context (config loader, callbacks) and singletons (resolvers included)
travel to it with cloudpickle, as Hydra's joblib launcher sends them through loky: a closure, a callable
object or a function of `__main__` runs as well as a module's function, and a resolver registered at run
time resolves in the job. The job's JobReturn comes back the same way (a return value that cannot be pickled
comes back as a RuntimeError holding its repr). Each job's sweep config is composed here, when its slot frees
(a bad override fails the sweep here, as with Hydra's basic launcher), and the sweep's folder names are
resolved once (divrun's `divrun_uid` resolver is cached and Hydra copies the cache into every job's config):
parallel jobs never collide on folders; a job with several processes gets its own torchrun rendezvous on a
port torch binds.
"""
from __future__ import annotations

import copy
import logging
import multiprocessing
import os
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Sequence

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

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
        shared = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))
        queue, running, returns = deque(enumerate(job_overrides, initial_job_idx)), {}, {}
        context = multiprocessing.get_context("spawn")
        while queue or running:
            while queue and free:
                idx, overrides = queue.popleft()
                slot = free.pop(0)
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}  "
                         f"[{' '.join(f'{k}={v}' for k, v in slot.items())}]")
                running[start(context, idx, list(overrides), self.sweep_config(idx, overrides), slot, shared)] = slot
            for connection in wait(list(running)):
                free.append(running.pop(connection))
                returns[connection.idx] = collect(connection)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[idx] for idx in sorted(returns)]

    def sweep_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return sweep_config


def start(context, idx: int, overrides: list[str], sweep_config: DictConfig, slot: dict[str, str], shared: bytes):
    """Start job `idx` in a fresh process holding `slot`; returns the end of the pipe its result comes on."""
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=run_in_slot, daemon=False, name=f"gpus-launcher-job-{idx}",
                              args=(sender, slot, shared, cloudpickle.dumps(sweep_config)))
    process.start()
    sender.close()  # the child holds the only sending end: its exit reads as EOF here
    receiver.process, receiver.idx, receiver.overrides, receiver.sweep_config = process, idx, overrides, sweep_config
    return receiver


def collect(connection) -> JobReturn:
    """The job's JobReturn, or a FAILED one if its process died without sending it (killed, out of memory)."""
    try:
        result = cloudpickle.loads(connection.recv_bytes())
    except EOFError:
        connection.process.join()
        config = connection.sweep_config
        task_config = copy.deepcopy(config)
        with open_dict(task_config):
            del task_config["hydra"]
        result = JobReturn(overrides=connection.overrides, cfg=task_config, hydra_cfg=config, working_dir=None,
                           task_name=config.hydra.job.name, status=JobStatus.FAILED,
                           _return_value=RuntimeError(f"job #{connection.idx} died with exit code "
                                                      f"{connection.process.exitcode}"))
    connection.process.join()
    connection.close()
    return result


def slots(gpus, gpus_per_job: int, cpu_jobs) -> list[dict[str, str]]:
    """The environment of each parallel slot: a GPU group, or a share of the CPU cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    visible = visible_gpus()
    if visible:
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


def visible_gpus() -> list[str]:
    """The GPUs CUDA may use here: CUDA_VISIBLE_DEVICES's list, else every device torch counts. Where it hides
    them all ("" or -1), torch (seconds to import, in a small app) is not asked."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip() in ("", "-1"):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [g for g in (listed or "").split(",") if g] or [str(i) for i in range(torch.cuda.device_count())]


def run_in_slot(sender, slot: dict[str, str], shared: bytes, sweep_config: bytes) -> None:
    """The child: take the slot's devices (before anything imports torch), run the Hydra job, send its result."""
    os.environ.update(slot)
    hydra_context, task_function, singletons = cloudpickle.loads(shared)
    setup_globals()
    Singleton.set_state(singletons)  # after the imports above: the parent's resolvers win over re-registered ones
    result = run_job(hydra_context=hydra_context, task_function=task_function, config=cloudpickle.loads(sweep_config),
                     job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    try:
        payload = cloudpickle.dumps(result)
    except Exception:  # noqa: BLE001 - an unpicklable return value must not lose the job's status
        result._return_value = RuntimeError(repr(result._return_value))
        payload = cloudpickle.dumps(result)
    sender.send_bytes(payload)
