"""Several processes per run (torchrun, DDP with gloo on the CPU), sweeps on top, and the `gpus` launcher."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, divrun, read_summary, run_folders
from runner import distributed
from runner.data.loaders import FolderLoader, TensorLoader
from runner.data.splits import TensorSplit
from runner.errors import ConfigError
from runner.preemption import REQUEUE_EXIT_CODE
from runner.run_folder import load_config
from runner.build import build_run
from runner.validate import problems_of

QUICK = ("model=mlp", "trainer.epochs=1", "logger.progress=false", "trainer.device=cpu")
RUN_FILES = {"lr_schedule.csv", "lr_schedule.png", "config.yaml", "meta.json", "summary.json", "metrics.jsonl", "grad_norms.csv", "checkpoints", ".hydra",
             "cli.log", "curves.png", "reliability.png"}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- sharding: every rank its own samples, the union the one-process epoch ------------------------------
def tiny_split(n: int) -> TensorSplit:
    return TensorSplit(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % 10)


def loader_indices(make, world_size: int, epoch: int = 3) -> list[list[torch.Tensor]]:
    """Per rank, the sample indices of each batch of `epoch`."""
    return [[index.cpu() for *_, index in make(rank, world_size).epoch(epoch)] for rank in range(world_size)]


@pytest.mark.parametrize("kind", ["tensor", "folder"])
def test_training_shards_deal_out_the_one_process_batches(kind):
    n, batch, world = 103, 8, 3
    if kind == "tensor":
        make = lambda rank, ws, b=batch: TensorLoader(tiny_split(n), b, torch.device("cpu"), (0.5,), (0.5,),
                                                      shuffle=True, drop_last=True, seed=7, rank=rank, world_size=ws)
    else:
        dataset = torch.utils.data.TensorDataset(torch.zeros(n, 1, 2, 2), torch.arange(n))
        make = lambda rank, ws, b=batch: FolderLoader(dataset, b, torch.device("cpu"), shuffle=True, drop_last=True,
                                                      seed=7, num_workers=0, rank=rank, world_size=ws)
    shards = loader_indices(make, world)
    [single] = loader_indices(lambda rank, ws: make(rank, ws, batch * world), 1)
    assert all(len(make(rank, world)) == len(single) == n // (batch * world) for rank in range(world))
    for step, global_batch in enumerate(single):
        parts = [shards[rank][step] for rank in range(world)]
        assert all(len(part) == batch for part in parts)
        assert torch.equal(torch.cat(parts), global_batch)  # rank r holds slice r of the global batch
    seen = torch.cat([i for rank in shards for i in rank])
    assert len(seen.unique()) == len(seen)  # no sample twice in an epoch


@pytest.mark.parametrize("world", [2, 3, 4])
def test_validation_shards_hold_every_sample_exactly_once(world):
    n = 359  # divisible by none of the world sizes: a padded sampler would repeat samples here
    make = lambda rank, ws: TensorLoader(tiny_split(n), 16, torch.device("cpu"), (0.5,), (0.5,), rank=rank, world_size=ws)
    seen = torch.cat([i for rank in loader_indices(make, world) for i in rank])
    assert sorted(seen.tolist()) == list(range(n))


# ---- the command: one run folder, rank 0 writes, 2 processes end where 1 process ends ---------------------
def test_two_gloo_processes_train_like_one_process_with_the_global_batch(tmp_path):
    """mlp (no BatchNorm): the mean loss over 2 shards of 32 has the gradient of the mean over the 64 samples,
    so DDP's averaged gradients equal one process's and the weights agree up to float summation order.
    (With BatchNorm each rank normalises by its own shard's statistics; trainer.sync_bn restores equality on
    CUDA.) 359 validation samples: 2 ranks evaluate 180 + 179."""
    common = (*QUICK, "dataset.limit_val=359", "seed=3")
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    divrun(*common, "trainer.devices=1", "trainer.batch_size=64", cwd=tmp_path / "one")
    result = divrun(*common, "trainer.devices=2", "trainer.batch_size=32", cwd=tmp_path / "two")
    [one], [two] = run_folders(tmp_path / "one"), run_folders(tmp_path / "two")
    assert {p.name for p in two.iterdir()} <= RUN_FILES  # one folder, no per-rank files
    assert len(list((tmp_path / "two").rglob("metrics.jsonl"))) == 1
    assert result.stderr.count("divrun: digits") == 1  # rank 1 is quiet
    assert "batch 32 per device x 2 processes = 64 global" in result.stderr.replace("\n", " ")
    summary = read_summary(two)
    assert summary["status"] == "finished" and summary["world_size"] == 2

    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (one, two)]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)
    train_one, train_two = ([r for r in records(run) if "train/loss" in r] for run in (one, two))
    assert [r["step"] for r in train_one] == [r["step"] for r in train_two]
    for a, b in zip(train_one, train_two):  # logged over the global batch on both
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)
        assert b["train/acc1"] == pytest.approx(a["train/acc1"])

    # the distributed evaluation equals a one-process evaluation of the same weights
    cfg = load_config(two)
    run = build_run(cfg)
    run.model.load_state_dict(weights[1])
    single = run.evaluate()
    logged = [r for r in records(two) if "val/acc1" in r][-1]
    assert logged["val/acc1"] == single["val/acc1"]
    assert logged["val/acc1"] * 359 == pytest.approx(round(logged["val/acc1"] * 359))  # counts over 359 samples
    assert logged["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6)
    assert logged["val/ece"] == pytest.approx(single["val/ece"], abs=1e-6)


def test_two_processes_accumulating_and_growing_the_batch_train_like_one_process(tmp_path):
    """DDP with accumulation (16 per micro-batch x 2 micro-batches x 2 ranks) takes the one-process step of 64.
    Under batch=adaptive the test steps keep every micro-batch local and average the gradients once: while the
    two runs' groups are the same samples (8 groups of 4 from a global 32), they propose the same batch at the
    same step; past it the batch's split into groups differs (100 = 8 x 12.5 on one process, 2 x 4 x 12.5 on two),
    and so do the estimates, a little."""
    common = (*QUICK, "seed=3", "trainer.log_every=2")
    adaptive = ("batch=adaptive", "batch.eta=0.5", "batch.max=512", "batch.micro=32", "trainer.epochs=2")
    for name, overrides in {"one": ["trainer.batch_size=64"],
                            "two": ["trainer.devices=2", "trainer.batch_size=16", "trainer.accumulate=2"],
                            "one_adaptive": ["trainer.batch_size=32", *adaptive],
                            "two_adaptive": ["trainer.devices=2", "trainer.batch_size=16", *adaptive]}.items():
        (tmp_path / name).mkdir()
        divrun(*common, *overrides, cwd=tmp_path / name)
    runs = {name: run_folders(tmp_path / name)[0] for name in ("one", "two", "one_adaptive", "two_adaptive")}
    weights = [torch.load(runs[n] / "checkpoints" / "last.pt", weights_only=True)["model"] for n in ("one", "two")]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6, msg=key)
    trained = {name: [r for r in records(runs[name]) if "train/batch_size" in r] for name in ("one_adaptive", "two_adaptive")}
    for one, two in zip(*(trained[name][:2] for name in trained)):
        assert (one["step"], one["train/batch_size"]) == (two["step"], two["train/batch_size"])
        assert one["train/loss"] == pytest.approx(two["train/loss"], rel=1e-5)
    assert trained["one_adaptive"][1]["train/batch_size"] > 32  # grown at the first logging boundary
    assert all(run[-1]["train/batch_size"] > 2 * run[1]["train/batch_size"] for run in trained.values())


def test_multirun_jobs_each_get_their_own_process_group(tmp_path):
    divrun("-m", "seed=0,1", "trainer.devices=2", *QUICK, cwd=tmp_path)
    runs = run_folders(tmp_path)
    assert len(runs) == 2
    assert all(read_summary(run)["status"] == "finished" and read_summary(run)["world_size"] == 2 for run in runs)


def test_gpus_launcher_runs_a_sweep_in_parallel_slots(tmp_path):
    """4 jobs, 2 slots on the CPU; the two 2-process jobs run side by side, each with its own rendezvous."""
    result = divrun("-m", "hydra/launcher=gpus", "hydra.launcher.cpu_jobs=2", "trainer.devices=1,2", "seed=0,1",
                    *QUICK, cwd=tmp_path)
    runs = run_folders(tmp_path)
    assert len(runs) == 4 and len({run.parent for run in runs}) == 1  # one sweep folder, four job folders
    summaries = [read_summary(run) for run in runs]
    assert all(s["status"] == "finished" for s in summaries), result.stderr[-3000:]
    assert sorted(s["world_size"] for s in summaries) == [1, 1, 2, 2]
    assert "4 jobs, 2 at a time" in result.stdout + result.stderr


# ---- configuration -------------------------------------------------------------------------------------
def trainer_cfg(**overrides):
    base = {"device": "cpu", "devices": "auto", "nnodes": 1, "node_rank": "auto", "rdzv_endpoint": "auto"}
    return OmegaConf.create(base | overrides)


def test_devices_count_processes_on_the_cpu():
    assert distributed.processes_per_node(trainer_cfg()) == 1
    assert distributed.processes_per_node(trainer_cfg(devices=3)) == 3
    assert distributed.requested_world_size(trainer_cfg(devices=2, nnodes=2)) == 4
    for bad in (0, "many"):  # refused by the pre-flight, before any process starts
        assert [p for p in problems_of(compose("trainer.device=cpu", f"trainer.devices={bad}"))
                if p.startswith("trainer.devices")]


def test_single_node_rendezvous_lets_torch_bind_a_free_port(tmp_path):
    args = distributed.torchrun_args(trainer_cfg(devices=2), tmp_path)
    assert "--standalone" in args and "--nproc-per-node=2" in args
    assert args[-3:] == ["-m", "runner.worker", str(tmp_path)]


def test_multi_node_arguments_come_from_the_config_or_slurm(tmp_path, monkeypatch):
    explicit = distributed.torchrun_args(trainer_cfg(devices=4, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400"), tmp_path)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=node0", "--master-port=29400"} <= set(explicit)
    monkeypatch.setattr(distributed, "slurm_first_host", lambda nodelist: f"first-of-{nodelist}")
    slurm = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_JOB_ID": "123456"}
    args = distributed.torchrun_args(trainer_cfg(devices=8, nnodes=2), tmp_path, environ=slurm)
    assert {"--node-rank=1", "--master-addr=first-of-gpu[3-4]", f"--master-port={15000 + 123456 % 20000}"} <= set(args)
    with pytest.raises(ConfigError, match="trainer.rdzv_endpoint"):
        distributed.torchrun_args(trainer_cfg(devices=8, nnodes=2, node_rank=0), tmp_path, environ={})
    with pytest.raises(ConfigError, match="trainer.node_rank"):
        distributed.torchrun_args(trainer_cfg(nnodes=2, node_rank=2, rdzv_endpoint="h:1"), tmp_path, environ={})


def test_second_order_optimizers_cpu_sync_bn_and_single_process_distillers_are_refused():
    """The pre-flight refuses what cannot run on several processes, before any process starts."""
    second_order = ("optimizer._target_=faulty.SecondOrderSGD", "trainer.precision=fp32")
    on = lambda devices, *overrides: list(problems_of(compose("trainer.device=cpu", f"trainer.devices={devices}",
                                                              *overrides)))  # noqa: E731
    assert on(1, *second_order, "trainer.sync_bn=true", "distill=pskd") == []  # one process: fine
    assert any("trainer.devices=1" in p for p in on(2, *second_order))
    assert any("trainer.sync_bn" in p for p in on(2, "trainer.sync_bn=true"))
    assert any(p.startswith("distill=pskd runs on one process only: it keeps per-sample") for p in on(2, "distill=pskd"))
    assert on(2) == []  # plain: fine


def test_a_config_error_in_the_workers_is_one_line(tmp_path):
    result = divrun("dataset=cifar10", f"dataset.root={tmp_path}", "trainer.devices=2", *QUICK, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"divrun: error: dataset.root={tmp_path}: no cifar-10-batches-py/ there; pass dataset.root=<folder holding "
        f"cifar-10-batches-py> or dataset.download=true"]


def worker_pids(run_dir) -> dict[int, int]:
    """{local rank: pid} of the torchrun workers training `run_dir` (Linux /proc)."""
    pids = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"runner.worker" in cmdline and str(run_dir).encode() in cmdline and b"LOCAL_RANK" in environ:
            pids[int(environ[b"LOCAL_RANK"])] = int(proc.name)
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through Linux's /proc")
def test_a_signal_that_reaches_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGUSR1 to rank 1 alone: the ranks agree at a logging boundary, rank 0 saves the checkpoint and every
    rank exits for requeue; none waits in a collective the other left."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("divrun")), f"hydra.run.dir={run_dir}", "model=mlp", "trainer.epochs=200",
         "trainer.devices=2", "trainer.batch_size=32", "trainer.checkpoint_every=null", "logger.progress=false",
         "trainer.device=cpu"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "WANDB_MODE": "disabled"})
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2 and len(worker_pids(run_dir)) == 2):
        assert process.poll() is None and time.monotonic() < deadline, "the 2-process run did not start training"
        time.sleep(0.05)
    os.kill(worker_pids(run_dir)[1], signal.SIGUSR1)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == REQUEUE_EXIT_CODE, output[-3000:]
    summary = read_summary(run_dir)
    logged = [r["step"] for r in records(run_dir) if "train/loss" in r]
    assert summary["status"] == "preempted" and summary["steps"] in logged, (summary, logged, output[-3000:])
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == summary["steps"] < saved["total_steps"]
