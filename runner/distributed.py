"""Several processes for one run: how many, starting them with torch's elastic launcher, the process group
inside each, and the reductions the train loop needs.

One run is one folder. `divrun` composes the config once and saves it there; when the run asks for more than
one process and this process is not a torchrun worker already, `launch` runs torchrun (torch.distributed.run)
in this process, and its workers (`python -m runner.worker <run dir>`) read the saved config: Hydra never
runs per rank. Every worker trains; rank 0 alone writes the folder and talks on the console.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from runner.errors import ConfigError, WorkersFailed

# Signals the torchrun agent passes on to its workers, which run in their own sessions: Ctrl-C, SLURM's
# SIGTERM, and SIGUSR1/SIGUSR2, the "checkpoint now, this job is about to be preempted" signals.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
SLURM_PORT_BASE = 15000  # multi-node SLURM jobs agree on a port derived from the job id


# ---- how many processes (in the divrun process, before anything starts) -------------------------------
def in_worker() -> bool:
    """True inside a process started by torchrun (it sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def uses_cuda(trainer: DictConfig) -> bool:
    return str(trainer.device) != "cpu" and torch.cuda.is_available()


def processes_per_node(trainer: DictConfig) -> int:
    """`trainer.devices`: auto is every visible GPU (1 on a CPU machine); N is N GPUs, or N gloo processes
    on the CPU (useful to test multi-process code anywhere)."""
    cuda = uses_cuda(trainer)
    if trainer.devices == "auto":
        count = torch.cuda.device_count() if cuda else 1
    else:
        count = int(trainer.devices)  # auto or a positive integer: runner/validate.py
        if cuda and count > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={count}: only {torch.cuda.device_count()} GPUs are visible; "
                              f"lower trainer.devices or use trainer.devices=auto")
    if count > 1 and ":" in str(trainer.device):
        raise ConfigError(f"trainer.device={trainer.device} pins one GPU but trainer.devices={count}; use "
                          f"trainer.device=auto (pick GPUs with CUDA_VISIBLE_DEVICES)")
    return count


def requested_world_size(trainer: DictConfig) -> int:
    return int(trainer.nnodes) * processes_per_node(trainer)


def should_launch(trainer: DictConfig) -> bool:
    return not in_worker() and requested_world_size(trainer) > 1


# ---- torchrun -------------------------------------------------------------------------------------------
def torchrun_args(trainer: DictConfig, run_dir: Path, environ=os.environ) -> list[str]:
    """torchrun's command line for this run: single node on a fresh port that torch binds itself
    (--standalone: port 0, so parallel jobs never collide), or static rendezvous at node 0's endpoint."""
    nnodes = int(trainer.nnodes)
    args = [f"--nproc-per-node={processes_per_node(trainer)}", f"--nnodes={nnodes}", "--max-restarts=0",
            f"--signals-to-handle={','.join(s.name for s in FORWARDED)}"]
    if nnodes == 1:
        args.append("--standalone")
    else:
        host, port = rendezvous_endpoint(trainer, environ)
        args += [f"--node-rank={node_rank(trainer, environ)}", f"--master-addr={host}", f"--master-port={port}"]
    return args + ["-m", "runner.worker", str(run_dir)]


def is_first_node(trainer: DictConfig) -> bool:
    return int(trainer.nnodes) == 1 or node_rank(trainer) == 0


def node_rank(trainer: DictConfig, environ=os.environ) -> int:
    if trainer.node_rank != "auto":
        rank = int(trainer.node_rank)
    elif "SLURM_NODEID" in environ:
        rank = int(environ["SLURM_NODEID"])
    else:
        raise ConfigError("trainer.node_rank: multi-node runs need this node's rank (0 .. nnodes-1) outside SLURM; "
                          "pass trainer.node_rank=<rank> on every node")
    if not 0 <= rank < int(trainer.nnodes):
        raise ConfigError(f"trainer.node_rank={rank}: must be in 0 .. trainer.nnodes-1 = {int(trainer.nnodes) - 1}")
    return rank


