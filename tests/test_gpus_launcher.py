"""The `gpus` launcher as a Hydra plugin: Hydra's own launcher test suites (parametrized as Hydra's joblib and
submitit plugins do), discovery through Hydra's plugin scan and ConfigStore, the slots it hands out, and jobs
that run in their slot's environment. divrun's own sweeps through it: tests/test_distributed.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import _UNSPECIFIED_, VersionBase

from hydra_plugins.divrun_gpus_launcher import gpus_launcher
from hydra_plugins.divrun_gpus_launcher.gpus_launcher import GpusLauncher, slots
from runner.errors import ConfigError

LAUNCHER = ["hydra.launcher.cpu_jobs=2"]  # two slots on any machine: the suites' two-job sweeps run side by side


@pytest.fixture
def as_a_fresh_app(monkeypatch):
    """CPU slots on any machine (hidden GPUs also spare each small test app the torch import, ~1.3 s CPU), and
    Hydra's version base unset, as in a fresh process: the suites' expectations (hydra.job.chdir) assume its
    default, which an earlier compose with version_base="1.3" in this process would change (the basic launcher
    fails them the same way then)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(VersionBase.instance(), "version_base", _UNSPECIFIED_)


def test_discovery():
    assert GpusLauncher.__name__ in [plugin.__name__ for plugin in Plugins.instance().discover(Launcher)]


@pytest.mark.usefixtures("as_a_fresh_app")
@pytest.mark.parametrize("launcher_name, overrides", [("gpus", LAUNCHER)])
class TestGpusLauncher(LauncherTestSuite):
    pass


@pytest.mark.usefixtures("as_a_fresh_app")
@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [
    ({}, ["-m", "hydra/job_logging=hydra_debug", "hydra/job_logging=disabled", "hydra/launcher=gpus", *LAUNCHER])])
class TestGpusLauncherIntegration(IntegrationTestSuite):
    pass


def test_slots_are_gpu_groups_or_shares_of_the_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = lambda found: [slot["CUDA_VISIBLE_DEVICES"] for slot in found]  # noqa: E731
    assert devices(slots("auto", 1, "auto")) == ["0", "1", "2", "3"]
    assert slots("auto", 2, "auto") == [{"CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "4"},
                                        {"CUDA_VISIBLE_DEVICES": "2,3", "OMP_NUM_THREADS": "4"}]
    assert devices(slots([0, 2, 3], 1, "auto")) == ["0", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")  # the ids a job scheduler gave this process
    assert devices(slots("auto", 2, "auto")) == ["4,5"]
    with pytest.raises(ConfigError, match="lower hydra.launcher.gpus_per_job"):
        slots("auto", 4, "auto")
    # hidden GPUs: shares of the cores, and torch is not asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("torch was asked"))
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert slots("auto", 1, 3) == [{"OMP_NUM_THREADS": "2"}] * 3
        assert len(slots("auto", 1, "auto")) == 8
    with pytest.raises(ConfigError, match="hydra.launcher.cpu_jobs=0"):
        slots("auto", 1, 0)


@pytest.mark.usefixtures("as_a_fresh_app")
def test_each_job_runs_in_a_spawned_process_holding_its_slot(hydra_sweep_runner, monkeypatch, tmp_path):
    """Four jobs on three single-GPU slots: each in its own fresh process, with its slot's CUDA_VISIBLE_DEVICES
    and thread count; the fourth waits for a slot to free. The task is a closure: it travels by value."""
    monkeypatch.setattr(gpus_launcher, "visible_gpus", lambda: ["0", "1", "2"])
    parent = os.getpid()

    def task(cfg):
        return os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"], parent, cfg.a

    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                               config_path="configs", config_name="compose.yaml",
                               overrides=["hydra/launcher=gpus", "+a=0,1,2,3"], temp_dir=tmp_path)
    with sweep:
        values = [job.return_value for job in sweep.returns[0]]
    assert [value[4] for value in values] == [0, 1, 2, 3]
    pids = {value[0] for value in values}
    assert len(pids) == 4 and parent not in pids and {value[3] for value in values} == {parent}
    assert [value[1] for value in values[:3]] == ["0", "1", "2"] and values[3][1] in {"0", "1", "2"}
    cores = len(os.sched_getaffinity(0))
    assert {value[2] for value in values} == {str(max(1, cores // 3))}


class RecordingCallback(Callback):
    """Leaves a file per hook call, named with the process it ran in."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_job_end(self, config, job_return, **kwargs):
        (self.folder / f"job{config.hydra.job.num}-{os.getpid()}").touch()

    def on_multirun_end(self, config, **kwargs):
        (self.folder / f"multirun_end-{os.getpid()}").touch()


@pytest.mark.usefixtures("as_a_fresh_app")
def test_hydra_callbacks_run_in_the_jobs_and_the_sweep_end_in_the_launching_process(hydra_sweep_runner, tmp_path):
    """A callback object travels to the jobs (on_job_end there) and on_multirun_end runs once, here, after all
    jobs: what a results-collecting callback (divrun's sweep comparison) relies on."""
    calls = tmp_path / "calls"
    calls.mkdir()
    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
                               config_path="configs", config_name="compose.yaml",
                               overrides=["hydra/launcher=gpus", *LAUNCHER, "+a=0,1",
                                          f"+hydra.callbacks.record._target_={__name__}.RecordingCallback",
                                          f"+hydra.callbacks.record.folder={calls}"], temp_dir=tmp_path / "sweep")
    with sweep:
        pass
    names = sorted(path.name for path in calls.iterdir())
    assert names[-1] == f"multirun_end-{os.getpid()}"
    jobs = {name.split("-")[0]: int(name.split("-")[1]) for name in names[:-1]}
    assert sorted(jobs) == ["job0", "job1"] and os.getpid() not in jobs.values()
