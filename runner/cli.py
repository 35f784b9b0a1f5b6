"""The `divrun` command: Hydra composes the config; `resume=<run folder>` continues a run without Hydra."""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError, WorkersFailed

_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"
# cached: Hydra copies a sweep's resolver cache into each job's config, so jobs run in other processes
# (the gpus launcher, SLURM, a requeued SLURM job) land in the folder the sweep named
OmegaConf.register_new_resolver("divrun_uid", lambda: _UID, replace=True, use_cache=True)


@hydra.main(version_base="1.3", config_path="pkg://runner.conf", config_name="config")
def hydra_job(cfg: DictConfig):
    from runner.job import run_job

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or "default"
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        return run_job(cfg, Path(hydra_cfg.runtime.output_dir), name=name, group=group)
    except (ConfigError, KeyboardInterrupt) as error:
        fail(error, multirun)
    except WorkersFailed as error:  # the worker printed its error; exit 2 means a one-line ConfigError
        if error.exitcode != 2:
            print(f"divrun: error: {error}", file=sys.stderr)
        if not multirun:
            sys.exit(error.exitcode)
    except Exception as error:  # noqa: BLE001 - a sweep goes on past a failing job; summary.json has the trace
        if not multirun:
            raise
        print(f"divrun: job {name} failed: {type(error).__name__}: {error} (see its summary.json)", file=sys.stderr)
    return None


def fail(error: BaseException, multirun: bool) -> None:
    message = str(error) or type(error).__name__
    print(f"divrun: error: {message}", file=sys.stderr)
    if not multirun:
        sys.exit(2 if isinstance(error, ConfigError) else 130)


def resume(run_dir: str, overrides: list[str]) -> None:
    from runner.job import load_config, run_job

    cfg = load_config(Path(run_dir))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    run_job(cfg, Path(run_dir), resolved=not overrides)


def main() -> None:
    args = sys.argv[1:]
    resume_args = [a for a in args if a.startswith("resume=")]
    if resume_args and resume_args[-1] != "resume=null":
        try:
            resume(resume_args[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
        except ConfigError as error:
            fail(error, multirun=False)
        return
    hydra_job()


if __name__ == "__main__":
    main()