def rendezvous_endpoint(trainer: DictConfig, environ=os.environ) -> tuple[str, int]:
    """Node 0's host:port; under SLURM the job's first node and a port derived from the job id."""
    if trainer.rdzv_endpoint != "auto":
        host, _, port = str(trainer.rdzv_endpoint).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"trainer.rdzv_endpoint={trainer.rdzv_endpoint}: give node 0 as host:port")
        return host, int(port)
    if "SLURM_JOB_NODELIST" in environ and "SLURM_JOB_ID" in environ:
        return slurm_first_host(environ["SLURM_JOB_NODELIST"]), SLURM_PORT_BASE + int(environ["SLURM_JOB_ID"]) % 20000
    raise ConfigError("trainer.rdzv_endpoint: multi-node runs outside SLURM need node 0's address; pass "
                      "trainer.rdzv_endpoint=<host>:<free port> on every node")


def slurm_first_host(nodelist: str) -> str:
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def launch(trainer: DictConfig, run_dir: Path) -> None:
    """Run the workers of `run_dir` through torch.distributed.run, in this process, until they all end."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from runner.data.loaders import cpu_count

    cores = int(os.environ.get("OMP_NUM_THREADS") or cpu_count())  # a gpus-launcher slot sets its share
    stopped_by = None
    with restored_process_state() as handlers:
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // processes_per_node(trainer)))
        logging.disable(logging.ERROR)  # the agent's own lines; workers print their errors, divrun says which
        try:
            torchrun.run(torchrun.parse_args(torchrun_args(trainer, run_dir)))
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            raise WorkersFailed(rank, failure.exitcode) from None
        except SignalException as error:
            stopped_by = signal.Signals(error.sigval)
    if stopped_by is not None:
        # the workers got the signal and have ended; now whoever was listening here before torchrun gets it
        # too (submitit's preemption handler requeues the job, which resumes this folder)
        previous = handlers[stopped_by]
        if callable(previous):
            previous(stopped_by, None)
        raise KeyboardInterrupt(f"stopped by {stopped_by.name}; the workers were passed the signal")


@contextmanager
def restored_process_state():
    """torchrun's agent installs signal handlers and sets env variables for its workers: undo both when it
    returns, so the next job of a sweep (and Ctrl-C) behave as before."""
    handlers = {sig: signal.getsignal(sig) for sig in FORWARDED}
    environ = dict(os.environ)
    try:
        yield handlers
    finally:
        logging.disable(logging.NOTSET)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.environ.clear()
        os.environ.update(environ)


# ---- inside a worker ------------------------------------------------------------------------------------
@contextmanager
def process_group(trainer: DictConfig):
    """Join the torchrun job's process group (NCCL on CUDA, gloo on the CPU); leave it at the end."""
    cuda = uses_cuda(trainer)
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the parameters' gradients over the ranks in one all-reduce (what DDP does on a synced backward;
    for steps whose backward passes all ran inside no_sync)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op on one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model on several processes; the model itself on one."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def convert_sync_bn(model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
    """BatchNorm statistics over the global batch instead of each rank's shard (before DDP and the optimizer)."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn and world_size() > 1 else model


def all_gather_equal(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of an equal-length tensor, concatenated in rank order on every rank (no host read: the
    training step's per-sample values; the training batch is the same size on every rank)."""
    if world_size() == 1:
        return tensor
    gathered = tensor.new_empty((world_size() * len(tensor), *tensor.shape[1:]))
    dist.all_gather_into_tensor(gathered, tensor.contiguous())
    return gathered


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks in place (a no-op on one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (shards may differ in length by a sample), concatenated in rank order on every rank."""
    if world_size() == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:len(tensor)] = tensor
    pieces = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:int(size.item())] for piece, size in zip(pieces, sizes)])
